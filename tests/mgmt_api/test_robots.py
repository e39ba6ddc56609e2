"""Robot accounts: made by the managers of a namespace, shown their secret once, log in as
Docker clients do and push within their permissions; revoked and expired ones fail."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.api.content import make_image
from tests.api.protocol import push_image, registry_client
from tests.mgmt_api.api import Api, Registry, assert_error, unique


def test_create_list_and_revoke(registry: Registry, user: Api) -> None:
    org = registry.new_org(user)
    name = unique("ci")
    body = {"name": name, "permissions": [{"repository": f"{org}/*", "actions": ["push", "pull"]}]}
    response = user.post(f"namespaces/{org}/robots", json=body)
    assert response.status_code == 201
    assert response.headers["location"] == f"/api/v1/namespaces/{org}/robots/{name}"
    robot = response.json()
    registry.remember(robot["secret"])
    assert robot["username"] == robot["name"] == f"robot${org}+{name}"
    assert robot["secret"].startswith("dyr_") and len(robot["secret"]) > 40
    assert robot["kind"] == "robot" and robot["namespace"] == org
    assert robot["permissions"] == [{"repository": f"{org}/*", "actions": ["pull", "push"]}]
    assert robot["expires_at"] is None and robot["revoked"] is False

    listed = user.ok("GET", f"namespaces/{org}/robots")
    assert [r["name"] for r in listed] == [robot["name"]]
    assert "secret" not in listed[0] and robot["secret"] not in str(listed)

    user.ok("DELETE", f"namespaces/{org}/robots/{name}", 204)
    assert user.ok("GET", f"namespaces/{org}/robots")[0]["revoked"] is True
    assert_error(user.delete(f"namespaces/{org}/robots/{name}"), 404, "no active robot")
    assert_error(user.delete(f"namespaces/{org}/robots/nobody"), 404)
    # a revoked robot's name stays taken, so no old token can come back to life with it
    assert_error(user.post(f"namespaces/{org}/robots", json=body), 409, "exists")


def test_revoke_by_login_name(registry: Registry, user: Api) -> None:
    robot = registry.new_robot(user, user.name)
    user.ok("DELETE", f"namespaces/{user.name}/robots/{robot['username']}", 204)


def test_a_robot_logs_in_and_pushes(registry: Registry, user: Api) -> None:
    org = registry.new_org(user)
    robot = registry.new_robot(
        user, org, [{"repository": f"{org}/app", "actions": ["pull", "push"]}]
    )
    # docker login: the token endpoint with Basic credentials
    response = registry.token(robot["username"], robot["secret"], f"repository:{org}/app:pull,push")
    assert response.status_code == 200
    token = response.json()["token"]
    with registry_client(registry.url, headers={"Authorization": f"Bearer {token}"}) as client:
        pushed = push_image(client, f"{org}/app", make_image(layer_count=1, layer_size=512), "v1")
        assert pushed.status_code == 201
        assert client.get(f"/v2/{org}/app/manifests/v1").status_code == 200
    # outside its permissions: nothing granted, nothing pushed
    response = registry.token(
        robot["username"], robot["secret"], f"repository:{org}/other:pull,push"
    )
    assert response.status_code == 200
    token = response.json()["token"]
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        denied = client.post(
            f"/v2/{org}/other/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
        )
        assert denied.status_code in (401, 403)
        direct = client.post(
            f"/v2/{org}/other/blobs/uploads/", auth=(robot["username"], robot["secret"])
        )
        assert direct.status_code == 403
    # the robot sees the repository it pushed through the API too
    as_robot = registry.api(robot["username"], robot["secret"])
    listed = as_robot.ok("GET", "repositories", params={"n": 1000})["repositories"]
    assert [r["name"] for r in listed if r["name"].startswith(f"{org}/")] == [f"{org}/app"]
    assert all(r["visibility"] == "public" for r in listed if r["name"] != f"{org}/app")


def test_a_pull_only_robot_cannot_push(registry: Registry, user: Api) -> None:
    robot = registry.new_robot(
        user, user.name, [{"repository": f"{user.name}/*", "actions": ["pull"]}]
    )
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        response = client.post(
            f"/v2/{user.name}/app/blobs/uploads/", auth=(robot["username"], robot["secret"])
        )
    assert response.status_code == 403


def test_who_manages_robots(registry: Registry, admin: Api, user: Api, other: Api) -> None:
    org = registry.new_org(user)
    body = {"name": "ci", "permissions": [{"repository": f"{org}/*", "actions": ["pull"]}]}
    assert_error(other.get(f"namespaces/{org}/robots"), 403)
    assert_error(other.post(f"namespaces/{org}/robots", json=body), 403, "owner or admin role")
    assert_error(other.post(f"namespaces/{user.name}/robots", json=body), 403)
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "developer"})
    assert_error(other.post(f"namespaces/{org}/robots", json=body), 403)
    assert_error(other.delete(f"namespaces/{org}/robots/ci"), 403)
    robot = admin.ok("POST", f"namespaces/{org}/robots", 201, json=body)
    registry.remember(robot["secret"])
    assert_error(other.delete(f"namespaces/{org}/robots/ci"), 403)
    as_robot = registry.api(robot["username"], robot["secret"])
    body2 = {**body, "name": "another"}
    assert_error(as_robot.post(f"namespaces/{org}/robots", json=body2), 403, "robot account")
    assert_error(as_robot.get(f"namespaces/{org}/robots"), 403)
    for response in (
        user.get("namespaces/no-such-ns/robots"),
        user.post("namespaces/no-such-ns/robots", json=body),
        user.delete("namespaces/no-such-ns/robots/ci"),
    ):
        assert_error(response, 404, "no user or organization")


def _glob(ns: str, glob: str = "*", actions: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"repository": f"{ns}/{glob}", "actions": actions or ["pull"]}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "Bad"}, "invalid robot name"),
        ({"name": ""}, "invalid robot name"),
        ({"name": "r" * 49}, "invalid robot name"),
        ({"name": "-r"}, "invalid robot name"),
        ({"name": "a+b"}, "invalid robot name"),
        ({"name": "a$b"}, "invalid robot name"),
        ({"name": 5}, "'name' must be a string"),
        ({"permissions": None}, "'permissions' must be"),
        ({"permissions": []}, "non-empty list"),
        ({"permissions": "NS/*:pull"}, "'permissions' must be"),
        ({"permissions": [{"repository": "elsewhere/*", "actions": ["pull"]}]}, "only be given"),
        ({"permissions": [{"repository": "*", "actions": ["pull"]}]}, "only be given"),
        ({"permissions": [{"repository": "NS*", "actions": ["pull"]}]}, "only be given"),
        ({"permissions": _glob("NS", "[a-z]*")}, "invalid repository glob"),
        ({"permissions": _glob("NS", "App")}, "invalid repository glob"),
        ({"permissions": _glob("NS", "a b")}, "invalid repository glob"),
        ({"permissions": _glob("NS", actions=["write"])}, "actions must be"),
        ({"permissions": [{"repository": "NS/*", "actions": []}]}, "actions must be"),
        ({"permissions": [{"repository": "NS/*", "actions": "pull"}]}, "actions must be"),
        ({"permissions": [{"actions": ["pull"]}]}, "needs a repository"),
        ({"permissions": ["NS/*"]}, "each permission"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": -1}, "expires_in_days"),
        ({"expires_in_days": 3651}, "expires_in_days"),
        ({"expires_in_days": 1e308}, "expires_in_days"),
        ({"expires_in_days": "7"}, "'expires_in_days' must be a number"),
        ({"expires_in_days": True}, "'expires_in_days' must be a number"),
        ({"secret": "mine"}, "unknown field 'secret'"),
    ],
)
def test_bad_robot_bodies(shared_user: Api, body: dict[str, Any], message: str) -> None:
    user = shared_user
    ns = user.name
    full: dict[str, Any] = {"name": "ci", "permissions": _glob(ns)}
    full.update(body)
    if isinstance(full["permissions"], list):
        full["permissions"] = [
            {k: (v.replace("NS", ns) if isinstance(v, str) else v) for k, v in p.items()}
            if isinstance(p, dict)
            else p
            for p in full["permissions"]
        ]
    assert_error(user.post(f"namespaces/{ns}/robots", json=full), 400, message)
    assert user.ok("GET", f"namespaces/{ns}/robots") == []


def test_missing_fields_and_raw_bodies(registry: Registry, user: Api) -> None:
    ns = user.name
    assert_error(user.post(f"namespaces/{ns}/robots", json={"name": "ci"}), 400, "'permissions'")
    assert_error(
        user.post(f"namespaces/{ns}/robots", json={"permissions": _glob(ns)}), 400, "'name'"
    )
    raw = b'{"name": "ci", "permissions": [{"repository": "%s/*", "actions": ["pull"]}], ' % (
        ns.encode()
    )
    for tail in (b'"expires_in_days": NaN}', b'"expires_in_days": Infinity}'):
        response = user.post(f"namespaces/{ns}/robots", content=raw + tail)
        assert_error(response, 400, "not valid JSON")


def test_names_are_unique_within_a_namespace(registry: Registry, user: Api) -> None:
    robot = registry.new_robot(user, user.name)
    short = robot["name"].split("+", 1)[1]
    again = {"name": short, "permissions": _glob(user.name)}
    assert_error(user.post(f"namespaces/{user.name}/robots", json=again), 409, "exists")
    org = registry.new_org(user)
    registry.remember(
        user.ok("POST", f"namespaces/{org}/robots", 201, json={**again, "permissions": _glob(org)})[
            "secret"
        ]
    )


def test_revoked_and_expired_robots_cannot_log_in(own_registry: Registry) -> None:
    """(A server of its own: each refused login counts towards the login brake.)"""
    admin = own_registry.admin()
    user = own_registry.new_user(admin)
    revoked = own_registry.new_robot(user, user.name)
    expiring = own_registry.new_robot(user, user.name, expires_in_days=2 / 86400)
    assert expiring["expires_at"] == pytest.approx(time.time() + 2, abs=30)
    as_expiring = own_registry.api(expiring["username"], expiring["secret"])
    as_expiring.ok("GET", "user")
    own_registry.bearer(revoked["username"], revoked["secret"])
    name = revoked["name"].split("+", 1)[1]
    user.ok("DELETE", f"namespaces/{user.name}/robots/{name}", 204)
    assert own_registry.token(revoked["username"], revoked["secret"]).status_code == 401
    assert_error(own_registry.api(revoked["username"], revoked["secret"]).get("user"), 401)
    time.sleep(max(0.0, expiring["expires_at"] - time.time()) + 0.5)
    assert_error(as_expiring.get("user"), 401)
