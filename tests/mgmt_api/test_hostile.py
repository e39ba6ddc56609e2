"""Hostile input: bodies that are not JSON objects, too large, too deep; odd numbers;
malformed and forged credentials; odd paths. Every answer is a clear 4xx, never a 500."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.mgmt_api.api import Api, Registry, assert_error


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe{}",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"1",
        b"",
        b"   ",
        b'{"name": "x", }',
        b'{"name": "\\ud800x", "password": "abcdefghij"}',
    ],
)
def test_bodies_that_are_no_json_object(admin: Api, body: bytes) -> None:
    response = admin.post("users", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400)


def test_lone_surrogates_are_no_text(admin: Api, user: Api) -> None:
    response = admin.post("users", content=b'{"name": "ab\\ud800", "password": "abcdefghij"}')
    assert_error(response, 400)
    response = admin.post("users", content=b'{"name": "surrogate", "password": "abcdefg\\udc80h"}')
    assert_error(response, 400, "'password' must be a string")
    path = f"users/{user.name}"
    response = user.patch(path, content=b'{"password": "\\ud83dabcdefghij"}')
    assert_error(response, 400)


def test_too_large_bodies(admin: Api) -> None:
    body = json.dumps({"name": "big", "password": "x" * (70 * 1024)})
    assert_error(admin.post("users", content=body), 413, "64 KiB")
    chunks = (b"x" * 65536 for _ in range(64))  # 4 MiB, streamed without a length
    assert_error(admin.post("users", content=chunks), 413)


def test_deeply_nested_bodies(admin: Api, user: Api) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    assert_error(admin.post("users", content=deep[:60_000]), 400)
    nested = b'{"name": "ci", "permissions": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert_error(user.post(f"namespaces/{user.name}/robots", content=nested), 400)


@pytest.mark.parametrize(
    "days", ["1e999", "-1e999", "1" + "0" * 400, "-0", "0e5", "1e-400", "3650.0000001"]
)
def test_odd_numbers(shared_user: Api, days: str) -> None:
    user = shared_user
    grants = json.dumps([{"repository": f"{user.name}/*", "actions": ["pull"]}])
    body = f'{{"name": "ci", "permissions": {grants}, "expires_in_days": {days}}}'
    response = user.post(f"namespaces/{user.name}/robots", content=body)
    assert_error(response, 400)


def test_huge_strings_are_cut_in_messages(admin: Api) -> None:
    name = "N" * 20_000
    message = assert_error(admin.post("users", json={"name": name, "password": "x" * 10}), 400)
    assert len(message) < 500


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Bearer",
        "Basic",
        "Bearer not.a.jwt",
        "Bearer " + "a" * 5000,
        # alg none, no signature
        "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiJ9.",
        "Digest username=admin",
        "Negotiate abc",
    ],
)
def test_malformed_and_forged_credentials(registry: Registry, header: str) -> None:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        response = client.get("/api/v1/users", headers={"Authorization": header})
    assert_error(response, 401)


def test_an_anonymous_token_is_no_caller(registry: Registry) -> None:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        token = client.get("/auth/token", params={"service": "dockyard"}).json()["token"]
        response = client.get("/api/v1/user", headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401)


@pytest.mark.parametrize(
    "path",
    [
        "users/%00",
        "users/a%2F..%2F..%2Fetc",
        "users/" + "x" * 5000,
        "orgs/%ff/members",
        "namespaces/../robots",
        "user/tokens/%20",
        "repositories/" + "a/" * 200 + "b",
    ],
)
def test_odd_paths(admin: Api, path: str) -> None:
    response = admin.get(path)
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


def test_wrong_passwords_then_the_brake(own_registry: Registry) -> None:
    """(A server of its own: the brake holds back every later login from 127.0.0.1.)"""
    message = assert_error(own_registry.api("admin", "wrong-password").get("user"), 401)
    assert message == "invalid username or password"
    assert_error(own_registry.api("nobody", "wrong-password").get("user"), 401)
    for _ in range(4):
        own_registry.api("nobody", "wrong-password").get("user")
    response = own_registry.api("nobody", "wrong-password").get("user")
    assert_error(response, 429, "too many failed logins")
    assert int(response.headers["retry-after"]) >= 1
