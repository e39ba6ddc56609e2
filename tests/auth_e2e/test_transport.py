"""Refusals must reach the client. A request carrying a body (an upload chunk, a
monolithic blob PUT, a manifest) that is refused before its body was read — no
credentials, an expired token, no permission — must still get its 401 or 403 answer, over
TLS as over plain HTTP. A connection reset instead leaves the client with a transport
error it cannot act on: it never sees the challenge that would let it get a new token
(docker's token expiring in the middle of a long push, oras-py's Basic backend, which
sends every request without credentials first)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import requests

from tests.auth_e2e.registry import AuthRegistry, show

BODY = os.urandom(4 * 1024 * 1024)
ATTEMPTS = 5


def refusals(registry: AuthRegistry, path: str, method: str, headers: dict[str, str]) -> list[str]:
    """What each attempt got: the status, or the transport error instead of an answer.

    With requests (urllib3), as oras-py, docker-py and python-dxf send them: it writes the
    whole body before it reads the answer. (httpx reads an answer that arrives while it is
    still writing, which hides a reset that came after the answer.)"""
    outcomes = []
    for _ in range(ATTEMPTS):
        try:
            response = requests.request(
                method,
                f"{registry.url}{path}",
                data=BODY,
                headers={"Content-Type": "application/octet-stream", **headers},
                verify=registry.ca or True,
                timeout=60,
            )
            outcomes.append(str(response.status_code))
        except requests.RequestException as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}"[:160])
    return outcomes


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_unauthenticated_upload_gets_its_401_over_tls(
    tls: AuthRegistry, unique: Callable[[str], str], method: str
) -> None:
    user = tls.accounts.user(unique("tr"))
    repository = f"{user.username}/app"
    grant = tls.token(user, f"repository:{repository}:pull,push")
    start = tls.http.post(f"/v2/{repository}/blobs/uploads/", headers=grant.bearer)
    assert start.status_code == 202, show(start)
    location = start.headers["Location"]
    separator = "&" if "?" in location else "?"
    path = location if method == "PATCH" else f"{location}{separator}digest=sha256:{'0' * 64}"
    assert refusals(tls, path, method, {}) == ["401"] * ATTEMPTS


def test_denied_manifest_push_gets_its_403_over_tls(
    tls: AuthRegistry, unique: Callable[[str], str]
) -> None:
    owner = tls.accounts.user(unique("own"))
    other = tls.accounts.user(unique("oth"))
    grant = tls.token(other, f"repository:{owner.username}/app:pull,push")
    assert grant.access == {}
    outcomes = refusals(tls, f"/v2/{owner.username}/app/manifests/v1", "PUT", grant.bearer)
    assert outcomes == ["403"] * ATTEMPTS


def test_unauthenticated_upload_gets_its_401_over_plain_http(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    """The control: the same refusal over plain HTTP."""
    outcomes = refusals(plain, f"/v2/{unique('nobody')}/app/blobs/uploads/", "POST", {})
    assert outcomes == ["401"] * ATTEMPTS
