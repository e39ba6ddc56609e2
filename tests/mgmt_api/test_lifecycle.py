"""The storage lifecycle through the management API, on a running server: quotas,
immutability rules and retention policies set over HTTP apply to the very next request on
/v2 (no restart); usage is exact after a delete and a collection, in the API and in
/metrics; who may do what; bad input is a 400 that says what is wrong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.content import Blob, Image, image_config, image_manifest, make_image, random_blob
from tests.api.protocol import (
    assert_error as assert_v2_error,
)
from tests.api.protocol import (
    error_messages,
    push_blobs,
    put_manifest,
    registry_client,
    upload_location,
    with_query,
)
from tests.mgmt_api.api import Api, Registry, assert_error
from tests.mgmt_api.test_openapi import conforms


class V2:
    """A /v2 client for one user, with a token covering the repositories it was made for."""

    def __init__(self, registry: Registry, user: Api, *repositories: str) -> None:
        scopes = [f"repository:{r}:pull,push,delete" for r in repositories]
        token = registry.bearer(user.name, user.password, *scopes)
        self.client = registry_client(registry.url, headers={"Authorization": f"Bearer {token}"})

    def push(self, repository: str, tag: str, image: Image | None = None) -> httpx.Response:
        """Push an image's blobs (asserting they land) and its manifest under ``tag``;
        the manifest PUT's answer."""
        image = image or make_image(layer_count=1, layer_size=256)
        push_blobs(self.client, repository, image.blobs)
        return put_manifest(self.client, repository, tag, image.manifest)

    def upload(self, repository: str, blob: Blob) -> httpx.Response:
        location = upload_location(self.client, repository)
        return self.client.put(with_query(location, digest=blob.digest), content=blob.data)

    def manifest_status(self, repository: str, reference: str) -> int:
        return self.client.get(f"/v2/{repository}/manifests/{reference}").status_code

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def team(registry: Registry, user: Api) -> str:
    return registry.new_org(user)


@pytest.fixture
def v2(registry: Registry, user: Api, team: str) -> Iterator[V2]:
    client = V2(registry, user, *(f"{team}/{name}" for name in ("app", "lib", "one", "two")))
    yield client
    client.close()


def test_quota_set_through_the_api_refuses_the_next_push(
    registry: Registry, admin: Api, user: Api, other: Api, team: str, v2: V2
) -> None:
    assert_error(user.get(f"namespaces/{team}/quota"), 404, "has no quota")
    # only site administrators set quotas; the namespace's owner reads them
    assert_error(user.put(f"namespaces/{team}/quota", json={"bytes": 10**9}), 403, "administrators")
    view = admin.ok("PUT", f"namespaces/{team}/quota", json={"bytes": 1000})
    assert view == {
        "namespace": team,
        "limits": {"bytes": 1000, "repositories": None},
        "used": {"bytes": 0, "repositories": 0},
    }
    refused = v2.upload(f"{team}/app", random_blob(1500))
    assert_v2_error(refused, 403, "DENIED")
    message = error_messages(refused)
    assert f"namespace {team} may store 1000 bytes" in message
    assert "(500 over)" in message
    assert v2.upload(f"{team}/app", random_blob(600)).status_code == 201

    seen = user.ok("GET", f"namespaces/{team}/quota")
    assert seen["used"] == {"bytes": 600, "repositories": 1}
    metrics = httpx.get(f"{registry.url}/metrics", timeout=30).text
    assert _metric(metrics, "dockyard_namespace_quota_bytes", team) == 1000
    assert _metric(metrics, "dockyard_namespace_stored_bytes", team) == 600
    assert f'dockyard_namespace_quota_repositories{{namespace="{team}"}}' not in metrics
    assert_error(other.get(f"namespaces/{team}/quota"), 403, "members")

    # replacing the quota: a limit not given is no limit
    view = admin.ok("PUT", f"namespaces/{team}/quota", json={"repositories": 1})
    assert view["limits"] == {"bytes": None, "repositories": 1}
    assert v2.upload(f"{team}/app", random_blob(1500)).status_code == 201
    refused = v2.client.post(f"/v2/{team}/lib/blobs/uploads/")  # a second repository
    assert_v2_error(refused, 403, "DENIED")
    assert f"namespace {team} may have 1 repositories" in error_messages(refused)

    admin.ok("DELETE", f"namespaces/{team}/quota", 204)
    assert_error(admin.get(f"namespaces/{team}/quota"), 404)
    assert_error(admin.delete(f"namespaces/{team}/quota"), 404)
    assert v2.upload(f"{team}/lib", random_blob(10)).status_code == 201

    actions = [
        e["action"] for e in user.ok("GET", "audit", params={"resource": f"org:{team}"})["entries"]
    ]
    assert actions[:3] == ["quota.delete", "quota.set", "quota.set"]


