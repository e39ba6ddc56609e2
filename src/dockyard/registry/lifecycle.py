"""Storage rules the core enforces inside its write transactions: quotas per namespace
(bytes and repositories) and tag immutability. Both are data, changed through the CLI or
the API, and take effect at once."""

from __future__ import annotations

import fnmatch

from sqlalchemy import Connection

from dockyard.db import lifecycle as life_db
from dockyard.oci.errors import Denied


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0] if "/" in repository else ""


def enforce_quota(conn: Connection, repository: str) -> None:
    """Call at the end of a write that adds bytes or a repository: raise (and so roll the
    transaction back) when the namespace is now over its quota. The quota's row is locked
    first, so concurrent pushes into one namespace check it one after the other, each
    seeing what the others committed: usage is exact under concurrent pushes (SQLite
    serialises writers anyway; on PostgreSQL the lock does it)."""
    namespace = namespace_of(repository)
    quota = life_db.get_quota(conn, namespace, lock=True)
    if quota is None:
        return
    label = namespace or "(top level)"
    if quota.max_repositories is not None:
        count = life_db.namespace_repository_count(conn, namespace)
        if count > quota.max_repositories:
            raise Denied(
                f"quota exceeded: namespace {label} may have {quota.max_repositories} "
                f"repositories; this push would make it {count}",
                detail={"namespace": namespace, "quota": "repositories"},
            )
    if quota.max_bytes is not None:
        used = life_db.namespace_bytes(conn, namespace)
        if used > quota.max_bytes:
            raise Denied(
                f"quota exceeded: namespace {label} may store {quota.max_bytes} bytes; this "
                f"push would make it {used} ({used - quota.max_bytes} over)",
                detail={
                    "namespace": namespace,
                    "quota": "bytes",
                    "over_by": used - quota.max_bytes,
                },
            )


def immutable_rule(conn: Connection, repository: str, tag: str) -> life_db.Rule | None:
    for rule in life_db.list_rules(conn):
        if fnmatch.fnmatchcase(repository, rule.repository_pattern) and fnmatch.fnmatchcase(
            tag, rule.tag_pattern
        ):
            return rule
    return None


def refuse_if_immutable(conn: Connection, repository: str, tag: str, what: str) -> None:
    rule = immutable_rule(conn, repository, tag)
    if rule is not None:
        raise Denied(
            f"tag {repository}:{tag} is immutable (rule {rule.id}: "
            f"{rule.repository_pattern}:{rule.tag_pattern}); {what} is refused. Push a new "
            "tag instead; the image stays pullable by digest",
            detail={"rule": rule.id, "repository": repository, "tag": tag},
        )
