"""Users: site administrators manage them; a user reads themselves and changes their own
password; the last administrator is kept."""

from __future__ import annotations

import pytest

from tests.mgmt_api.api import ADMIN, PASSWORD, Api, Registry, assert_error, unique


def test_admin_manages_a_user(registry: Registry, admin: Api) -> None:
    name = unique("u")
    response = admin.post("users", json={"name": name, "password": PASSWORD})
    assert response.status_code == 201
    assert response.headers["location"] == f"/api/v1/users/{name}"
    created = response.json()
    assert created == {
        "name": name,
        "admin": False,
        "disabled": False,
        "created_at": created["created_at"],
        "organizations": [],
    }
    assert admin.ok("GET", f"users/{name}") == created
    assert name in [u["name"] for u in admin.ok("GET", "users")]
    assert all("password" not in str(u).lower() for u in admin.ok("GET", "users"))

    assert admin.ok("PATCH", f"users/{name}", json={"admin": True})["admin"] is True
    changed = admin.ok("PATCH", f"users/{name}", json={"admin": False, "disabled": True})
    assert (changed["admin"], changed["disabled"]) == (False, True)
    admin.ok("DELETE", f"users/{name}", 204)
    assert_error(admin.get(f"users/{name}"), 404, f"no user '{name}'")
    assert_error(admin.delete(f"users/{name}"), 404)
    assert_error(admin.patch(f"users/{name}", json={"admin": True}), 404)


def test_who_am_i(registry: Registry, admin: Api, user: Api) -> None:
    me = user.ok("GET", "user")  # (a Bearer token from /auth/token)
    assert (me["name"], me["kind"], me["admin"]) == (user.name, "user", False)
    assert admin.ok("GET", "user")["admin"] is True

    basic = registry.api(user.name, user.password)
    assert basic.ok("GET", "user") == me

    token = registry.new_token(user, permissions=[{"repository": "x/*", "actions": ["pull"]}])
    as_token = registry.api(user.name, token["secret"]).ok("GET", "user")
    assert as_token["kind"] == "token" and as_token["name"] == user.name
    assert as_token["credential_id"] == token["id"]
    assert as_token["permissions"] == [{"repository": "x/*", "actions": ["pull"]}]

    robot = registry.new_robot(user, user.name)
    as_robot = registry.api(robot["username"], robot["secret"]).ok("GET", "user")
    assert as_robot["kind"] == "robot" and as_robot["namespace"] == user.name
    assert as_robot["name"] == f"robot${user.name}+{robot['name'].split('+')[1]}"


def test_an_ordinary_user_manages_nobody(user: Api, other: Api) -> None:
    assert_error(user.get("users"), 403, "only site administrators")
    assert_error(user.post("users", json={"name": unique(), "password": PASSWORD}), 403)
    assert_error(user.get(f"users/{other.name}"), 403)
    assert_error(user.get("users/nobody-at-all"), 403)  # no telling who exists
    assert_error(user.patch(f"users/{other.name}", json={"password": "x" * 12}), 403)
    assert_error(user.delete(f"users/{other.name}"), 403)
    assert_error(user.patch(f"users/{user.name}", json={"admin": True}), 403, "'admin'")
    assert_error(user.patch(f"users/{user.name}", json={"disabled": False}), 403)
    assert user.ok("GET", f"users/{user.name}")["name"] == user.name


def test_a_user_changes_their_own_password(registry: Registry, user: Api) -> None:
    new = registry.remember("another-good-password")
    user.ok("PATCH", f"users/{user.name}", json={"password": new})
    assert registry.api(user.name, new).ok("GET", "user")["name"] == user.name


def test_tokens_and_robots_change_nothing(registry: Registry, user: Api) -> None:
    token = registry.new_token(user)
    as_token = registry.api(user.name, token["secret"])
    assert_error(as_token.patch(f"users/{user.name}", json={"password": "x" * 10}), 403, "token")
    robot = registry.new_robot(user, user.name)
    as_robot = registry.api(robot["username"], robot["secret"])
    assert_error(as_robot.get("users"), 403, "robot")
    assert_error(as_robot.get(f"users/{user.name}"), 403)


def test_an_admins_access_token_is_no_administrator(registry: Registry, admin: Api) -> None:
    token = registry.new_token(admin, permissions=[{"repository": "x/y", "actions": ["pull"]}])
    as_token = registry.api(ADMIN, token["secret"])
    assert_error(as_token.get("users"), 403, "personal access token")
    assert_error(as_token.post("users", json={"name": unique(), "password": PASSWORD}), 403)


