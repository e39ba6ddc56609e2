"""A Dockyard started with ``--auth``, as the tests see it: where clients reach it, the first
administrator's password (read from the one message that shows it), the identity
management commands, every secret handed out (to look for in its logs later), and the
token endpoint over httpx."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt

from tests.auth_e2e.accounts import Accounts, Login
from tests.support.oci_client import OciClient
from tests.support.processes import Server

SERVICE = "dockyard"
_addresses = itertools.count()


def next_loopback_address() -> str:
    """Another source address on the loopback network (127.0.0.0/8 is all local on Linux),
    for the next test of this process. The registry brakes logins per client address: each
    test failing logins on purpose must not slow down the next one."""
    n = next(_addresses)
    return f"127.0.{n // 250 + 1}.{n % 250 + 2}"


_ADMIN_PASSWORD = re.compile(r"^\s*password:\s*(\S+)\s*$", re.MULTILINE)


def show(response: httpx.Response) -> str:
    return (
        f"{response.request.method} {response.request.url} -> {response.status_code} "
        f"{dict(response.headers)} {response.text[:1000]}"
    )


@dataclass(frozen=True)
class Grant:
    """An answer of the token endpoint, with the JWT's header and claims decoded (without
    checking the signature: the registry does that)."""

    token: str
    header: dict[str, Any]
    claims: dict[str, Any]
    body: dict[str, Any]

    @property
    def refresh_token(self) -> str | None:
        value = self.body.get("refresh_token")
        return str(value) if value is not None else None

    @property
    def access(self) -> dict[str, set[str]]:
        """``{"repository:alice/app": {"pull"}}`` for each resource in the token."""
        return {
            f"{entry['type']}:{entry['name']}": set(entry["actions"])
            for entry in self.claims.get("access", [])
        }

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer k="v",...`` challenge (with
    ``scheme``); asserts there is one."""
    value = response.headers.get("www-authenticate")
    assert value, f"401 without a challenge: {show(response)}"
    scheme, _, rest = value.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    params["scheme"] = scheme
    return params


@dataclass
class AuthRegistry:
    server: Server
    url: str  # how clients reach it: http://127.0.0.1:P, or https://<address>:P for TLS
    admin: Login
    ca: str | None  # the CA certificate file that signed the TLS registry's certificate
    secrets: set[str] = field(default_factory=set)
    sessions: dict[str, str] = field(default_factory=dict)  # login -> refresh token
    source: str | None = None  # the client address of the httpx requests, if not the default
    accounts: Accounts = field(init=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.server.data_dir, self.remember)

    @classmethod
    def started(cls, server: Server, url: str | None = None, ca: str | None = None) -> Any:
        match = _ADMIN_PASSWORD.search(server.log())
        assert match, f"no generated admin password in the log of the first start:\n{server.log()}"
        return cls(server, url or server.url, Login("admin", match.group(1)), ca)

    @property
    def plain(self) -> bool:
        return self.url.startswith("http://")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for this registry."""
        return ssl.create_default_context(cafile=self.ca) if self.ca else False

    @property
    def host(self) -> str:
        """``HOST:PORT`` as image references name the registry."""
        return urlsplit(self.url).netloc

    @property
    def realm(self) -> str:
        return f"{self.url}/auth/token"

    def seen_from(self, source: str | None) -> AuthRegistry:
        """The same registry (accounts, remembered secrets), with httpx requests coming from
        ``source``."""
        return dataclasses.replace(self, source=source)

    def new_http(self, **headers: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=self.source, verify=self.verify)
        return httpx.Client(base_url=self.url, timeout=60, transport=transport, headers=headers)

    @property
    def http(self) -> httpx.Client:
        """A client without credentials (add headers per request)."""
        if self._http is None:
            self._http = self.new_http()
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def remember(self, secret: str) -> None:
        """A secret that must never show up in the server's logs."""
        self.secrets.add(secret)

    # the token endpoint

    def token_response(
        self, login: Login | None, *scopes: str, offline: bool = False, **params: str
    ) -> httpx.Response:
        query: list[tuple[str, str | int | float | bool | None]] = [("service", SERVICE)]
        query += [("scope", scope) for scope in scopes]
        if offline:
            query.append(("offline_token", "true"))
        query += list(params.items())
        return self.http.get(
            "/auth/token", params=query, headers=login.basic if login is not None else {}
        )

    def token(self, login: Login | None, *scopes: str, offline: bool = False) -> Grant:
        """A token from ``GET /auth/token`` (anonymous when ``login`` is None)."""
        response = self.token_response(login, *scopes, offline=offline)
        assert response.status_code == 200, show(response)
        return self.grant_of(response)

    def session(self, login: Login, *scopes: str) -> Grant:
        """A token the way docker gets one after ``docker login``: a refresh token fetched
        once per login, then traded for each set of scopes with the OAuth2 POST (which
        spares the server a password hash per token)."""
        key = f"{login.username}\0{login.secret}"
        if key not in self.sessions:
            refresh_token = self.token(login, offline=True).refresh_token
            assert refresh_token is not None
            self.sessions[key] = refresh_token
        response = self.oauth(
            {
                "grant_type": "refresh_token",
                "refresh_token": self.sessions[key],
                "client_id": "auth-e2e",
                "scope": " ".join(scopes),
            }
        )
        assert response.status_code == 200, show(response)
        return self.grant_of(response)

    def oauth(self, form: dict[str, str]) -> httpx.Response:
        """``POST /auth/token`` with a form (the OAuth2 flavour)."""
        return self.http.post("/auth/token", data={"service": SERVICE, **form})

    def grant_of(self, response: httpx.Response) -> Grant:
        body = response.json()
        token = body.get("token") or body["access_token"]
        self.remember(token)
        if body.get("refresh_token"):
            self.remember(body["refresh_token"])
        header, claims = decode(token)
        return Grant(token, header, claims, body)

    # /v2 with credentials

    @contextmanager
    def client(self, authorization: dict[str, str] | None = None) -> Iterator[OciClient]:
        """The tests' small OCI client, sending ``authorization`` on every request."""
        client = OciClient(self.url)
        client.http.close()
        client.http = self.new_http(**(authorization or {}))
        try:
            yield client
        finally:
            client.close()

    def pusher(self, login: Login, *repositories: str) -> Any:
        """An OCI client holding a token for pull and push on ``repositories``."""
        grant = self.session(login, *(f"repository:{r}:pull,push" for r in repositories))
        for repository in repositories:
            assert grant.access.get(f"repository:{repository}") == {"pull", "push"}, grant.claims
        return self.client(grant.bearer)

    # the server's log

    def log_mark(self) -> int:
        """Where the log ends now (for ``access_log(since=...)``)."""
        return self.server.log_path.stat().st_size

    def access_log(self, since: int = 0) -> list[dict[str, Any]]:
        """The JSON access-log lines written after ``since``."""
        with self.server.log_path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        entries = []
        for line in text.splitlines():
            if line.startswith("{") and '"route"' in line:
                entries.append(json.loads(line))
        return entries

    def leaked(self, secrets: Iterable[str] | None = None) -> list[str]:
        """The secrets (default: all remembered) that appear in the server's log, shown by
        their first characters."""
        log = self.server.log()
        return [s[:12] + "..." for s in (self.secrets if secrets is None else secrets) if s in log]


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))