def test_immutability_rule_through_the_api(
    registry: Registry, user: Api, other: Api, team: str, v2: V2
) -> None:
    repo = f"{team}/app"
    assert v2.push(repo, "v1").status_code == 201
    rule = user.ok(
        "POST",
        f"namespaces/{team}/immutable-rules",
        201,
        json={"repository": f"{team}/*", "tag": "v*"},
    )
    assert rule == {"id": rule["id"], "repository": f"{team}/*", "tag": "v*"}
    assert user.ok("GET", f"namespaces/{team}/immutable-rules") == [rule]
    assert user.ok("GET", f"namespaces/{team}/immutable-rules/{rule['id']}") == rule
    duplicate = user.post(
        f"namespaces/{team}/immutable-rules", json={"repository": f"{team}/*", "tag": "v*"}
    )
    assert_error(duplicate, 409, "exists")

    # at once: moving or deleting the tag is refused; other tags move freely
    moved = v2.push(repo, "v1")
    assert_v2_error(moved, 403, "DENIED")
    assert "immutable" in error_messages(moved)
    deleted = v2.client.delete(f"/v2/{repo}/manifests/v1")
    assert_v2_error(deleted, 403, "DENIED")
    assert v2.push(repo, "latest").status_code == 201
    assert v2.push(repo, "latest").status_code == 201

    # readers read the rules; only managers change them; outsiders see nothing
    user.ok("PUT", f"orgs/{team}/members/{other.name}", json={"role": "maintainer"})
    assert other.ok("GET", f"namespaces/{team}/immutable-rules") == [rule]
    assert_error(
        other.delete(f"namespaces/{team}/immutable-rules/{rule['id']}"), 403, "owner or admin"
    )
    user.ok("DELETE", f"orgs/{team}/members/{other.name}", 204)
    assert_error(other.get(f"namespaces/{team}/immutable-rules"), 403)
    # a rule of another namespace is not found through this one
    assert_error(other.get(f"namespaces/{other.name}/immutable-rules/{rule['id']}"), 404)

    user.ok("DELETE", f"namespaces/{team}/immutable-rules/{rule['id']}", 204)
    assert_error(user.get(f"namespaces/{team}/immutable-rules/{rule['id']}"), 404)
    assert v2.push(repo, "v1").status_code == 201


