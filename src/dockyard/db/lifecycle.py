"""Queries on storage usage, quotas and tag immutability rules."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from dockyard.db.dialect import upsert
from dockyard.db.schema import (
    blobs,
    immutability_rules,
    manifests,
    quotas,
    repositories,
    repository_blobs,
    retention_policies,
    tags,
)


@dataclass(frozen=True, slots=True)
class Quota:
    namespace: str
    max_bytes: int | None
    max_repositories: int | None


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    repository_pattern: str
    tag_pattern: str


def _in_namespace(namespace: str) -> ColumnElement[bool]:
    if namespace == "":
        return repositories.c.name.not_like("%/%")
    return repositories.c.name.like(f"{_escape(namespace)}/%", escape="\\")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def namespace_bytes(conn: Connection, namespace: str) -> int:
    """Bytes of the distinct blobs and manifests of a namespace's repositories (a blob
    shared by two of its repositories counts once)."""
    blob_digests = (
        select(repository_blobs.c.digest)
        .join(repositories, repositories.c.id == repository_blobs.c.repository_id)
        .where(_in_namespace(namespace))
    )
    blob_bytes = conn.execute(
        select(func.coalesce(func.sum(blobs.c.size), 0)).where(blobs.c.digest.in_(blob_digests))
    ).scalar()
    manifest_bytes = conn.execute(
        select(func.coalesce(func.sum(manifests.c.size), 0))
        .join(repositories, repositories.c.id == manifests.c.repository_id)
        .where(_in_namespace(namespace))
    ).scalar()
    return int(blob_bytes or 0) + int(manifest_bytes or 0)


def namespace_repository_count(conn: Connection, namespace: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(repositories).where(_in_namespace(namespace))
        ).scalar()
        or 0
    )


def repository_usage(
    conn: Connection, namespace: str | None = None, repository: str | None = None
) -> list[tuple[str, int, int]]:
    """(repository, blob bytes, manifest bytes) for every repository (of ``namespace``, or
    just ``repository``, when given)."""
    where: list[ColumnElement[bool]] = []
    if namespace is not None:
        where.append(_in_namespace(namespace))
    if repository is not None:
        where.append(repositories.c.name == repository)
    blob_bytes = dict(
        conn.execute(
            select(repositories.c.name, func.sum(blobs.c.size))
            .join(repository_blobs, repository_blobs.c.repository_id == repositories.c.id)
            .join(blobs, blobs.c.digest == repository_blobs.c.digest)
            .where(*where)
            .group_by(repositories.c.name)
        ).all()
    )
    manifest_bytes = dict(
        conn.execute(
            select(repositories.c.name, func.sum(manifests.c.size))
            .join(manifests, manifests.c.repository_id == repositories.c.id)
            .where(*where)
            .group_by(repositories.c.name)
        ).all()
    )
    names = sorted(set(blob_bytes) | set(manifest_bytes))
    return [(n, int(blob_bytes.get(n) or 0), int(manifest_bytes.get(n) or 0)) for n in names]


def stored_bytes(conn: Connection) -> tuple[int, int]:
    """(distinct blob bytes, manifest bytes) of the whole registry: what is on disk."""
    blob_total = conn.execute(select(func.coalesce(func.sum(blobs.c.size), literal(0)))).scalar()
    manifest_total = conn.execute(
        select(func.coalesce(func.sum(manifests.c.size), literal(0)))
    ).scalar()
    return int(blob_total or 0), int(manifest_total or 0)


def get_quota(conn: Connection, namespace: str, *, lock: bool = False) -> Quota | None:
    """The namespace's quota. ``lock``: hold its row until the transaction ends, so that
    transactions checking the same quota take turns (on PostgreSQL; SQLite writers always
    do), and each sees the usage the previous ones committed."""
    query = select(quotas.c.namespace, quotas.c.max_bytes, quotas.c.max_repositories).where(
        quotas.c.namespace == namespace
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return Quota(row[0], row[1], row[2]) if row else None


def list_quotas(conn: Connection) -> list[Quota]:
    rows = conn.execute(
        select(quotas.c.namespace, quotas.c.max_bytes, quotas.c.max_repositories).order_by(
            quotas.c.namespace
        )
    )
    return [Quota(r[0], r[1], r[2]) for r in rows]


def set_quota(
    conn: Connection, namespace: str, max_bytes: int | None, max_repositories: int | None
) -> None:
    if max_bytes is None and max_repositories is None:
        conn.execute(delete(quotas).where(quotas.c.namespace == namespace))
        return
    upsert(
        conn,
        quotas,
        {"namespace": namespace, "max_bytes": max_bytes, "max_repositories": max_repositories},
        ["namespace"],
        ["max_bytes", "max_repositories"],
    )


def list_rules(conn: Connection) -> list[Rule]:
    rows = conn.execute(
        select(
            immutability_rules.c.id,
            immutability_rules.c.repository_pattern,
            immutability_rules.c.tag_pattern,
        ).order_by(immutability_rules.c.id)
    )
    return [Rule(r[0], r[1], r[2]) for r in rows]


def add_rule(conn: Connection, repository_pattern: str, tag_pattern: str) -> int:
    result = conn.execute(
        insert(immutability_rules).values(
            repository_pattern=repository_pattern,
            tag_pattern=tag_pattern,
            created_at=time.time(),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def remove_rule(conn: Connection, rule_id: int) -> bool:
    result = conn.execute(delete(immutability_rules).where(immutability_rules.c.id == rule_id))
    return result.rowcount > 0


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    manifest_id: int
    pushed_at: float
    pulled_at: float | None


def record_pulls(conn: Connection, pulls: dict[tuple[str, str], float]) -> None:
    """Set ``pulled_at`` of (repository, tag) pairs (later times only)."""
    for (repository, tag), when in pulls.items():
        repository_id = select(repositories.c.id).where(repositories.c.name == repository)
        conn.execute(
            update(tags)
            .where(
                tags.c.repository_id == repository_id.scalar_subquery(),
                tags.c.name == tag,
                or_(tags.c.pulled_at.is_(None), tags.c.pulled_at < when),
            )
            .values(pulled_at=when)
        )


def tags_of_repository(conn: Connection, repository: str) -> list[TagRow]:
    rows = conn.execute(
        select(tags.c.name, tags.c.manifest_id, tags.c.updated_at, tags.c.pulled_at)
        .join(repositories, repositories.c.id == tags.c.repository_id)
        .where(repositories.c.name == repository)
    )
    return [TagRow(r[0], r[1], r[2], r[3]) for r in rows]


def repository_names(conn: Connection) -> list[str]:
    return list(conn.execute(select(repositories.c.name).order_by(repositories.c.name)).scalars())


@dataclass(frozen=True, slots=True)
class PolicyRow:
    id: int
    repository_pattern: str
    rules: dict[str, Any]


def list_policies(conn: Connection) -> list[PolicyRow]:
    rows = conn.execute(
        select(
            retention_policies.c.id,
            retention_policies.c.repository_pattern,
            retention_policies.c.rules,
        ).order_by(retention_policies.c.id)
    )
    return [PolicyRow(r[0], r[1], json.loads(r[2])) for r in rows]


def add_policy(conn: Connection, repository_pattern: str, rules: dict[str, Any]) -> int:
    result = conn.execute(
        insert(retention_policies).values(
            repository_pattern=repository_pattern,
            rules=json.dumps(rules),
            created_at=time.time(),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def remove_policy(conn: Connection, policy_id: int) -> bool:
    result = conn.execute(delete(retention_policies).where(retention_policies.c.id == policy_id))
    return result.rowcount > 0


def update_policy(
    conn: Connection, policy_id: int, repository_pattern: str, rules: dict[str, Any]
) -> bool:
    result = conn.execute(
        update(retention_policies)
        .where(retention_policies.c.id == policy_id)
        .values(repository_pattern=repository_pattern, rules=json.dumps(rules))
    )
    return result.rowcount > 0
