"""The audit log: every management change leaves an entry (who, what, which resource, from
where), never a secret; site administrators read everything, managers their namespaces."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from tests.mgmt_api.api import ADMIN, Api, Registry, assert_error, unique


def entries(api: Api, **params: object) -> list[dict[str, object]]:
    return list(api.ok("GET", "audit", params={"limit": 1000, **params})["entries"])


def test_every_change_is_audited_without_secrets(registry: Registry, admin: Api) -> None:
    started = time.time()
    name = unique("u")
    user = registry.new_user(admin, name=name)
    friend = registry.new_user(admin)
    org = registry.new_org(user)
    user.ok("PUT", f"orgs/{org}/members/{friend.name}", json={"role": "reader"})
    user.ok("DELETE", f"orgs/{org}/members/{friend.name}", 204)
    user.ok("PATCH", f"orgs/{org}", json={"public": True})
    robot = registry.new_robot(user, org)
    short = robot["name"].split("+", 1)[1]
    user.ok("DELETE", f"namespaces/{org}/robots/{short}", 204)
    token = registry.new_token(user)
    user.ok("DELETE", f"user/tokens/{token['id']}", 204)
    user.ok("PATCH", f"repositories/{org}/app", json={"visibility": "public"})
    new_password = registry.remember("yet-another-password")
    user.ok("PATCH", f"users/{name}", json={"password": new_password})
    user = registry.api(name, new_password)
    user.ok("DELETE", f"orgs/{org}", 204)
    admin.ok("PATCH", f"users/{name}", json={"disabled": True})
    admin.ok("DELETE", f"users/{name}", 204)

    log = [e for e in entries(admin, since=started) if e["actor"] in (name, ADMIN)]
    done = [(e["actor"], e["action"], e["resource"]) for e in reversed(log)]
    expected = [
        (ADMIN, "user.create", f"user:{name}"),
        (name, "org.create", f"org:{org}"),
        (name, "org.member.set", f"org:{org}"),
        (name, "org.member.remove", f"org:{org}"),
        (name, "org.update", f"org:{org}"),
        (name, "robot.create", robot["username"]),
        (name, "robot.revoke", robot["username"]),
        (name, "token.create", f"token:{token['id']}"),
        (name, "token.revoke", f"token:{token['id']}"),
        (name, "repository.visibility", f"{org}/app"),
        (name, "user.update", f"user:{name}"),
        (name, "org.delete", f"org:{org}"),
        (ADMIN, "user.update", f"user:{name}"),
        (ADMIN, "user.delete", f"user:{name}"),
    ]
    assert [d for d in done if d[2] in {x[2] for x in expected}] == expected
    details = {(e["action"], e["resource"]): e["detail"] for e in log}
    assert details[("org.member.set", f"org:{org}")] == {"user": friend.name, "role": "reader"}
    assert details[("repository.visibility", f"{org}/app")] == {"visibility": "public"}
    assert details[("user.update", f"user:{name}")] in (
        {"password_changed": True},
        {"disabled": True},
    )
    assert details[("user.create", f"user:{name}")] == {"admin": False}
    for entry in log:
        assert entry["client"] == "127.0.0.1"
        assert isinstance(entry["id"], int) and entry["ts"] >= started - 1
        assert datetime.fromisoformat(str(entry["time"])).tzinfo == UTC
    everything = json.dumps(entries(admin))
    leaked = [s[:10] for s in registry.secrets if s in everything]
    assert not leaked
    assert registry.admin_password not in everything


def test_filters_and_pages(registry: Registry, admin: Api, user: Api) -> None:
    orgs = [registry.new_org(user) for _ in range(3)]
    mine = entries(admin, actor=user.name, action="org.create")
    assert [e["resource"] for e in mine] == [f"org:{o}" for o in reversed(orgs)]
    mine_only = {"actor": user.name, "action": "org.create", "limit": 2}
    page = admin.ok("GET", "audit", params=mine_only)
    assert len(page["entries"]) == 2 and page["next"] == page["entries"][-1]["id"]
    rest = admin.ok("GET", "audit", params={**mine_only, "before": page["next"]})
    assert [e["resource"] for e in rest["entries"]] == [f"org:{orgs[0]}"]
    assert rest["next"] is None
    only = entries(admin, resource=f"org:{orgs[1]}")
    assert [e["action"] for e in only] == ["org.create"]
    assert entries(admin, actor=user.name, since=time.time() + 60) == []
    iso = datetime.fromtimestamp(time.time() - 600, UTC).isoformat()
    assert len(entries(admin, actor=user.name, action="org.create", since=iso)) == 3
    assert len(entries(admin, actor=user.name, since=iso[:10])) >= 3  # a date alone


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "'limit'"),
        ({"limit": "1001"}, "'limit'"),
        ({"limit": "ten"}, "'limit'"),
        ({"limit": ""}, "'limit'"),
        ({"before": "-5"}, "'before'"),
        ({"since": "yesterday"}, "'since'"),
        ({"since": "2024-13-45"}, "'since'"),
        ({"since": "nan"}, "'since'"),
        ({"since": ""}, "'since'"),
        ({"actor": "x" * 300}, "'actor'"),
    ],
)
def test_bad_parameters(admin: Api, params: dict[str, str], message: str) -> None:
    assert_error(admin.get("audit", params=params), 400, message)


def test_managers_read_their_namespaces(
    registry: Registry, admin: Api, user: Api, other: Api
) -> None:
    org = registry.new_org(user)
    registry.push(user.name, user.password, f"{org}/app")
    registry.new_robot(user, org)
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "maintainer"})
    seen = entries(user)
    resources = {e["resource"] for e in seen}
    actions = {e["action"] for e in seen}
    assert f"org:{org}" in resources and f"{org}/app" in resources
    assert {"org.create", "robot.create", "org.member.set", "manifest.push"} <= actions
    assert f"user:{user.name}" in resources  # the administrator created them
    # a maintainer manages no namespace but their own
    assert all(
        str(e["resource"]).startswith((f"{other.name}/", f"robot${other.name}+"))
        or e["resource"] in (f"org:{other.name}", f"user:{other.name}")
        for e in entries(other)
    )
    assert not any(str(e["resource"]).endswith(org) for e in entries(other))
    user.ok("PUT", f"orgs/{org}/members/{other.name}", json={"role": "admin"})
    assert f"{org}/app" in {e["resource"] for e in entries(other)}
    # filters narrow within what they may see
    assert entries(other, resource=f"user:{user.name}") == []


def test_an_underscore_is_no_wildcard(registry: Registry, admin: Api) -> None:
    """Namespace prefixes match literally (``a_b/`` is not ``axb/``)."""
    lead = registry.new_user(admin, name=unique("p") + "_x")
    lookalike = registry.new_user(admin, name=lead.name[:-2] + "zx")
    org = registry.new_org(lookalike)
    lookalike.ok("PATCH", f"repositories/{org}/app", json={"visibility": "public"})
    lookalike.ok("PATCH", f"repositories/{lookalike.name}/app", json={"visibility": "public"})
    assert not any(lookalike.name in str(e["resource"]) for e in entries(lead))


def test_robots_and_tokens_do_not_read_it(registry: Registry, user: Api) -> None:
    robot = registry.new_robot(user, user.name)
    assert_error(registry.api(robot["username"], robot["secret"]).get("audit"), 403)
    token = registry.new_token(user)
    assert_error(registry.api(user.name, token["secret"]).get("audit"), 403)


def test_logins_and_grants_are_audited_without_secrets(own_registry: Registry) -> None:
    admin = own_registry.admin()
    user = own_registry.new_user(admin)
    wrong = "wrong-password-123"
    assert_error(own_registry.api(user.name, wrong).get("user"), 401)
    own_registry.bearer(user.name, user.password, f"repository:{user.name}/app:pull")
    log = entries(admin)
    failed = [e for e in log if e["action"] == "login.failed"]
    assert [e["actor"] for e in failed] == [user.name]
    grants = [e for e in log if e["action"] == "token.grant" and e["actor"] == user.name]
    assert grants and grants[0]["detail"] == {"scopes": [f"repository:{user.name}/app:pull"]}
    dump = json.dumps(log)
    assert wrong not in dump and user.password not in dump
