"""Personal access tokens: a user signed in with a password makes them (a token cannot make
tokens), sees them without their secrets, and revokes them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.mgmt_api.api import Api, Registry, assert_error


def test_create_list_use_and_revoke(registry: Registry, user: Api) -> None:
    response = user.post("user/tokens", json={"name": "laptop"})
    assert response.status_code == 201
    token = response.json()
    registry.remember(token["secret"])
    assert response.headers["location"] == f"/api/v1/user/tokens/{token['id']}"
    assert token["secret"].startswith(f"dyt_{token['id']}_")
    assert token["username"] == user.name and token["name"] == "laptop"
    assert token["kind"] == "token" and token["namespace"] is None
    assert token["permissions"] == [{"repository": "*", "actions": ["delete", "pull", "push"]}]

    listed = user.ok("GET", "user/tokens")
    assert [t["id"] for t in listed] == [token["id"]]
    assert token["secret"] not in str(listed)

    # docker login -u USER -p TOKEN, and the API with the same credentials
    assert registry.token(user.name, token["secret"]).status_code == 200
    assert registry.api(user.name, token["secret"]).ok("GET", "user")["kind"] == "token"
    assert (
        registry.push(user.name, token["secret"], f"{user.name}/by-token", basic=True).status_code
        == 201
    )

    user.ok("DELETE", f"user/tokens/{token['id']}", 204)
    assert user.ok("GET", "user/tokens")[0]["revoked"] is True
    assert_error(user.delete(f"user/tokens/{token['id']}"), 404, "no active access token")


def test_a_narrowed_token(registry: Registry, user: Api) -> None:
    permissions = [{"repository": f"{user.name}/app", "actions": ["pull"]}]
    token = registry.new_token(user, permissions=permissions, expires_in_days=1.5)
    assert token["permissions"] == permissions and token["expires_at"] is not None
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        response = client.post(
            f"/v2/{user.name}/app/blobs/uploads/", auth=(user.name, token["secret"])
        )
    assert response.status_code == 403


def test_a_token_cannot_make_tokens(registry: Registry, user: Api) -> None:
    token = registry.new_token(user)
    as_token = registry.api(user.name, token["secret"])
    assert_error(
        as_token.post("user/tokens", json={"name": "more"}), 403, "a token cannot create tokens"
    )
    # nor with a Bearer token obtained with it
    bearer = registry.api(bearer=registry.bearer(user.name, token["secret"]))
    assert_error(bearer.post("user/tokens", json={"name": "more"}), 403, "token")
    assert_error(as_token.delete(f"user/tokens/{token['id']}"), 403)
    # a Bearer token obtained with the password may
    by_password = registry.api(bearer=registry.bearer(user.name, user.password))
    registry.remember(by_password.ok("POST", "user/tokens", 201, json={"name": "ok"})["secret"])
    assert len(as_token.ok("GET", "user/tokens")) == 2  # reading is fine


def test_robots_have_no_tokens(registry: Registry, user: Api) -> None:
    robot = registry.new_robot(user, user.name)
    as_robot = registry.api(robot["username"], robot["secret"])
    assert_error(as_robot.get("user/tokens"), 403, "only users")
    assert_error(as_robot.post("user/tokens", json={"name": "x"}), 403, "robot")


def test_nobody_else_revokes_or_sees_a_token(
    registry: Registry, admin: Api, user: Api, other: Api
) -> None:
    token = registry.new_token(user)
    assert_error(other.delete(f"user/tokens/{token['id']}"), 404)
    assert_error(admin.delete(f"user/tokens/{token['id']}"), 404)
    assert token["id"] not in str(other.ok("GET", "user/tokens"))
    assert_error(user.delete("user/tokens/not-a-token"), 404)
    assert_error(user.delete("user/tokens/" + "f" * 200), 404)
    robot = registry.new_robot(user, user.name)
    assert_error(user.delete(f"user/tokens/{robot['id']}"), 404)  # a robot is no token
    assert user.ok("GET", "user/tokens")[0]["revoked"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": ""}, "invalid token name"),
        ({"name": "a:b"}, "invalid token name"),
        ({"name": " lead"}, "invalid token name"),
        ({"name": "x" * 41}, "invalid token name"),
        ({"name": "new\nline"}, "invalid token name"),
        ({"name": None}, "'name' must be a string"),
        ({"name": "ok", "permissions": []}, "non-empty list"),
        ({"name": "ok", "permissions": [{"repository": "A/*", "actions": ["pull"]}]}, "glob"),
        ({"name": "ok", "permissions": [{"repository": "a/*", "actions": ["own"]}]}, "actions"),
        ({"name": "ok", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "ok", "expires_in_days": 4000}, "expires_in_days"),
        ({"name": "ok", "expires_in_days": "soon"}, "must be a number"),
        ({"name": "ok", "owner": "admin"}, "unknown field 'owner'"),
        ({}, "missing field 'name'"),
    ],
)
def test_bad_token_bodies(shared_user: Api, body: dict[str, Any], message: str) -> None:
    user = shared_user
    assert_error(user.post("user/tokens", json=body), 400, message)
    assert user.ok("GET", "user/tokens") == []


def test_good_token_names(registry: Registry, user: Api) -> None:
    for name in ("CI on main", "laptop@home", "a", "x" * 40, "build/deploy+1"):
        assert registry.new_token(user, name=name)["name"] == name
    assert len(user.ok("GET", "user/tokens")) == 5


def test_a_revoked_token_fails(own_registry: Registry) -> None:
    """(A server of its own: each refused login counts towards the login brake.)"""
    user = own_registry.new_user(own_registry.admin())
    token = own_registry.new_token(user)
    as_token = own_registry.api(user.name, token["secret"])
    as_token.ok("GET", "user")
    bearer = own_registry.api(bearer=own_registry.bearer(user.name, token["secret"]))
    bearer.ok("GET", "user")
    user.ok("DELETE", f"user/tokens/{token['id']}", 204)
    assert_error(as_token.get("user"), 401)
    assert_error(bearer.get("user"), 401, "names no current local user")
    assert own_registry.token(user.name, token["secret"]).status_code == 401