@pytest.mark.parametrize(
    "name",
    ["A", "a", "Ab", "-ab", "ab-", "a..b", "a b", "ab/cd", "x" * 65, "ädmin", "", "a\nb", "ab\n"],
)
def test_invalid_user_names(admin: Api, name: str) -> None:
    response = admin.post("users", json={"name": name, "password": PASSWORD})
    assert_error(response, 400, "invalid user name")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "ok-name", "password": "short"}, "at least 8 characters"),
        ({"name": "ok-name", "password": "x" * 1025}, "at least 8 characters"),
        ({"name": "ok-name"}, "missing field 'password'"),
        ({"password": PASSWORD}, "missing field 'name'"),
        (
            {"name": "ok-name", "password": PASSWORD, "admin": "yes"},
            "'admin' must be true or false",
        ),
        ({"name": "ok-name", "password": PASSWORD, "admin": 1}, "'admin' must be true or false"),
        ({"name": "ok-name", "password": PASSWORD, "admin": None}, "'admin' must be"),
        ({"name": 12, "password": PASSWORD}, "'name' must be a string"),
        ({"name": "ok-name", "password": PASSWORD, "pasword": "x"}, "unknown field 'pasword'"),
        ({}, "missing field"),
    ],
)
def test_bad_user_bodies(admin: Api, body: dict[str, object], message: str) -> None:
    assert_error(admin.post("users", json=body), 400, message)


def test_bad_updates(admin: Api, user: Api) -> None:
    assert_error(admin.patch(f"users/{user.name}", json={}), 400, "nothing to change")
    assert_error(admin.patch(f"users/{user.name}", json={"password": "short"}), 400, "at least 8")
    assert_error(admin.patch(f"users/{user.name}", json={"name": "x"}), 400, "unknown field")
    assert_error(admin.patch(f"users/{user.name}", json={"disabled": "true"}), 400)
    # nothing half-done: a bad password leaves the admin flag as it was
    bad = admin.patch(f"users/{user.name}", json={"admin": True, "password": "short"})
    assert_error(bad, 400)
    assert admin.ok("GET", f"users/{user.name}")["admin"] is False


def test_names_are_unique_across_users_and_organizations(
    registry: Registry, admin: Api, user: Api
) -> None:
    assert_error(admin.post("users", json={"name": user.name, "password": PASSWORD}), 409)
    org = registry.new_org(user)
    assert_error(admin.post("users", json={"name": org, "password": PASSWORD}), 409, "taken")


def test_the_last_administrator_is_kept(own_registry: Registry) -> None:
    admin = own_registry.admin()
    assert_error(admin.patch(f"users/{ADMIN}", json={"admin": False}), 409, "last active site")
    assert_error(admin.patch(f"users/{ADMIN}", json={"disabled": True}), 409)
    assert_error(admin.delete(f"users/{ADMIN}"), 409, "last active site administrator")
    second = own_registry.new_user(admin, is_admin=True)
    admin.ok("PATCH", f"users/{ADMIN}", json={"admin": False})
    assert_error(second.patch(f"users/{second.name}", json={"admin": False}), 409)
    assert_error(admin.get("users"), 403)  # no longer an administrator
    second.ok("DELETE", f"users/{ADMIN}", 204)


def test_a_user_with_repositories_is_disabled_not_deleted(registry: Registry, admin: Api) -> None:
    user = registry.new_user(admin)
    pushed = registry.push(user.name, user.password, f"{user.name}/app", basic=True)
    assert pushed.status_code == 201
    message = assert_error(admin.delete(f"users/{user.name}"), 409, "still holds repositories")
    assert f"{user.name}/app" in message and "disable" in message
    admin.ok("PATCH", f"users/{user.name}", json={"disabled": True})


def test_the_last_owner_of_an_organization_is_not_deleted(
    registry: Registry, admin: Api, user: Api, other: Api
) -> None:
    org = registry.new_org(user)
    assert_error(admin.delete(f"users/{user.name}"), 409, f"last owner of {org}")
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "owner"})
    admin.ok("DELETE", f"users/{user.name}", 204)
    assert other.ok("GET", f"orgs/{org}/members") == [{"user": other.name, "role": "owner"}]


def test_a_disabled_users_bearer_token_stops_working(
    registry: Registry, admin: Api, user: Api
) -> None:
    bearer = registry.api(bearer=registry.bearer(user.name, user.password))
    bearer.ok("GET", "user")
    admin.ok("PATCH", f"users/{user.name}", json={"disabled": True})
    assert_error(bearer.get("user"), 401, "names no current local user")
    admin.ok("PATCH", f"users/{user.name}", json={"disabled": False})
    bearer.ok("GET", "user")


def test_disabled_deleted_and_changed_credentials_fail(own_registry: Registry) -> None:
    """(A server of its own: each refused login counts towards the login brake.)"""
    admin = own_registry.admin()
    user = own_registry.new_user(admin, basic=True)
    robot = own_registry.new_robot(user, user.name)
    admin.ok("PATCH", f"users/{user.name}", json={"disabled": True})
    assert_error(user.get("user"), 401, "invalid username or password")
    admin.ok("PATCH", f"users/{user.name}", json={"disabled": False})
    user.ok("PATCH", f"users/{user.name}", json={"password": "the-new-password"})
    assert_error(user.get("user"), 401)  # the old password
    admin.ok("DELETE", f"users/{user.name}", 204)
    assert_error(own_registry.api(robot["username"], robot["secret"]).get("user"), 401)
    entry = admin.ok("GET", "audit", params={"action": "user.delete"})["entries"][0]
    assert entry["detail"] == {"robots_revoked": 1}
    assert own_registry.admin_password not in str(admin.ok("GET", "audit"))