def test_retention_dry_run_then_run(registry: Registry, user: Api, team: str, v2: V2) -> None:
    repo = f"{team}/app"
    for i in range(4):
        assert v2.push(repo, f"t{i}").status_code == 201
    assert v2.push(f"{team}/lib", "t0").status_code == 201
    body = {"repository": repo, "keep_last_pushed": 2, "exclude": ["keep-*"]}
    policy = user.ok("POST", f"namespaces/{team}/retention-policies", 201, json=body)
    assert policy == {
        "id": policy["id"],
        "repository": repo,
        "keep_last_pushed": 2,
        "keep_last_pulled": None,
        "keep_pushed_within_days": None,
        "keep_pulled_within_days": None,
        "include": ["*"],
        "exclude": ["keep-*"],
        "untagged": False,
    }
    path = f"namespaces/{team}/retention-policies/{policy['id']}"
    assert user.ok("GET", path) == policy
    assert user.ok("GET", f"namespaces/{team}/retention-policies") == [policy]

    dry = user.ok("POST", f"namespaces/{team}/retention-runs", json={"dry_run": True})
    assert dry["dry_run"] is True
    assert dry["tags_deleted"] == [
        {"repository": repo, "tag": "t0"},
        {"repository": repo, "tag": "t1"},
    ]
    assert all(v2.manifest_status(repo, f"t{i}") == 200 for i in range(4))

    # replace it: keep one, and delete what is left untagged
    replaced = user.ok(
        "PUT", path, json={"repository": repo, "keep_last_pushed": 1, "untagged": True}
    )
    assert (replaced["keep_last_pushed"], replaced["exclude"], replaced["untagged"]) == (
        1,
        [],
        True,
    )
    done = user.ok(
        "POST",
        f"namespaces/{team}/retention-runs",
        json={"dry_run": False, "policy_id": policy["id"]},
    )
    assert [t["tag"] for t in done["tags_deleted"]] == ["t0", "t1", "t2"]
    assert len(done["manifests_deleted"]) == 3
    assert [v2.manifest_status(repo, f"t{i}") for i in range(4)] == [404, 404, 404, 200]
    assert v2.manifest_status(f"{team}/lib", "t0") == 200  # not covered by the policy

    user.ok("DELETE", path, 204)
    assert_error(user.get(path), 404, "no retention policy")
    assert_error(
        user.post(
            f"namespaces/{team}/retention-runs", json={"dry_run": True, "policy_id": policy["id"]}
        ),
        404,
    )
    empty = user.ok("POST", f"namespaces/{team}/retention-runs", json={"dry_run": False})
    assert empty["tags_deleted"] == []


def _image_with(layer: Blob) -> Image:
    config = image_config(layers=[layer])
    return Image(config, (layer,), image_manifest(config, [layer]))


def _metric(text: str, name: str, namespace: str) -> float:
    found = re.search(rf'^{name}{{namespace="{re.escape(namespace)}"}} (\S+)$', text, re.M)
    assert found, f"{name} for {namespace} not in /metrics"
    return float(found[1])


