"""Managing the storage lifecycle on someone's behalf: quotas, tag immutability rules,
retention policies and storage usage, as the management API offers them.

Who may do what (as Harbor does it):

- quotas are set and removed by site administrators; members of the namespace (and the
  user whose namespace it is) read them;
- immutability rules and retention policies of a namespace are managed by its managers
  (the user themselves, owners and admins of the organization, site administrators) and
  read by its members; their repository pattern must stay under ``NS/``;
- usage of a namespace is read by its members, of a repository by whoever may pull it,
  of the whole registry by site administrators (as is garbage collection).

Each function takes the acting identity first and runs inside one transaction, the check
and the change seeing the same data. Rules and policies are data: a change applies to the
next request of every server process.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Any

from sqlalchemy import Connection

from dockyard.auth.administration import (
    GLOB_PATTERN,
    ForbiddenError,
    check_repository_name,
    is_site_admin,
    org_resource,
    require_manager,
    require_namespace,
    require_site_admin,
    user_resource,
)
from dockyard.auth.identities import Identity
from dockyard.auth.management import ConflictError, ManagementError, NotFoundError
from dockyard.auth.policy import Rules, repository_actions
from dockyard.db import identities as id_db
from dockyard.db import lifecycle as life_db
from dockyard.db import repositories as repo_db
from dockyard.registry.retention import KEEP_RULES, PolicyInvalid, check_rules
from dockyard.registry.usage import usage

# What the API documents (and checks, with fullmatch).
TAG_GLOB_PATTERN = r"^[A-Za-z0-9_.*?\[\]!-]+$"
MAX_REPOSITORY_GLOB = 255
MAX_TAG_GLOB = 128
MAX_PATTERNS = 50
MAX_BYTES = 2**63 - 1
MAX_REPOSITORIES = 2**31 - 1
MAX_KEEP_COUNT = 1_000_000
MAX_KEEP_DAYS = 36500
MAX_ID = 2**62
MAX_GRACE_SECONDS = 10 * 365 * 86400
_TAG_GLOB_RE = re.compile(TAG_GLOB_PATTERN)
_GLOB_RE = re.compile(GLOB_PATTERN)
_KEEP_COUNTS = ("keep_last_pushed", "keep_last_pulled")
_KEEP_DAYS = ("keep_pushed_within_days", "keep_pulled_within_days")


# -- who may ------------------------------------------------------------------------------


def require_member(conn: Connection, actor: Identity, namespace: str, doing: str) -> None:
    """The caller belongs to ``namespace``: the user it is (also with an access token), a
    member of the organization in any role, a robot of the namespace, a site
    administrator."""
    if is_site_admin(actor):
        return
    if actor.kind == "robot":
        if actor.namespace == namespace:
            return
    elif actor.kind in ("user", "token") and actor.user_id is not None:
        if actor.name == namespace:
            return
        org = id_db.org_by_name(conn, namespace)
        if org is not None and id_db.role_of(conn, org.id, actor.user_id) is not None:
            return
    raise ForbiddenError(f"{doing} is for members of {namespace[:70]!r} and site administrators")


def namespace_resource(conn: Connection, namespace: str) -> str:
    """What the audit log names a namespace by: ``org:NAME`` or ``user:NAME``."""
    if id_db.org_by_name(conn, namespace) is not None:
        return org_resource(namespace)
    return user_resource(namespace)


# -- checks on input ----------------------------------------------------------------------


def check_repository_glob(pattern: str, namespace: str) -> str:
    """A repository glob of the namespace: ``NS/...`` with the characters of repository
    names and the wildcards ``*`` (which also matches ``/``) and ``?``."""
    if len(pattern) > MAX_REPOSITORY_GLOB or not _GLOB_RE.fullmatch(pattern):
        raise ManagementError(
            f"invalid repository pattern {pattern[:80]!r}: at most {MAX_REPOSITORY_GLOB} "
            "lowercase letters, digits, . _ - / and the wildcards * and ?"
        )
    prefix = f"{namespace}/"
    if not pattern.startswith(prefix) or len(pattern) == len(prefix):
        raise ManagementError(
            f"a rule of {namespace[:70]!r} covers repositories under {prefix} only: the "
            f"pattern must start with {prefix} and name something after it (got "
            f"{pattern[:80]!r}; {prefix}* covers them all)"
        )
    return pattern


def check_tag_glob(pattern: str, what: str = "tag pattern") -> str:
    """A tag glob: the characters of tags and ``*``, ``?`` and ``[...]`` classes."""
    if len(pattern) > MAX_TAG_GLOB or not _TAG_GLOB_RE.fullmatch(pattern):
        raise ManagementError(
            f"invalid {what} {pattern[:80]!r}: 1-{MAX_TAG_GLOB} letters, digits, . _ - and "
            "the wildcards * ? [...]"
        )
    try:
        re.compile(fnmatch.translate(pattern))
    except re.error as exc:
        raise ManagementError(f"invalid {what} {pattern[:80]!r}: {exc}") from None
    return pattern


def _check_limit(value: int | None, name: str, highest: int) -> int | None:
    if value is not None and not 0 <= value <= highest:
        raise ManagementError(f"{name} must be a whole number from 0 to {highest}")
    return value


def check_grace_seconds(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0 <= value <= MAX_GRACE_SECONDS):
        raise ManagementError(f"grace_seconds must be a number from 0 to {MAX_GRACE_SECONDS}")
    return value


def _parse_id(value: str, what: str, namespace: str) -> int:
    if not value.isdigit() or len(value) > 18 or not 0 < int(value) <= MAX_ID:
        raise NotFoundError(f"no {what} {value[:30]!r} in {namespace[:70]!r}")
    return int(value)


def _within(pattern: str, namespace: str) -> bool:
    return pattern.startswith(f"{namespace}/")


# -- quotas -------------------------------------------------------------------------------


def _quota_view(conn: Connection, namespace: str) -> dict[str, Any] | None:
    quota = life_db.get_quota(conn, namespace)
    if quota is None:
        return None
    return {
        "namespace": namespace,
        "limits": {"bytes": quota.max_bytes, "repositories": quota.max_repositories},
        "used": {
            "bytes": life_db.namespace_bytes(conn, namespace),
            "repositories": life_db.namespace_repository_count(conn, namespace),
        },
    }


def get_quota(conn: Connection, actor: Identity, namespace: str) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading a quota")
    view = _quota_view(conn, namespace)
    if view is None:
        raise NotFoundError(
            f"{namespace!r} has no quota (no limit); its usage is at "
            f"/api/v1/namespaces/{namespace}/usage"
        )
    return view


def set_quota(
    conn: Connection,
    actor: Identity,
    namespace: str,
    max_bytes: int | None,
    max_repositories: int | None,
) -> dict[str, Any]:
    """Set (replace) a namespace's quota; a limit not given is no limit. Takes effect at
    the next push, also when the namespace already uses more (then pushes that add to it
    are refused)."""
    require_namespace(conn, namespace)
    require_site_admin(actor, "set quotas")
    _check_limit(max_bytes, "bytes", MAX_BYTES)
    _check_limit(max_repositories, "repositories", MAX_REPOSITORIES)
    if max_bytes is None and max_repositories is None:
        raise ManagementError("give 'bytes', 'repositories' or both; DELETE removes the quota")
    life_db.set_quota(conn, namespace, max_bytes, max_repositories)
    view = _quota_view(conn, namespace)
    assert view is not None
    return view


def delete_quota(conn: Connection, actor: Identity, namespace: str) -> None:
    require_namespace(conn, namespace)
    require_site_admin(actor, "remove quotas")
    if life_db.get_quota(conn, namespace) is None:
        raise NotFoundError(f"{namespace!r} has no quota")
    life_db.set_quota(conn, namespace, None, None)


# -- immutability rules -------------------------------------------------------------------


def _rule_json(rule: life_db.Rule) -> dict[str, Any]:
    return {"id": rule.id, "repository": rule.repository_pattern, "tag": rule.tag_pattern}


def _namespace_rules(conn: Connection, namespace: str) -> list[life_db.Rule]:
    return [r for r in life_db.list_rules(conn) if _within(r.repository_pattern, namespace)]


def list_immutable_rules(conn: Connection, actor: Identity, namespace: str) -> list[dict[str, Any]]:
    """The rules whose repository pattern is under ``NS/`` (site-wide rules, made with the
    CLI, are not listed here)."""
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading immutability rules")
    return [_rule_json(r) for r in _namespace_rules(conn, namespace)]


def _rule(conn: Connection, namespace: str, rule_id: str) -> life_db.Rule:
    wanted = _parse_id(rule_id, "immutability rule", namespace)
    for rule in _namespace_rules(conn, namespace):
        if rule.id == wanted:
            return rule
    raise NotFoundError(f"no immutability rule {wanted} in {namespace!r}")


def get_immutable_rule(
    conn: Connection, actor: Identity, namespace: str, rule_id: str
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading immutability rules")
    return _rule_json(_rule(conn, namespace, rule_id))


def create_immutable_rule(
    conn: Connection, actor: Identity, namespace: str, repository: str, tag: str
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "changing immutability rules")
    check_repository_glob(repository, namespace)
    check_tag_glob(tag)
    for rule in life_db.list_rules(conn):
        if (rule.repository_pattern, rule.tag_pattern) == (repository, tag):
            raise ConflictError(f"the rule {repository}:{tag} exists (rule {rule.id})")
    rule_id = life_db.add_rule(conn, repository, tag)  # (a race loses with a 409 too)
    return {"id": rule_id, "repository": repository, "tag": tag}


def delete_immutable_rule(
    conn: Connection, actor: Identity, namespace: str, rule_id: str
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "changing immutability rules")
    rule = _rule(conn, namespace, rule_id)
    life_db.remove_rule(conn, rule.id)
    return _rule_json(rule)


# -- retention policies -------------------------------------------------------------------


def _policy_json(policy: life_db.PolicyRow) -> dict[str, Any]:
    rules = policy.rules
    view: dict[str, Any] = {"id": policy.id, "repository": policy.repository_pattern}
    for key in _KEEP_COUNTS:
        view[key] = None if rules.get(key) is None else int(rules[key])
    for key in _KEEP_DAYS:
        view[key] = rules.get(key)
    view["include"] = list(rules.get("include") or ["*"])
    view["exclude"] = list(rules.get("exclude") or [])
    view["untagged"] = bool(rules.get("untagged", False))
    return view


def check_policy(namespace: str, repository: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The rules of a policy given as the API's fields (all but ``repository``): keep
    counts are whole numbers, days any number, patterns tag globs."""
    check_repository_glob(repository, namespace)
    for key in _KEEP_COUNTS:
        value = fields.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value != int(value)
            or not 0 <= value <= MAX_KEEP_COUNT
        ):
            raise ManagementError(f"{key} must be a whole number from 0 to {MAX_KEEP_COUNT}")
    for key in _KEEP_DAYS:
        value = fields.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_KEEP_DAYS
        ):
            raise ManagementError(f"{key} must be a number from 0 to {MAX_KEEP_DAYS}")
    for key in ("include", "exclude"):
        patterns = fields.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise ManagementError(f"{key} must be a list of at most {MAX_PATTERNS} tag patterns")
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ManagementError(f"{key} must be a list of tag patterns (strings)")
            check_tag_glob(pattern, f"{key} pattern")
    rules: dict[str, Any] = {}
    for key in KEEP_RULES:
        if fields.get(key) is not None:
            rules[key] = int(fields[key]) if key in _KEEP_COUNTS else fields[key]
    rules["include"] = list(fields.get("include") or ["*"])
    rules["exclude"] = list(fields.get("exclude") or [])
    rules["untagged"] = bool(fields.get("untagged", False))
    try:
        return check_rules(rules)
    except PolicyInvalid as exc:  # (the checks above are stricter; kept as a safety net)
        raise ManagementError(str(exc)) from None


