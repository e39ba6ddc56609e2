"""Organizations and members: any user creates one and owns it; owners and admins (and
site administrators) manage it; members see it; the last owner is kept."""

from __future__ import annotations

import pytest

from tests.mgmt_api.api import ADMIN, Api, Registry, assert_error, unique


def test_a_user_creates_an_organization_and_owns_it(registry: Registry, user: Api) -> None:
    name = unique("o")
    response = user.post("orgs", json={"name": name})
    assert response.status_code == 201
    assert response.headers["location"] == f"/api/v1/orgs/{name}"
    org = response.json()
    assert org["name"] == name and org["public"] is False and org["role"] == "owner"
    assert org["members"] == [{"user": user.name, "role": "owner"}]
    assert user.ok("GET", f"orgs/{name}") == org
    assert {"name": name, "role": "owner"} in user.ok("GET", "user")["organizations"]


def test_who_sees_which_organization(registry: Registry, admin: Api, user: Api, other: Api) -> None:
    private = registry.new_org(user)
    public = registry.new_org(user, public=True)
    mine = {o["name"]: o for o in user.ok("GET", "orgs")}
    assert mine[private]["role"] == "owner" and mine[public]["role"] == "owner"
    assert "members" not in mine[private]  # the list is a summary

    theirs = {o["name"]: o for o in other.ok("GET", "orgs")}
    assert private not in theirs
    assert theirs[public]["role"] is None
    seen = other.ok("GET", f"orgs/{public}")
    assert seen["public"] is True and "members" not in seen
    assert_error(other.get(f"orgs/{private}"), 403, "private to its members")
    assert_error(other.get(f"orgs/{private}/members"), 403)
    assert_error(other.get(f"orgs/{public}/members"), 403, "only members")

    everything = {o["name"] for o in admin.ok("GET", "orgs")}
    assert {private, public} <= everything
    assert admin.ok("GET", f"orgs/{private}")["members"] == [{"user": user.name, "role": "owner"}]

    user.ok("PUT", f"orgs/{private}/members/{other.name}", json={"role": "reader"})
    assert other.ok("GET", f"orgs/{private}")["role"] == "reader"
    assert {o["name"] for o in other.ok("GET", "orgs")} >= {private, public}
    assert len(other.ok("GET", f"orgs/{private}/members")) == 2


def test_unknown_organizations(user: Api) -> None:
    for response in (
        user.get("orgs/no-such-org"),
        user.patch("orgs/no-such-org", json={"public": True}),
        user.delete("orgs/no-such-org"),
        user.get("orgs/no-such-org/members"),
        user.put(f"orgs/no-such-org/members/{user.name}", json={"role": "reader"}),
        user.delete(f"orgs/no-such-org/members/{user.name}"),
    ):
        assert_error(response, 404, "no organization 'no-such-org'")


@pytest.mark.parametrize("role", ["owner", "admin", "maintainer", "developer", "reader"])
def test_roles_and_who_manages(registry: Registry, admin: Api, user: Api, role: str) -> None:
    org = registry.new_org(user)
    member = registry.new_user(admin)
    third = registry.new_user(admin)
    user.ok("PUT", f"orgs/{org}/members/{member.name}", json={"role": role})
    manages = role in ("owner", "admin")
    attempts = [
        member.patch(f"orgs/{org}", json={"public": True}),
        member.put(f"orgs/{org}/members/{third.name}", json={"role": "reader"}),
        member.get(f"namespaces/{org}/robots"),
    ]
    for response in attempts:
        if manages:
            assert response.status_code == 200, response.text
        else:
            assert_error(response, 403, f"owner or admin role of '{org}'")
    if not manages:
        assert_error(member.delete(f"orgs/{org}/members/{third.name}"), 403)
        assert_error(member.delete(f"orgs/{org}"), 403)


