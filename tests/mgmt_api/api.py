"""Talking to the management API as one caller: an httpx client that fails on any 5xx,
helpers for the answers it expects, and the registry under test with the secrets it
handed out (searched for in its log at the end)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.content import make_image
from tests.api.protocol import push_image, registry_client
from tests.support.processes import Server

ADMIN = "admin"
PASSWORD = "a-good-password"
TOKEN_REUSE_SECONDS = 200  # the server's tokens live 300 s
ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
}


class ServerError(AssertionError):
    """The API answered with a 5xx."""


def _no_server_errors(response: httpx.Response) -> None:
    if response.status_code >= 500:
        response.read()
        raise ServerError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.content[:2000]!r}"
        )


def path(p: str) -> str:
    return p if p.startswith("/") else f"/api/v1/{p}"


class Api:
    """One caller: Basic credentials, a Bearer token, or nobody."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        secret: str | None = None,
        bearer: str | None = None,
        renew: Callable[[], str] | None = None,
    ) -> None:
        """Basic credentials, unless a Bearer token is given (``name`` and ``password``
        then only say whose it is; ``renew`` gets a new one before it expires)."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self.name = username or ""
        self.password = secret or ""
        self._renew = renew
        self._issued = time.monotonic()
        basic = username is not None and secret is not None and not bearer
        self.client = httpx.Client(
            base_url=url,
            auth=(username, secret) if basic and username and secret else None,
            headers=headers,
            timeout=60,
            event_hooks={"response": [_no_server_errors]},
        )

    def request(self, method: str, p: str, **kwargs: Any) -> httpx.Response:
        if self._renew is not None and time.monotonic() - self._issued > TOKEN_REUSE_SECONDS:
            self.client.headers["Authorization"] = f"Bearer {self._renew()}"
            self._issued = time.monotonic()
        return self.client.request(method, path(p), **kwargs)

    def get(self, p: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", p, **kwargs)

    def post(self, p: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", p, **kwargs)

    def put(self, p: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", p, **kwargs)

    def patch(self, p: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", p, **kwargs)

    def delete(self, p: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", p, **kwargs)

    def ok(self, method: str, p: str, status: int = 200, **kwargs: Any) -> Any:
        """The JSON of a successful answer (None for 204), asserting its status."""
        response = self.request(method, p, **kwargs)
        assert response.status_code == status, (
            f"{method} {p}: expected {status}, got {response.status_code}: {response.text[:500]}"
        )
        if status == 204:
            assert response.content == b""
            return None
        assert response.headers["content-type"].startswith("application/json")
        return response.json()

    def close(self) -> None:
        self.client.close()


def assert_error(response: httpx.Response, status: int, message_part: str = "") -> str:
    """An error answer: the status, ``{"error": code, "message": text}``, the challenge on a
    401; returns the message."""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code == status, (
        f"{where}: expected {status}, got {response.status_code}: {response.text[:500]}"
    )
    assert b"Traceback" not in response.content
    assert response.headers.get("content-type", "").startswith("application/json"), where
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body
    if status in ERROR_CODES and body["error"] != "management_disabled":
        assert body["error"] == ERROR_CODES[status], body
    if status == 401:
        assert response.headers.get("www-authenticate") == 'Basic realm="dockyard"', where
    if message_part:
        assert message_part.lower() in body["message"].lower(), body
    return str(body["message"])


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Registry:
    """The server under test, the clients made for it, and every secret handed out."""

    def __init__(self, server: Server, admin_password: str) -> None:
        self.server = server
        self.url = server.url
        self.admin_password = admin_password
        self.secrets: set[str] = set()
        self._apis: list[Api] = []
        self._admin: Api | None = None

    def api(
        self,
        username: str | None = None,
        secret: str | None = None,
        bearer: str | None = None,
        renew: Callable[[], str] | None = None,
    ) -> Api:
        api = Api(self.url, username, secret, bearer, renew)
        self._apis.append(api)
        return api

    def admin(self, basic: bool = False) -> Api:
        """The first administrator (one caller per server, unless ``basic``)."""
        if basic:
            return self.login(ADMIN, self.admin_password, True)
        if self._admin is None:
            self._admin = self.login(ADMIN, self.admin_password)
        return self._admin

    def login(self, name: str, password: str, basic: bool = False) -> Api:
        """A caller with Basic credentials, or (faster: the server checks a password hash
        once, not after every change) with Bearer tokens obtained with them."""
        if basic:
            return self.api(name, password)

        def renew() -> str:
            return self.bearer(name, password)

        return self.api(name, password, bearer=renew(), renew=renew)

    def remember(self, secret: str) -> str:
        self.secrets.add(secret)
        return secret

    def new_user(
        self,
        admin: Api,
        name: str | None = None,
        password: str = PASSWORD,
        is_admin: bool = False,
        basic: bool = False,
    ) -> Api:
        name = name or unique("u")
        admin.ok(
            "POST",
            "users",
            201,
            json={"name": name, "password": password, "admin": is_admin},
        )
        return self.login(name, self.remember(password), basic)

    def new_org(self, owner: Api, public: bool = False) -> str:
        name = unique("o")
        owner.ok("POST", "orgs", 201, json={"name": name, "public": public})
        return name

    def new_robot(
        self,
        manager: Api,
        namespace: str,
        permissions: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "name": unique("r"),
            "permissions": permissions
            or [{"repository": f"{namespace}/*", "actions": ["pull", "push"]}],
            **extra,
        }
        robot = manager.ok("POST", f"namespaces/{namespace}/robots", 201, json=body)
        self.remember(robot["secret"])
        return dict(robot)

    def new_token(self, owner: Api, **body: Any) -> dict[str, Any]:
        token = owner.ok("POST", "user/tokens", 201, json={"name": unique("t"), **body})
        self.remember(token["secret"])
        return dict(token)

    def token(self, username: str, secret: str, *scopes: str) -> httpx.Response:
        """GET /auth/token with Basic credentials (as docker login does)."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            response = client.get(
                "/auth/token",
                params=[("service", "dockyard"), *(("scope", s) for s in scopes)],
                auth=(username, secret),
            )
        if response.status_code == 200:
            self.remember(response.json()["token"])
        return response

    def bearer(self, username: str, secret: str, *scopes: str) -> str:
        response = self.token(username, secret, *scopes)
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def push(
        self, username: str, secret: str, repository: str, basic: bool = False
    ) -> httpx.Response:
        """Push a small image (returns the manifest PUT's answer; a refused blob upload
        raises): as docker does, with a token for the repository; or with Basic credentials
        straight to /v2 (then the server checks the password on each request)."""
        if basic:
            options: dict[str, Any] = {"auth": (username, secret)}
        else:
            token = self.bearer(username, secret, f"repository:{repository}:pull,push")
            options = {"headers": {"Authorization": f"Bearer {token}"}}
        with registry_client(self.url, **options) as client:
            return push_image(client, repository, make_image(layer_count=1, layer_size=256), "v1")

    def close(self) -> None:
        for api in self._apis:
            api.close()