def _namespace_policies(conn: Connection, namespace: str) -> list[life_db.PolicyRow]:
    return [p for p in life_db.list_policies(conn) if _within(p.repository_pattern, namespace)]


def _policy(conn: Connection, namespace: str, policy_id: str) -> life_db.PolicyRow:
    wanted = _parse_id(policy_id, "retention policy", namespace)
    for policy in _namespace_policies(conn, namespace):
        if policy.id == wanted:
            return policy
    raise NotFoundError(f"no retention policy {wanted} in {namespace!r}")


def list_retention_policies(
    conn: Connection, actor: Identity, namespace: str
) -> list[dict[str, Any]]:
    """The policies whose repository pattern is under ``NS/``."""
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading retention policies")
    return [_policy_json(p) for p in _namespace_policies(conn, namespace)]


def get_retention_policy(
    conn: Connection, actor: Identity, namespace: str, policy_id: str
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading retention policies")
    return _policy_json(_policy(conn, namespace, policy_id))


def create_retention_policy(
    conn: Connection, actor: Identity, namespace: str, repository: str, fields: dict[str, Any]
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "changing retention policies")
    rules = check_policy(namespace, repository, fields)
    policy_id = life_db.add_policy(conn, repository, rules)
    return _policy_json(life_db.PolicyRow(policy_id, repository, rules))


def replace_retention_policy(
    conn: Connection,
    actor: Identity,
    namespace: str,
    policy_id: str,
    repository: str,
    fields: dict[str, Any],
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "changing retention policies")
    policy = _policy(conn, namespace, policy_id)
    rules = check_policy(namespace, repository, fields)
    life_db.update_policy(conn, policy.id, repository, rules)
    return _policy_json(life_db.PolicyRow(policy.id, repository, rules))


def delete_retention_policy(
    conn: Connection, actor: Identity, namespace: str, policy_id: str
) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "changing retention policies")
    policy = _policy(conn, namespace, policy_id)
    life_db.remove_policy(conn, policy.id)
    return _policy_json(policy)


