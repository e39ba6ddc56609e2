"""Fixtures of the registry mirror tests: real upstreams on this machine and a Dockyard in
front of them.

- ``hub``: CNCF Distribution 2.8.2 with htpasswd (Basic) authentication, configured as the
  built-in Docker Hub upstream ``hub`` (its URL and credentials overridden), also served
  for plain names (daemon mirror mode);
- ``dock``: a second Dockyard with token authentication (the flow Docker Hub uses) and a
  user the mirror logs in as; its repositories are private;
- ``fake``: a small real HTTP registry in the test process that misbehaves on demand.

The shared ``mirror`` is an open Dockyard (two worker processes) with the three upstreams.
Tests that stop an upstream or need other settings start their own.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from tests.mirror.fake_upstream import FakeUpstream
from tests.support.oci_client import OciClient
from tests.support.processes import Server, start_distribution, start_dockyard, wait_until

HUB_USER, HUB_PASSWORD = "puller", "hub-secret-" + uuid.uuid4().hex[:8]
DOCK_USER, DOCK_PASSWORD = "mirror", "dock-secret-" + uuid.uuid4().hex[:8]


@dataclass
class Upstream:
    server: Server
    username: str
    password: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> OciClient:
        client = OciClient(self.url)
        client.http = httpx.Client(
            base_url=self.url, timeout=30, auth=(self.username, self.password)
        )
        return client


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


def start_hub(root: Path) -> Upstream:
    htpasswd = write_htpasswd(root.parent / f"{root.name}.htpasswd", HUB_USER, HUB_PASSWORD)
    return Upstream(start_distribution(root, htpasswd=htpasswd), HUB_USER, HUB_PASSWORD)


def start_mirror(data_dir: Path, upstreams: dict[str, Any], *extra: str, **env: str) -> Server:
    variables = {"DOCKYARD_UPSTREAMS": json.dumps(upstreams), "DOCKYARD_WORKERS": "2"}
    variables.update({f"DOCKYARD_{k.upper()}": v for k, v in env.items()})
    return start_dockyard(data_dir, *extra, env=variables)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    upstream = start_hub(tmp_path_factory.mktemp("hub") / "data")
    try:
        yield upstream
    finally:
        upstream.server.stop()


_ADMIN_PASSWORD = re.compile(r"^\s*password:\s*(\S+)\s*$", re.MULTILINE)


@pytest.fixture(scope="session")
def dock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    server = start_dockyard(tmp_path_factory.mktemp("dock") / "data", auth=True)
    try:
        match = _ADMIN_PASSWORD.search(server.log())
        assert match, server.log()
        created = httpx.post(
            f"{server.url}/api/v1/users",
            json={"name": DOCK_USER, "password": DOCK_PASSWORD},
            auth=("admin", match.group(1)),
        )
        assert created.status_code == 201, created.text
        yield Upstream(server, DOCK_USER, DOCK_PASSWORD)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def limited() -> Iterator[FakeUpstream]:
    """A second fake upstream, for the tests that make it answer 429."""
    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


def upstream_table(
    hub: Upstream, dock: Upstream, fake: FakeUpstream, limited: FakeUpstream
) -> dict[str, Any]:
    return {
        "hub": {
            "url": hub.url,
            "username": hub.username,
            "password": hub.password,
            "public": True,
            "tag_ttl_seconds": 2,
        },
        "dock": {
            "url": dock.url,
            "username": dock.username,
            "password": dock.password,
            "public": True,
        },
        "fake": {"url": fake.url, "tag_ttl_seconds": 0},
        "limited": {"url": limited.url, "tag_ttl_seconds": 0},
    }


@pytest.fixture(scope="session")
def mirror(
    tmp_path_factory: pytest.TempPathFactory,
    hub: Upstream,
    dock: Upstream,
    fake: FakeUpstream,
    limited: FakeUpstream,
) -> Iterator[Server]:
    server = start_mirror(
        tmp_path_factory.mktemp("mirror") / "data",
        upstream_table(hub, dock, fake, limited),
        mirror_upstream="hub",
    )
    try:
        yield server
    finally:
        server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def stored_blob(data_dir: Path, digest: str) -> bool:
    """Whether the mirror's blob store holds the blob's bytes."""
    algorithm, hex_part = digest.split(":", 1)
    return (data_dir / "blobs" / algorithm / hex_part[:2] / hex_part).exists()


def uploads_left(data_dir: Path) -> list[str]:
    directory = data_dir / "uploads"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def upstream_gets(upstream: Server, repository: str) -> list[str]:
    """The GETs a Distribution upstream answered (200) for ``repository``, from its access
    log: ``["/v2/<repository>/manifests/<reference>", ...]`` (challenges not counted)."""
    pattern = re.compile(
        rf'"GET (/v2/{re.escape(repository)}/(?:manifests|blobs)/[^ ?"]+)[^"]*" 200 '
    )
    return pattern.findall(upstream.log())


def mirror_counts(server: Server, upstream: str) -> dict[str, float]:
    """The ``dockyard_mirror_*`` counters of one upstream, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    pattern = re.compile(rf'^dockyard_mirror_(\w+)_total\{{upstream="{upstream}"\}} (\S+)$', re.M)
    for name, value in pattern.findall(text):
        found[name] = float(value)
    return found


def wait_for_counts(
    server: Server, upstream: str, counter: str, at_least: float
) -> dict[str, float]:
    """The counters once ``counter`` reached ``at_least`` (worker processes share their
    counts once a second)."""
    seen: dict[str, float] = {}

    def reached() -> bool:
        seen.update(mirror_counts(server, upstream))
        return seen.get(counter, 0) >= at_least

    wait_until(reached, 15, f"{counter} >= {at_least} for {upstream}")
    return dict(seen)