def test_members_are_added_changed_and_removed(
    registry: Registry, admin: Api, user: Api, other: Api
) -> None:
    org = registry.new_org(user)
    member = user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "developer"})
    assert member == {"user": other.name, "role": "developer"}
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "maintainer"})
    assert {"user": other.name, "role": "maintainer"} in user.ok("GET", f"orgs/{org}/members")
    user.ok("DELETE", f"orgs/{org}/members/{other.name}", 204)
    assert_error(user.delete(f"orgs/{org}/members/{other.name}"), 404, "not a member")
    assert_error(user.put(f"orgs/{org}/members/nobody-here", json={"role": "reader"}), 404)
    # a site administrator manages any organization
    admin.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "reader"})
    # a member may leave
    other.ok("DELETE", f"orgs/{org}/members/{other.name}", 204)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"role": "superuser"}, "'role' must be one of"),
        ({"role": "Owner"}, "'role' must be one of"),
        ({"role": ""}, "'role' must be one of"),
        ({"role": None}, "'role' must be one of"),
        ({}, "missing field 'role'"),
        ({"role": "reader", "extra": 1}, "unknown field 'extra'"),
    ],
)
def test_bad_member_bodies(
    registry: Registry, shared_user: Api, body: dict[str, object], message: str
) -> None:
    org = registry.new_org(shared_user)
    assert_error(shared_user.put(f"orgs/{org}/members/{ADMIN}", json=body), 400, message)


def test_the_last_owner_is_kept(registry: Registry, user: Api, other: Api) -> None:
    org = registry.new_org(user)
    path = f"orgs/{org}/members/{user.name}"
    assert_error(user.put(path, json={"role": "admin"}), 409, "last owner")
    assert_error(user.delete(path), 409, "last owner")
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "owner"})
    user.ok("PUT", path, json={"role": "admin"})
    assert_error(other.delete(f"orgs/{org}/members/{other.name}"), 409, "last owner")


def test_visibility_of_an_organization(registry: Registry, user: Api, other: Api) -> None:
    org = registry.new_org(user)
    assert user.ok("PATCH", f"orgs/{org}", json={"public": True})["public"] is True
    assert other.ok("GET", f"orgs/{org}")["public"] is True
    assert_error(user.patch(f"orgs/{org}", json={}), 400, "missing field 'public'")
    assert_error(user.patch(f"orgs/{org}", json={"public": "yes"}), 400)
    assert_error(user.patch(f"orgs/{org}", json={"name": "x"}), 400, "unknown field")
    assert_error(other.patch(f"orgs/{org}", json={"public": False}), 403)


def test_deleting_an_organization(registry: Registry, admin: Api, user: Api) -> None:
    org = registry.new_org(user)
    robot = registry.new_robot(user, org)
    user.ok("DELETE", f"orgs/{org}", 204)
    assert_error(user.get(f"orgs/{org}"), 404)
    entry = admin.ok("GET", "audit", params={"resource": f"org:{org}", "action": "org.delete"})
    assert entry["entries"][0]["detail"] == {"robots_revoked": 1}
    # the name is free again, and the old robot does not come back with it
    registry.api(user.name, user.password).ok("POST", "orgs", 201, json={"name": org})
    assert [r["revoked"] for r in user.ok("GET", f"namespaces/{org}/robots")] == [True]
    assert robot["secret"]  # revoked: logging in with it fails (see test_robots)


def test_an_organization_with_repositories_is_not_deleted(registry: Registry, user: Api) -> None:
    org = registry.new_org(user)
    registry.push(user.name, user.password, f"{org}/app")
    assert_error(user.delete(f"orgs/{org}"), 409, f"still holds repositories ({org}/app)")


@pytest.mark.parametrize("name", ["A", "x", "-x", "a/b", "a b", "y" * 65, "ümlaut", "team\n"])
def test_invalid_organization_names(shared_user: Api, name: str) -> None:
    response = shared_user.post("orgs", json={"name": name})
    assert_error(response, 400, "invalid organization name")


def test_organization_names_are_unique(registry: Registry, user: Api, other: Api) -> None:
    org = registry.new_org(user)
    assert_error(other.post("orgs", json={"name": org}), 409, "taken")
    assert_error(other.post("orgs", json={"name": user.name}), 409, "taken")
    assert_error(user.post("orgs", json={"name": "ok-name", "public": 1}), 400)


def test_only_password_users_create_organizations(registry: Registry, user: Api) -> None:
    token = registry.new_token(user)
    as_token = registry.api(user.name, token["secret"])
    assert_error(as_token.post("orgs", json={"name": unique("o")}), 403, "personal access token")
    robot = registry.new_robot(user, user.name)
    as_robot = registry.api(robot["username"], robot["secret"])
    assert_error(as_robot.post("orgs", json={"name": unique("o")}), 403, "robot account")