def retention_run_policies(
    conn: Connection, actor: Identity, namespace: str, policy_id: int | None
) -> list[int]:
    """The ids of the policies a run for ``namespace`` applies (all of the namespace's, or
    the one asked for), once the caller is known to manage it."""
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "running retention policies")
    ids = [p.id for p in _namespace_policies(conn, namespace)]
    if policy_id is not None:
        if policy_id not in ids:
            raise NotFoundError(f"no retention policy {policy_id} in {namespace!r}")
        return [policy_id]
    return ids


# -- usage --------------------------------------------------------------------------------


def _repository_rows(rows: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    return [
        {"repository": name, "bytes": b + m, "blob_bytes": b, "manifest_bytes": m}
        for name, b, m in rows
    ]


def registry_usage(conn: Connection, actor: Identity) -> dict[str, Any]:
    require_site_admin(actor, "read the registry's storage usage")
    return usage(conn).to_json()


def namespace_usage(conn: Connection, actor: Identity, namespace: str) -> dict[str, Any]:
    require_namespace(conn, namespace)
    require_member(conn, actor, namespace, "reading storage usage")
    rows = life_db.repository_usage(conn, namespace=namespace)
    quota = life_db.get_quota(conn, namespace)
    return {
        "namespace": namespace,
        "stored_bytes": life_db.namespace_bytes(conn, namespace),
        "logical_bytes": sum(b + m for _, b, m in rows),
        "repositories": life_db.namespace_repository_count(conn, namespace),
        "quota": None
        if quota is None
        else {"bytes": quota.max_bytes, "repositories": quota.max_repositories},
        "repository_usage": _repository_rows(rows),
    }


def repository_usage(
    conn: Connection, actor: Identity, repository: str, rules: Rules
) -> dict[str, Any]:
    """Whoever may pull a repository sees its usage (403 otherwise, whether or not it
    exists, as on /v2)."""
    check_repository_name(repository)
    if "pull" not in repository_actions(conn, actor, repository, rules):
        raise ForbiddenError(f"you may not pull {repository!r}")
    if repo_db.get_id(conn, repository) is None:
        raise NotFoundError(f"no repository {repository!r}")
    rows = life_db.repository_usage(conn, repository=repository)
    return _repository_rows(rows or [(repository, 0, 0)])[0]
