"""Repositories: listed for those who may pull them, with their visibility; the managers
of the namespace make them public or private."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.mgmt_api.api import Api, Registry, assert_error


@pytest.fixture
def team(registry: Registry, user: Api) -> str:
    """An organization of ``user`` with two private repositories, app and lib."""
    org = registry.new_org(user)
    for repo in ("app", "lib"):
        assert registry.push(user.name, user.password, f"{org}/{repo}").status_code == 201
    return org


def private(page: dict[str, Any], team: str) -> list[dict[str, Any]]:
    """The repositories of ``team`` in a listing (which holds the public ones of other
    tests too)."""
    return [r for r in page["repositories"] if r["name"].startswith(f"{team}/")]


def anonymous_pull(registry: Registry, repository: str) -> int:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        return client.get(f"/v2/{repository}/manifests/v1").status_code


def test_listing_follows_who_may_pull(
    registry: Registry, admin: Api, user: Api, other: Api, team: str
) -> None:
    mine = user.ok("GET", "repositories", params={"n": 1000})
    assert [r["name"] for r in private(mine, team)] == [f"{team}/app", f"{team}/lib"]
    assert mine["next"] is None
    first = private(mine, team)[0]
    assert first == {
        "name": f"{team}/app",
        "visibility": "private",
        "visibility_source": "organization",
        "actions": ["delete", "pull", "push"],
    }
    theirs = other.ok("GET", "repositories", params={"n": 1000})
    assert private(theirs, team) == []
    assert all(r["visibility"] == "public" for r in theirs["repositories"])
    everything = {
        r["name"] for r in admin.ok("GET", "repositories", params={"n": 1000})["repositories"]
    }
    assert {f"{team}/app", f"{team}/lib"} <= everything

    user.ok("PUT", f"orgs/{team}/members/{other.name}", json={"role": "reader"})
    theirs = other.ok("GET", "repositories", params={"n": 1000})
    assert [(r["name"], r["actions"]) for r in private(theirs, team)] == [
        (f"{team}/app", ["pull"]),
        (f"{team}/lib", ["pull"]),
    ]


def test_pages(registry: Registry, user: Api, team: str) -> None:
    # (other tests' public repositories are listed too: start at the team's)
    page = user.ok("GET", "repositories", params={"n": 1, "last": f"{team}/"})
    assert [r["name"] for r in page["repositories"]] == [f"{team}/app"]
    assert page["next"] == f"{team}/app"
    page = user.ok("GET", "repositories", params={"n": 1, "last": page["next"]})
    assert [r["name"] for r in page["repositories"]] == [f"{team}/lib"]
    for bad in ("0", "-1", "1001", "x", "1.5", ""):
        assert_error(user.get("repositories", params={"n": bad}), 400, "query parameter 'n'")


def test_visibility(registry: Registry, user: Api, other: Api, team: str) -> None:
    repo = f"{team}/app"
    assert anonymous_pull(registry, repo) == 401
    assert_error(other.get(f"repositories/{repo}"), 403, "may not pull")
    public = user.ok("PATCH", f"repositories/{repo}", json={"visibility": "public"})
    assert public["visibility"] == "public" and public["visibility_source"] == "repository"
    assert anonymous_pull(registry, repo) == 200
    seen = other.ok("GET", f"repositories/{repo}")
    assert seen["visibility"] == "public" and seen["actions"] == ["pull"]
    listed = other.ok("GET", "repositories", params={"n": 1000})
    assert f"{team}/app" in [r["name"] for r in listed["repositories"]]
    user.ok("PATCH", f"repositories/{repo}", json={"visibility": "private"})
    assert anonymous_pull(registry, repo) == 401

    # an organization made public makes its repositories public, unless they say otherwise
    user.ok("PATCH", f"orgs/{team}", json={"public": True})
    lib = other.ok("GET", f"repositories/{team}/lib")
    assert (lib["visibility"], lib["visibility_source"]) == ("public", "organization")
    assert_error(other.get(f"repositories/{repo}"), 403)


@pytest.mark.parametrize("role", ["reader", "developer", "maintainer"])
def test_members_below_admin_cannot_change_visibility(
    registry: Registry, user: Api, other: Api, team: str, role: str
) -> None:
    user.ok("PUT", f"orgs/{team}/members/{other.name}", json={"role": role})
    other.ok("GET", f"repositories/{team}/app")
    response = other.patch(f"repositories/{team}/app", json={"visibility": "public"})
    assert_error(response, 403, "owner or admin role")


def test_robots_and_tokens_read_but_do_not_change(registry: Registry, user: Api, team: str) -> None:
    robot = registry.new_robot(user, team, [{"repository": f"{team}/lib", "actions": ["pull"]}])
    as_robot = registry.api(robot["username"], robot["secret"])
    listed = as_robot.ok("GET", "repositories", params={"n": 1000})
    assert [r["name"] for r in private(listed, team)] == [f"{team}/lib"]
    assert_error(as_robot.get(f"repositories/{team}/app"), 403)
    assert_error(as_robot.patch(f"repositories/{team}/lib", json={"visibility": "public"}), 403)
    token = registry.new_token(user)
    as_token = registry.api(user.name, token["secret"])
    assert as_token.ok("GET", f"repositories/{team}/app")["name"] == f"{team}/app"
    assert_error(as_token.patch(f"repositories/{team}/app", json={"visibility": "public"}), 403)


def test_set_before_the_first_push(registry: Registry, admin: Api, user: Api) -> None:
    repo = f"{user.name}/later"
    assert_error(user.get(f"repositories/{repo}"), 404, "no repository")
    view = user.ok("PATCH", f"repositories/{repo}", json={"visibility": "public"})
    assert view["visibility"] == "public"
    registry.push(user.name, user.password, repo)
    assert anonymous_pull(registry, repo) == 200
    # the namespace must exist; repositories without one belong to site administrators
    assert_error(admin.patch("repositories/nobody-ns/app", json={"visibility": "public"}), 404)
    assert_error(user.patch("repositories/toplevel", json={"visibility": "public"}), 403)
    admin.ok("PATCH", "repositories/toplevel", json={"visibility": "private"})


def test_repository_names_with_slashes_may_be_encoded(user: Api, team: str) -> None:
    assert user.ok("GET", f"repositories/{team}%2Fapp")["name"] == f"{team}/app"


@pytest.mark.parametrize(
    "name", ["UPPER/case", "a//b", "a/", "-a/b", "a/b c", "a" * 256, "a/b:tag", "a/b@x"]
)
def test_invalid_repository_names(admin: Api, name: str) -> None:
    assert_error(admin.get(f"repositories/{name}"), 400, "repository name")
    assert_error(admin.patch(f"repositories/{name}", json={"visibility": "public"}), 400)


@pytest.mark.parametrize(
    "body", [{}, {"visibility": "internal"}, {"visibility": True}, {"public": True}]
)
def test_bad_visibility_bodies(shared_user: Api, body: dict[str, object]) -> None:
    assert_error(shared_user.patch(f"repositories/{shared_user.name}/app", json=body), 400)