def test_usage_is_exact_after_a_delete_and_gc(
    registry: Registry, admin: Api, user: Api, other: Api, team: str, v2: V2
) -> None:
    shared = random_blob(3000)
    app, lib = _image_with(shared), _image_with(shared)
    assert v2.push(f"{team}/app", "v1", app).status_code == 201
    assert v2.push(f"{team}/lib", "v1", lib).status_code == 201
    app_bytes = shared.size + app.config.size + app.manifest.size
    lib_bytes = shared.size + lib.config.size + lib.manifest.size

    usage = user.ok("GET", f"namespaces/{team}/usage")
    assert usage == {
        "namespace": team,
        "stored_bytes": app_bytes + lib_bytes - shared.size,
        "logical_bytes": app_bytes + lib_bytes,
        "repositories": 2,
        "quota": None,
        "repository_usage": [
            {
                "repository": f"{team}/app",
                "bytes": app_bytes,
                "blob_bytes": shared.size + app.config.size,
                "manifest_bytes": app.manifest.size,
            },
            {
                "repository": f"{team}/lib",
                "bytes": lib_bytes,
                "blob_bytes": shared.size + lib.config.size,
                "manifest_bytes": lib.manifest.size,
            },
        ],
    }
    assert user.ok("GET", f"usage/repositories/{team}/lib")["bytes"] == lib_bytes
    everything = admin.ok("GET", "usage")
    row = next(n for n in everything["namespaces"] if n["namespace"] == team)
    assert row == {k: v for k, v in usage.items() if k != "repository_usage"}
    assert everything["logical_bytes"] - everything["stored_bytes"] >= shared.size

    metrics = httpx.get(f"{registry.url}/metrics", timeout=30).text
    assert _metric(metrics, "dockyard_namespace_stored_bytes", team) == usage["stored_bytes"]
    assert _metric(metrics, "dockyard_namespace_logical_bytes", team) == usage["logical_bytes"]
    assert _metric(metrics, "dockyard_namespace_repositories", team) == 2

    # delete lib's image; a dry run says what a collection would free, and frees nothing
    deleted = v2.client.delete(f"/v2/{team}/lib/manifests/{lib.manifest.digest}")
    assert deleted.status_code == 202
    gc = {"dry_run": True, "grace_seconds": 0}
    dry = admin.ok("POST", "gc", json=gc)
    assert dry["dry_run"] is True
    assert lib.config.digest in dry["blobs_deleted"]
    assert shared.digest not in dry["blobs_deleted"]
    assert (
        user.ok("GET", f"usage/repositories/{team}/lib")["blob_bytes"]
        == lib.config.size + shared.size
    )

    done = admin.ok("POST", "gc", json={**gc, "dry_run": False})
    assert lib.config.digest in done["blobs_deleted"] and done["links_removed"] >= 2
    assert shared.digest not in done["blobs_deleted"]
    after = user.ok("GET", f"namespaces/{team}/usage")
    assert (after["stored_bytes"], after["logical_bytes"]) == (app_bytes, app_bytes)
    assert user.ok("GET", f"usage/repositories/{team}/lib") == {
        "repository": f"{team}/lib",
        "bytes": 0,
        "blob_bytes": 0,
        "manifest_bytes": 0,
    }
    metrics = httpx.get(f"{registry.url}/metrics", timeout=30).text
    assert _metric(metrics, "dockyard_namespace_stored_bytes", team) == app_bytes
    assert _metric(metrics, "dockyard_namespace_logical_bytes", team) == app_bytes
    assert v2.client.get(f"/v2/{team}/app/blobs/{shared.digest}").content == shared.data

    # registry totals and collection are for site administrators; usage for members
    assert_error(user.get("usage"), 403, "administrators")
    assert_error(user.post("gc", json={"dry_run": True}), 403, "administrators")
    assert_error(other.get(f"namespaces/{team}/usage"), 403, "members")
    assert_error(other.get(f"usage/repositories/{team}/app"), 403, "may not pull")
    assert_error(user.get(f"usage/repositories/{team}/nothing"), 404, "no repository")
    gc_entries = admin.ok("GET", "audit", params={"action": "gc.run", "limit": 1})["entries"]
    assert gc_entries and gc_entries[0]["detail"]["bytes_freed"] >= lib.config.size


