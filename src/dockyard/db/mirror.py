"""Queries of the registry mirror: tag revalidation times, linking cached blobs, and the
accounting and eviction of proxied repositories."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, or_, select, update

from dockyard.db import blobs as blob_db
from dockyard.db import repositories as repo_db
from dockyard.db.lifecycle import namespace_bytes
from dockyard.db.schema import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
    uploads,
)


def tag_checked_at(conn: Connection, repository: str, tag: str) -> float | None:
    """When the tag was last set or confirmed by its upstream (``tags.updated_at``)."""
    return conn.execute(
        select(tags.c.updated_at)
        .join(repositories, repositories.c.id == tags.c.repository_id)
        .where(repositories.c.name == repository, tags.c.name == tag)
    ).scalar()


def touch_tag(conn: Connection, repository: str, tag: str, when: float) -> None:
    repository_id = select(repositories.c.id).where(repositories.c.name == repository)
    conn.execute(
        update(tags)
        .where(tags.c.repository_id == repository_id.scalar_subquery(), tags.c.name == tag)
        .values(updated_at=when)
    )


def referenced_here(conn: Connection, repository: str, digest: str) -> bool:
    """A manifest cached in the repository references the blob."""
    found = conn.execute(
        select(manifest_references.c.manifest_id)
        .join(manifests, manifests.c.id == manifest_references.c.manifest_id)
        .join(repositories, repositories.c.id == manifests.c.repository_id)
        .where(
            repositories.c.name == repository,
            manifest_references.c.digest == digest,
            manifest_references.c.kind == "blob",
        )
        .limit(1)
    ).first()
    return found is not None


def link_if_stored(conn: Connection, repository: str, digest: str) -> int | None:
    """Link a blob the registry already stores to the repository; its size, or None when
    it is not stored (checked in this transaction, so the garbage collector cannot take
    it away in between)."""
    size = blob_db.size(conn, digest)
    if size is None:
        return None
    blob_db.link(conn, repo_db.ensure(conn, repository), digest)
    return int(size)


@dataclass(frozen=True, slots=True)
class ProxiedRepository:
    id: int
    name: str
    last_used: float  # the latest pull, tag check, manifest or blob cached


def _under(prefix: str) -> object:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return repositories.c.name.like(f"{escaped}/%", escape="\\")


def proxied_repositories(conn: Connection, prefixes: list[str]) -> list[ProxiedRepository]:
    """The repositories of the proxy namespaces, least recently used first."""
    if not prefixes:
        return []
    inside = or_(*[_under(p) for p in prefixes])  # type: ignore[arg-type]
    rows = conn.execute(
        select(repositories.c.id, repositories.c.name, repositories.c.created_at).where(inside)
    ).all()
    last = {row[0]: float(row[2]) for row in rows}
    ids = list(last)

    def bump(query: object) -> None:
        for repository_id, when in conn.execute(query).all():  # type: ignore[call-overload]
            if when is not None and repository_id in last:
                last[repository_id] = max(last[repository_id], float(when))

    for column in (tags.c.pulled_at, tags.c.updated_at):
        bump(
            select(tags.c.repository_id, func.max(column))
            .where(tags.c.repository_id.in_(ids))
            .group_by(tags.c.repository_id)
        )
    bump(
        select(manifests.c.repository_id, func.max(manifests.c.created_at))
        .where(manifests.c.repository_id.in_(ids))
        .group_by(manifests.c.repository_id)
    )
    bump(
        select(repository_blobs.c.repository_id, func.max(repository_blobs.c.created_at))
        .where(repository_blobs.c.repository_id.in_(ids))
        .group_by(repository_blobs.c.repository_id)
    )
    found = [ProxiedRepository(row[0], row[1], last[row[0]]) for row in rows]
    return sorted(found, key=lambda r: (r.last_used, r.name))


def cache_bytes(conn: Connection, prefixes: list[str]) -> int:
    """Bytes the proxy namespaces hold (each namespace's distinct blobs and manifests)."""
    return sum(namespace_bytes(conn, prefix) for prefix in prefixes)


def remove_repository(
    conn: Connection, repository_id: int, not_used_since: float
) -> list[str] | None:
    """Delete a proxied repository's tags, manifests and blob links, and the repository;
    the digests of blobs it linked or referenced (which may now be garbage). None (nothing
    deleted) when an upload into it is in progress or it was used after
    ``not_used_since``."""
    if conn.execute(
        select(uploads.c.id).where(uploads.c.repository_id == repository_id).limit(1)
    ).first():
        return None
    for column in (tags.c.pulled_at, tags.c.updated_at):
        used = conn.execute(
            select(func.max(column)).where(tags.c.repository_id == repository_id)
        ).scalar()
        if used is not None and float(used) > not_used_since:
            return None
    manifest_ids = select(manifests.c.id).where(manifests.c.repository_id == repository_id)
    digests = set(
        conn.execute(
            select(repository_blobs.c.digest).where(
                repository_blobs.c.repository_id == repository_id
            )
        ).scalars()
    )
    digests |= set(
        conn.execute(
            select(manifest_references.c.digest).where(
                manifest_references.c.manifest_id.in_(manifest_ids),
                manifest_references.c.kind == "blob",
            )
        ).scalars()
    )
    conn.execute(delete(tags).where(tags.c.repository_id == repository_id))
    conn.execute(
        delete(manifest_references).where(manifest_references.c.manifest_id.in_(manifest_ids))
    )
    conn.execute(delete(manifests).where(manifests.c.repository_id == repository_id))
    conn.execute(delete(repository_blobs).where(repository_blobs.c.repository_id == repository_id))
    conn.execute(delete(repositories).where(repositories.c.id == repository_id))
    if not digests:
        return []
    stored = conn.execute(select(blobs.c.digest).where(blobs.c.digest.in_(sorted(digests))))
    return sorted(stored.scalars())
