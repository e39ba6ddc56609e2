"""The storage lifecycle part of the management API: quotas, tag immutability rules,
retention policies (and running them), storage usage and garbage collection.

Handlers are thin, as in ``api``: ``registry.lifecycle_management`` decides who may do
what inside one transaction; retention and collection runs are the registry's own
services. Every change is audited (dry runs change nothing and are not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dockyard.auth.administration import GLOB_PATTERN, require_site_admin
from dockyard.http import api_routes as r
from dockyard.http.api_routes import Call, Endpoint
from dockyard.http.messages import Response, json_response
from dockyard.registry import lifecycle_management as lm
from dockyard.registry.gc import GarbageCollector, GcPolicy

if TYPE_CHECKING:
    from dockyard.http.api import ManagementAPI


def _created(view: dict[str, Any], location: str) -> Response:
    return json_response(201, view, [("Location", quote(location))])


def _int(call: Call, name: str) -> int | None:
    value = call.body.get(name)
    return None if value is None else int(value)


# -- quotas -------------------------------------------------------------------------------


async def get_quota(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    return json_response(200, await api._read(lambda c: lm.get_quota(c, call.identity, ns)))


async def set_quota(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    max_bytes, max_repositories = _int(call, "bytes"), _int(call, "repositories")
    view = await api._write(
        lambda c: lm.set_quota(c, call.identity, ns, max_bytes, max_repositories)
    )
    resource = await api._read(lambda c: lm.namespace_resource(c, ns))
    await api._audit(call, "quota.set", resource, dict(view["limits"]))
    return json_response(200, view)


async def delete_quota(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    await api._write(lambda c: lm.delete_quota(c, call.identity, ns))
    resource = await api._read(lambda c: lm.namespace_resource(c, ns))
    await api._audit(call, "quota.delete", resource)
    return Response(204)


# -- immutability rules -------------------------------------------------------------------


async def list_immutable_rules(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    rules = await api._read(lambda c: lm.list_immutable_rules(c, call.identity, ns))
    return json_response(200, rules)


async def get_immutable_rule(api: ManagementAPI, call: Call) -> Response:
    ns, rule_id = call.params["ns"], call.params["rule_id"]
    view = await api._read(lambda c: lm.get_immutable_rule(c, call.identity, ns, rule_id))
    return json_response(200, view)


async def create_immutable_rule(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    repository, tag = call.text("repository") or "", call.text("tag") or ""
    view = await api._write(
        lambda c: lm.create_immutable_rule(c, call.identity, ns, repository, tag)
    )
    await api._audit(call, "immutable_rule.create", repository, view)
    return _created(view, f"/api/v1/namespaces/{ns}/immutable-rules/{view['id']}")


async def delete_immutable_rule(api: ManagementAPI, call: Call) -> Response:
    ns, rule_id = call.params["ns"], call.params["rule_id"]
    view = await api._write(lambda c: lm.delete_immutable_rule(c, call.identity, ns, rule_id))
    await api._audit(call, "immutable_rule.delete", view["repository"], view)
    return Response(204)


# -- retention policies -------------------------------------------------------------------

_POLICY_FIELDS = (
    "keep_last_pushed",
    "keep_last_pulled",
    "keep_pushed_within_days",
    "keep_pulled_within_days",
    "include",
    "exclude",
    "untagged",
)


def _policy_fields(call: Call) -> dict[str, Any]:
    return {k: call.body[k] for k in _POLICY_FIELDS if k in call.body}


async def list_retention_policies(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    policies = await api._read(lambda c: lm.list_retention_policies(c, call.identity, ns))
    return json_response(200, policies)


async def get_retention_policy(api: ManagementAPI, call: Call) -> Response:
    ns, policy_id = call.params["ns"], call.params["policy_id"]
    view = await api._read(lambda c: lm.get_retention_policy(c, call.identity, ns, policy_id))
    return json_response(200, view)


async def create_retention_policy(api: ManagementAPI, call: Call) -> Response:
    ns, repository, fields = call.params["ns"], call.text("repository") or "", _policy_fields(call)
    view = await api._write(
        lambda c: lm.create_retention_policy(c, call.identity, ns, repository, fields)
    )
    await api._audit(call, "retention_policy.create", repository, view)
    return _created(view, f"/api/v1/namespaces/{ns}/retention-policies/{view['id']}")


async def replace_retention_policy(api: ManagementAPI, call: Call) -> Response:
    ns, policy_id = call.params["ns"], call.params["policy_id"]
    repository, fields = call.text("repository") or "", _policy_fields(call)
    view = await api._write(
        lambda c: lm.replace_retention_policy(c, call.identity, ns, policy_id, repository, fields)
    )
    await api._audit(call, "retention_policy.update", repository, view)
    return json_response(200, view)


async def delete_retention_policy(api: ManagementAPI, call: Call) -> Response:
    ns, policy_id = call.params["ns"], call.params["policy_id"]
    view = await api._write(lambda c: lm.delete_retention_policy(c, call.identity, ns, policy_id))
    await api._audit(call, "retention_policy.delete", view["repository"], view)
    return Response(204)


async def run_retention(api: ManagementAPI, call: Call) -> Response:
    ns, dry_run, policy_id = call.params["ns"], bool(call.flag("dry_run")), _int(call, "policy_id")
    ids = await api._read(lambda c: lm.retention_run_policies(c, call.identity, ns, policy_id))
    report = await api.registry.retention.run(dry_run=dry_run, policy_ids=ids)
    if not dry_run:
        resource = await api._read(lambda c: lm.namespace_resource(c, ns))
        detail = {
            "policies": ids,
            "tags_deleted": len(report.tags),
            "manifests_deleted": len(report.manifests),
        }
        await api._audit(call, "retention.run", resource, detail)
    return json_response(200, report.to_json())


# -- usage and garbage collection ---------------------------------------------------------


async def registry_usage(api: ManagementAPI, call: Call) -> Response:
    return json_response(200, await api._read(lambda c: lm.registry_usage(c, call.identity)))


async def namespace_usage(api: ManagementAPI, call: Call) -> Response:
    ns = call.params["ns"]
    return json_response(200, await api._read(lambda c: lm.namespace_usage(c, call.identity, ns)))


async def repository_usage(api: ManagementAPI, call: Call) -> Response:
    name, rules = call.params["repository"], api._rules
    view = await api._read(lambda c: lm.repository_usage(c, call.identity, name, rules))
    return json_response(200, view)


async def run_gc(api: ManagementAPI, call: Call) -> Response:
    require_site_admin(call.identity, "run garbage collection")
    dry_run = bool(call.flag("dry_run"))
    defaults = api.gc_policy
    grace = lm.check_grace_seconds(call.number("grace_seconds"))
    untagged = call.flag("delete_untagged")
    policy = GcPolicy(
        grace_seconds=defaults.grace_seconds if grace is None else grace,
        delete_untagged=defaults.delete_untagged if untagged is None else untagged,
    )
    report = await GarbageCollector(api.registry.ctx, policy).collect(dry_run=dry_run)
    if not dry_run:
        detail = {
            "grace_seconds": policy.grace_seconds,
            "delete_untagged": policy.delete_untagged,
            "manifests_deleted": len(report.manifests),
            "blobs_deleted": len(report.blobs) + len(report.orphan_files),
            "bytes_freed": report.bytes_freed,
        }
        await api._auth.audit(call.identity.subject, "gc.run", None, call.request.client, detail)
    return json_response(200, report.to_json())


# -- the route table ----------------------------------------------------------------------

_ADMIN = "site administrators"
_MANAGERS = "owners and admins of the namespace, site administrators"
_MEMBERS = (
    "members of the namespace (the user it is, members of the organization, its robots), "
    "site administrators"
)
_QUOTA_PATH = "/api/v1/namespaces/{ns}/quota"
_RULES_PATH = "/api/v1/namespaces/{ns}/immutable-rules"
_POLICIES_PATH = "/api/v1/namespaces/{ns}/retention-policies"
_REPOSITORY_GLOB = r.text(
    "repository",
    "a repository glob under NS/ (NS/* for all of them, NS/app for one); * also matches /",
    required=True,
    minLength=1,
    maxLength=lm.MAX_REPOSITORY_GLOB,
    pattern=GLOB_PATTERN,
)
_TAG_GLOB_SCHEMA: dict[str, Any] = {
    "minLength": 1,
    "maxLength": lm.MAX_TAG_GLOB,
    "pattern": lm.TAG_GLOB_PATTERN,
}
_POLICY_BODY = (
    _REPOSITORY_GLOB,
    r.integer(
        "keep_last_pushed",
        "keep the N tags pushed (or moved) most recently",
        minimum=0,
        maximum=lm.MAX_KEEP_COUNT,
    ),
    r.integer(
        "keep_last_pulled",
        "keep the N tags pulled most recently",
        minimum=0,
        maximum=lm.MAX_KEEP_COUNT,
    ),
    r.number(
        "keep_pushed_within_days",
        "keep tags pushed within D days",
        minimum=0,
        maximum=lm.MAX_KEEP_DAYS,
    ),
    r.number(
        "keep_pulled_within_days",
        "keep tags pulled within D days",
        minimum=0,
        maximum=lm.MAX_KEEP_DAYS,
    ),
    r.text_list("include", "tag globs the policy considers [*]", **_TAG_GLOB_SCHEMA),
    r.text_list("exclude", "tag globs it never touches", **_TAG_GLOB_SCHEMA),
    r.flag("untagged", "also delete the repository's manifests nothing keeps [false]"),
)

LIFECYCLE_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        _QUOTA_PATH,
        get_quota,
        "Read a namespace's quota with what it uses (404 when it has none)",
        "quotas",
        _MEMBERS,
        response=r.schema("Quota"),
    ),
    Endpoint(
        "PUT",
        _QUOTA_PATH,
        set_quota,
        "Set a namespace's quota (a limit not given is no limit); applies at the next push",
        "quotas",
        _ADMIN,
        response=r.schema("Quota"),
        body=(
            r.integer(
                "bytes", "bytes it may store (each blob once)", minimum=0, maximum=lm.MAX_BYTES
            ),
            r.integer(
                "repositories", "repositories it may have", minimum=0, maximum=lm.MAX_REPOSITORIES
            ),
        ),
    ),
    Endpoint(
        "DELETE",
        _QUOTA_PATH,
        delete_quota,
        "Remove a namespace's quota",
        "quotas",
        _ADMIN,
        status=204,
    ),
    Endpoint(
        "GET",
        _RULES_PATH,
        list_immutable_rules,
        "List the tag immutability rules of a namespace",
        "immutability",
        _MEMBERS,
        response=r.list_of("ImmutabilityRule"),
    ),
    Endpoint(
        "POST",
        _RULES_PATH,
        create_immutable_rule,
        "Make matching tags immutable: they can be neither moved nor deleted",
        "immutability",
        _MANAGERS,
        status=201,
        response=r.schema("ImmutabilityRule"),
        body=(
            _REPOSITORY_GLOB,
            r.text("tag", "a tag glob (v*, release-?, [0-9]*)", required=True, **_TAG_GLOB_SCHEMA),
        ),
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        _RULES_PATH + "/{rule_id}",
        get_immutable_rule,
        "Read a tag immutability rule",
        "immutability",
        _MEMBERS,
        response=r.schema("ImmutabilityRule"),
    ),
    Endpoint(
        "DELETE",
        _RULES_PATH + "/{rule_id}",
        delete_immutable_rule,
        "Remove a tag immutability rule",
        "immutability",
        _MANAGERS,
        status=204,
    ),
    Endpoint(
        "GET",
        _POLICIES_PATH,
        list_retention_policies,
        "List the retention policies of a namespace",
        "retention",
        _MEMBERS,
        response=r.list_of("RetentionPolicy"),
    ),
    Endpoint(
        "POST",
        _POLICIES_PATH,
        create_retention_policy,
        "Add a retention policy: which tags of which repositories to keep",
        "retention",
        _MANAGERS,
        status=201,
        response=r.schema("RetentionPolicy"),
        body=_POLICY_BODY,
    ),
    Endpoint(
        "GET",
        _POLICIES_PATH + "/{policy_id}",
        get_retention_policy,
        "Read a retention policy",
        "retention",
        _MEMBERS,
        response=r.schema("RetentionPolicy"),
    ),
    Endpoint(
        "PUT",
        _POLICIES_PATH + "/{policy_id}",
        replace_retention_policy,
        "Replace a retention policy (a rule not given is no rule)",
        "retention",
        _MANAGERS,
        response=r.schema("RetentionPolicy"),
        body=_POLICY_BODY,
    ),
    Endpoint(
        "DELETE",
        _POLICIES_PATH + "/{policy_id}",
        delete_retention_policy,
        "Remove a retention policy",
        "retention",
        _MANAGERS,
        status=204,
    ),
    Endpoint(
        "POST",
        "/api/v1/namespaces/{ns}/retention-runs",
        run_retention,
        "Apply the namespace's retention policies now (or one of them), or list what would go",
        "retention",
        _MANAGERS,
        response=r.schema("RetentionReport"),
        body=(
            r.flag("dry_run", "only list what would be deleted", required=True),
            r.integer(
                "policy_id",
                "apply this policy only [all of the namespace's]",
                minimum=1,
                maximum=2**62,
            ),
        ),
    ),
    Endpoint(
        "GET",
        "/api/v1/namespaces/{ns}/usage",
        namespace_usage,
        "Storage used by a namespace (deduplicated and logical) and each of its repositories",
        "usage",
        _MEMBERS,
        response=r.schema("NamespaceUsage"),
    ),
    Endpoint(
        "GET",
        "/api/v1/usage/repositories/{repository:path}",
        repository_usage,
        "Storage used by one repository",
        "usage",
        "whoever may pull it",
        response=r.schema("RepositoryUsage"),
    ),
    Endpoint(
        "GET",
        "/api/v1/usage",
        registry_usage,
        "Storage used by the registry (deduplicated and logical), each namespace and repository",
        "usage",
        _ADMIN,
        response=r.schema("RegistryUsage"),
    ),
    Endpoint(
        "POST",
        "/api/v1/gc",
        run_gc,
        "Collect garbage now (online), or report what a run would free; answers when done",
        "gc",
        _ADMIN,
        response=r.schema("GcReport"),
        body=(
            r.flag("dry_run", "only report what would be freed", required=True),
            r.flag("delete_untagged", "also collect manifests nothing keeps [gc_delete_untagged]"),
            r.number(
                "grace_seconds",
                "keep anything younger [gc_grace_seconds]; 0 only on a registry nobody pushes to",
                minimum=0,
                maximum=lm.MAX_GRACE_SECONDS,
            ),
        ),
    ),
)