def test_robots_and_members_read_only_managers_change(
    registry: Registry, admin: Api, user: Api, other: Api, team: str
) -> None:
    robot = registry.new_robot(user, team)
    as_robot = registry.api(robot["username"], robot["secret"])
    user.ok("PUT", f"orgs/{team}/members/{other.name}", json={"role": "developer"})
    rule = {"repository": f"{team}/*", "tag": "release-*"}
    policy = {"repository": f"{team}/*", "keep_last_pushed": 5}
    for reader in (as_robot, other):
        assert reader.ok("GET", f"namespaces/{team}/usage")["namespace"] == team
        assert reader.ok("GET", f"namespaces/{team}/immutable-rules") == []
        assert reader.ok("GET", f"namespaces/{team}/retention-policies") == []
        assert_error(reader.post(f"namespaces/{team}/immutable-rules", json=rule), 403)
        assert_error(reader.post(f"namespaces/{team}/retention-policies", json=policy), 403)
        assert_error(reader.post(f"namespaces/{team}/retention-runs", json={"dry_run": True}), 403)
        assert_error(reader.put(f"namespaces/{team}/quota", json={"bytes": 1}), 403)
    # a site administrator manages any namespace's rules; an administrator's token does not
    made = admin.ok("POST", f"namespaces/{team}/immutable-rules", 201, json=rule)
    token = registry.new_token(admin)
    as_token = registry.api(admin.name, token["secret"])
    assert_error(as_token.delete(f"namespaces/{team}/immutable-rules/{made['id']}"), 403)
    assert_error(as_token.post("gc", json={"dry_run": True}), 403)
    user.ok("DELETE", f"namespaces/{team}/immutable-rules/{made['id']}", 204)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"repository": "elsewhere/*", "tag": "v*"}, "must start with"),
        ({"repository": "{ns}/", "tag": "v*"}, "must start with"),
        ({"repository": "*", "tag": "v*"}, "must start with"),
        ({"repository": "{ns}/App", "tag": "v*"}, "invalid repository pattern"),
        ({"repository": "{ns}/[ab]", "tag": "v*"}, "invalid repository pattern"),
        ({"repository": "{ns}/*", "tag": "v 1"}, "invalid tag pattern"),
        ({"repository": "{ns}/*", "tag": "v" * 129}, "invalid tag pattern"),
        ({"repository": "{ns}/*", "tag": ""}, "invalid tag pattern"),
        ({"repository": "{ns}/*", "tag": 5}, "'tag' must be"),
        ({"repository": "{ns}/*"}, "missing field 'tag'"),
        ({"repository": "{ns}/*", "tag": "v*", "scope": "all"}, "unknown field"),
    ],
)
def test_bad_immutability_rules(
    registry: Registry, shared_user: Api, body: dict[str, Any], message: str
) -> None:
    ns = shared_user.name
    sent = {k: v.replace("{ns}", ns) if isinstance(v, str) else v for k, v in body.items()}
    response = shared_user.post(f"namespaces/{ns}/immutable-rules", json=sent)
    assert_error(response, 400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"keep_last_pushed": -1}, "whole number from 0"),
        ({"keep_last_pushed": 2.5}, "'keep_last_pushed' must be a whole number"),
        ({"keep_last_pushed": "3"}, "'keep_last_pushed' must be a whole number"),
        ({"keep_last_pushed": True}, "'keep_last_pushed' must be a whole number"),
        ({"keep_last_pulled": 10**7}, "whole number from 0"),
        ({"keep_pushed_within_days": -0.5}, "number from 0"),
        ({"keep_pulled_within_days": 1e9}, "number from 0"),
        ({"include": "v*"}, "'include' must be a list"),
        ({"include": [""]}, "invalid include pattern"),
        ({"exclude": ["la test"]}, "invalid exclude pattern"),
        ({"exclude": [1]}, "'exclude' must be a list"),
        ({"include": ["v*"] * 51}, "at most 50"),
        ({"untagged": "yes"}, "'untagged' must be true or false"),
        ({"keep_last": 3}, "unknown field"),
        ({"repository": None}, "'repository' must be"),
        ({"repository": "other/*"}, "must start with"),
    ],
)
def test_bad_retention_policies(shared_user: Api, body: dict[str, Any], message: str) -> None:
    ns = shared_user.name
    sent = {"repository": f"{ns}/*", **body}
    response = shared_user.post(f"namespaces/{ns}/retention-policies", json=sent)
    assert_error(response, 400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bytes": -1}, "whole number from 0"),
        ({"bytes": 2**63}, "whole number from 0"),
        ({"repositories": 2**31}, "whole number from 0"),
        ({"bytes": "1000"}, "'bytes' must be a whole number"),
        ({"bytes": 1.5}, "'bytes' must be a whole number"),
        ({"bytes": None}, "'bytes' must be a whole number"),
        ({"bytes": True}, "'bytes' must be a whole number"),
        ({}, "nothing to change"),
        ({"max_bytes": 10}, "unknown field"),
    ],
)
def test_bad_quotas(admin: Api, shared_user: Api, body: dict[str, Any], message: str) -> None:
    assert_error(admin.put(f"namespaces/{shared_user.name}/quota", json=body), 400, message)


