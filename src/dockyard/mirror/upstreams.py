"""Upstream registries: their configuration, and which requests each one answers.

Three ways lead to an upstream, and all of them to one cached repository,
``<prefix>/<repository at the upstream>``:

1. a proxy namespace: ``/v2/hub/library/nginx/...``;
2. Docker daemon mirror mode (``mirror_upstream``): ``/v2/library/nginx/...`` when no local
   repository has that name;
3. containerd's ``?ns=docker.io`` on any request: the upstream whose host that is.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from dockyard.oci.errors import NameInvalid
from dockyard.oci.names import validate_name

HUB = "hub"
HUB_URL = "https://registry-1.docker.io"
HUB_HOSTS = ("docker.io", "registry-1.docker.io", "index.docker.io")


class UpstreamSettings(BaseModel):
    """One entry of ``upstreams:`` (docs/mirror.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="base URL of the upstream registry (https://ghcr.io); hub: built in"
    )
    username: str | None = Field(None, description="credentials for the upstream, if any")
    password: str | None = None
    ca_file: Path | None = Field(None, description="PEM CA certificates to trust for its TLS")
    insecure_skip_verify: bool = Field(False, description="do not verify its TLS certificate")
    prefix: str | None = Field(None, description="the local namespace; default: the name")
    public: bool | None = Field(
        None,
        description="anyone may pull the cached content; default: true without credentials, "
        "false with",
    )
    tag_ttl_seconds: int = Field(
        300, ge=0, description="serve a cached tag this long before asking the upstream again"
    )
    hosts: list[str] = Field(
        default_factory=list, description="more host names that ?ns= may use for it"
    )


@dataclass(frozen=True)
class Upstream:
    """An upstream as the mirror uses it."""

    name: str
    url: str  # without a trailing slash
    prefix: str
    public: bool
    tag_ttl_seconds: int
    hosts: tuple[str, ...]
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    insecure_skip_verify: bool = False

    @property
    def is_hub(self) -> bool:
        return self.name == HUB

    def remote_name(self, name: str) -> str:
        """The repository name at the upstream: Docker Hub's single names are ``library/``."""
        if self.is_hub and "/" not in name:
            return f"library/{name}"
        return name

    def describe(self) -> dict[str, object]:
        """The configuration without secrets (for the API)."""
        return {
            "name": self.name,
            "url": self.url,
            "prefix": self.prefix,
            "public": self.public,
            "tag_ttl_seconds": self.tag_ttl_seconds,
            "hosts": list(self.hosts),
            "username": self.username,
            "password_set": self.password is not None,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "insecure_skip_verify": self.insecure_skip_verify,
        }


@dataclass(frozen=True)
class ProxyTarget:
    """A request for a proxied repository: which upstream, its name there and here."""

    upstream: Upstream
    remote: str  # library/nginx
    local: str  # hub/library/nginx


def _host_of(url: str) -> str:
    return (urlsplit(url).netloc or "").lower()


def build_upstreams(
    configured: dict[str, UpstreamSettings], mirror_upstream: str | None
) -> list[Upstream]:
    """The upstream table, checked; raises ``ValueError`` saying what is wrong.

    Docker Hub (``hub``) is known without a URL; it is on when ``upstreams`` names it or
    ``mirror_upstream`` is ``hub``.
    """
    entries = dict(configured)
    if mirror_upstream == HUB and HUB not in entries:
        entries[HUB] = UpstreamSettings()
    upstreams: list[Upstream] = []
    for name, entry in sorted(entries.items()):
        url = entry.url or (HUB_URL if name == HUB else None)
        if url is None:
            raise ValueError(f"upstreams.{name}: url is required")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"upstreams.{name}: url must be http(s)://host[:port], got {url!r}")
        prefix = (entry.prefix if entry.prefix is not None else name).strip("/")
        try:
            validate_name(prefix)
        except NameInvalid:
            raise ValueError(
                f"upstreams.{name}: prefix {prefix!r} is not a valid repository namespace "
                "(lowercase letters, digits, separators)"
            ) from None
        if entry.password is not None and entry.username is None:
            raise ValueError(f"upstreams.{name}: password without username")
        if entry.ca_file is not None and not entry.ca_file.is_file():
            raise ValueError(f"upstreams.{name}: ca_file {entry.ca_file} does not exist")
        hosts = [_host_of(url), *(h.lower() for h in entry.hosts)]
        if name == HUB:
            hosts += HUB_HOSTS
        public = entry.public if entry.public is not None else entry.username is None
        upstreams.append(
            Upstream(
                name=name,
                url=url.rstrip("/"),
                prefix=prefix,
                public=public,
                tag_ttl_seconds=entry.tag_ttl_seconds,
                hosts=tuple(dict.fromkeys(hosts)),
                username=entry.username,
                password=entry.password,
                ca_file=entry.ca_file.expanduser().absolute() if entry.ca_file else None,
                insecure_skip_verify=entry.insecure_skip_verify,
            )
        )
    prefixes = sorted(u.prefix for u in upstreams)
    for first, second in itertools.pairwise(prefixes):
        if second == first or second.startswith(first + "/"):
            raise ValueError(f"upstreams: prefix {first!r} overlaps {second!r}")
    if mirror_upstream is not None and mirror_upstream not in {u.name for u in upstreams}:
        raise ValueError(f"mirror_upstream {mirror_upstream!r} is not one of the upstreams")
    return upstreams


class Upstreams:
    """The configured upstreams and the routing of repository names to them."""

    def __init__(self, upstreams: list[Upstream], mirror_upstream: str | None = None) -> None:
        self.all = upstreams
        self.by_name = {u.name: u for u in upstreams}
        self.mirror = self.by_name.get(mirror_upstream) if mirror_upstream else None
        self._hosts = {host: u for u in upstreams for host in u.hosts}

    def __bool__(self) -> bool:
        return bool(self.all)

    def _target(self, upstream: Upstream, name: str) -> ProxyTarget | None:
        remote = upstream.remote_name(name)
        local = f"{upstream.prefix}/{remote}"
        try:
            validate_name(local)
        except NameInvalid:
            return None
        return ProxyTarget(upstream, remote, local)

    def namespace_of(self, name: str) -> Upstream | None:
        """The upstream whose proxy namespace ``name`` is in."""
        for upstream in self.all:
            if name.startswith(upstream.prefix + "/"):
                return upstream
        return None

    def by_prefix(self, name: str) -> ProxyTarget | None:
        upstream = self.namespace_of(name)
        if upstream is None:
            return None
        return self._target(upstream, name[len(upstream.prefix) + 1 :])

    def by_host(self, host: str, name: str) -> ProxyTarget | None:
        """containerd's ``?ns=<host>``: None when no upstream has that host (the request is
        then for a local repository, as if ``ns`` were absent)."""
        upstream = self._hosts.get(host.lower())
        if upstream is None:
            return None
        if name.startswith(upstream.prefix + "/"):
            return self.by_prefix(name)
        return self._target(upstream, name)

    def for_mirror(self, name: str) -> ProxyTarget | None:
        """Daemon mirror mode: the ``mirror_upstream`` target for a plain name (the caller
        checks that no local repository has that name)."""
        if self.mirror is None or self.namespace_of(name) is not None:
            return None
        return self._target(self.mirror, name)