def test_unknown_namespaces_ids_and_bad_runs(admin: Api, shared_user: Api) -> None:
    ns = shared_user.name
    for method, path in [
        ("GET", "namespaces/no-such-ns/quota"),
        ("PUT", "namespaces/no-such-ns/quota"),
        ("GET", "namespaces/no-such-ns/usage"),
        ("GET", "namespaces/no-such-ns/immutable-rules"),
        ("GET", "namespaces/no-such-ns/retention-policies"),
        ("POST", "namespaces/no-such-ns/retention-runs"),
    ]:
        body = {"bytes": 1} if method == "PUT" else {"dry_run": True}
        assert_error(admin.request(method, path, json=body), 404, "no user or organization")
    for rule_id in ("0", "abc", "-1", "99999999999999999999", "123456789"):
        assert_error(shared_user.get(f"namespaces/{ns}/immutable-rules/{rule_id}"), 404)
        assert_error(shared_user.delete(f"namespaces/{ns}/retention-policies/{rule_id}"), 404)
    runs = f"namespaces/{ns}/retention-runs"
    assert_error(shared_user.post(runs, json={}), 400)
    assert_error(shared_user.post(runs, json={"dry_run": "yes"}), 400, "'dry_run' must be")
    assert_error(shared_user.post(runs, json={"dry_run": True, "policy_id": "1"}), 400)
    assert_error(shared_user.post(runs, content=b"{not json"), 400, "not valid JSON")
    assert_error(admin.post("gc", json={"dry_run": 1}), 400, "'dry_run' must be")
    assert_error(admin.post("gc", json={"dry_run": True, "grace_seconds": -1}), 400)
    assert_error(admin.post("gc", json={"dry_run": True, "grace_seconds": "0"}), 400)
    assert_error(admin.get("usage/repositories/Bad/Name"), 400, "repository name")


def test_answers_match_the_document(
    registry: Registry, admin: Api, user: Api, team: str, v2: V2
) -> None:
    document = httpx.get(f"{registry.url}/api/v1/openapi.json", timeout=30).json()
    assert v2.push(f"{team}/app", "v1").status_code == 201
    quota = admin.ok("PUT", f"namespaces/{team}/quota", json={"bytes": 10**9, "repositories": 9})
    rule = user.ok(
        "POST",
        f"namespaces/{team}/immutable-rules",
        201,
        json={"repository": f"{team}/app", "tag": "v?"},
    )
    policy = user.ok(
        "POST",
        f"namespaces/{team}/retention-policies",
        201,
        json={"repository": f"{team}/*", "keep_pushed_within_days": 0.5, "include": ["v[0-9]*"]},
    )
    for method, template, instance in [
        ("put", "/api/v1/namespaces/{ns}/quota", quota),
        ("get", "/api/v1/namespaces/{ns}/quota", user.ok("GET", f"namespaces/{team}/quota")),
        ("post", "/api/v1/namespaces/{ns}/immutable-rules", rule),
        (
            "get",
            "/api/v1/namespaces/{ns}/immutable-rules",
            user.ok("GET", f"namespaces/{team}/immutable-rules"),
        ),
        ("post", "/api/v1/namespaces/{ns}/retention-policies", policy),
        (
            "post",
            "/api/v1/namespaces/{ns}/retention-runs",
            user.ok("POST", f"namespaces/{team}/retention-runs", json={"dry_run": True}),
        ),
        ("get", "/api/v1/namespaces/{ns}/usage", user.ok("GET", f"namespaces/{team}/usage")),
        (
            "get",
            "/api/v1/usage/repositories/{repository}",
            user.ok("GET", f"usage/repositories/{team}/app"),
        ),
        ("get", "/api/v1/usage", admin.ok("GET", "usage")),
        ("post", "/api/v1/gc", admin.ok("POST", "gc", json={"dry_run": True})),
    ]:
        operation = document["paths"][template][method]
        success = next(v for k, v in operation["responses"].items() if k.startswith("2"))
        conforms(document, success["content"]["application/json"]["schema"], instance)
