"""Queries on manifests, their references and referrers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from dockyard.db.dialect import insert_ignore, insert_ignore_returning
from dockyard.db.schema import manifest_references, manifests, tags


@dataclass(frozen=True, slots=True)
class StoredManifest:
    id: int
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    annotations: dict[str, str] | None


_COLUMNS = (manifests.c.id, manifests.c.digest, manifests.c.media_type, manifests.c.content)


def by_digest(
    conn: Connection, repository_id: int, digest: str, *, lock: bool = False
) -> StoredManifest | None:
    """The manifest; ``lock``: and hold its row until the transaction ends, so that no
    concurrent transaction changes or deletes it meanwhile."""
    query = select(*_COLUMNS).where(
        manifests.c.repository_id == repository_id, manifests.c.digest == digest
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return StoredManifest(*row) if row else None


def by_tag(conn: Connection, repository_id: int, tag: str) -> StoredManifest | None:
    row = conn.execute(
        select(*_COLUMNS)
        .join(tags, tags.c.manifest_id == manifests.c.id)
        .where(tags.c.repository_id == repository_id, tags.c.name == tag)
    ).first()
    return StoredManifest(*row) if row else None


def existing_digests(
    conn: Connection, repository_id: int, digests: list[str], *, lock: bool = False
) -> set[str]:
    """Which of ``digests`` are manifests of the repository. ``lock``: their rows stay
    share-locked until the transaction ends, so an index being pushed keeps its children
    (the garbage collector waits for it, then sees the index)."""
    if not digests:
        return set()
    query = (
        select(manifests.c.digest)
        .where(manifests.c.repository_id == repository_id, manifests.c.digest.in_(digests))
        .order_by(manifests.c.digest)
    )
    if lock:
        query = query.with_for_update(read=True)
    return set(conn.execute(query).scalars())


def store(
    conn: Connection,
    repository_id: int,
    *,
    digest: str,
    media_type: str,
    artifact_type: str | None,
    subject_digest: str | None,
    annotations: dict[str, Any] | None,
    content: bytes,
    blob_digests: list[str],
    manifest_digests: list[str],
) -> int:
    """Store the manifest (idempotent on digest) with its references; return its id.

    The manifest's row is written either way (inserted, or its age refreshed: pushed
    again, it is young again for the GC grace period), so it stays locked until the
    transaction ends: a concurrent delete or collection of it waits, then sees the tags
    this transaction adds. Two transactions storing the same new manifest at once: one
    inserts, the other waits for it and then refreshes the row it committed."""
    while True:
        existing = conn.execute(
            update(manifests)
            .where(manifests.c.repository_id == repository_id, manifests.c.digest == digest)
            .values(created_at=time.time())
            .returning(manifests.c.id)
        ).scalar()
        if existing is not None:
            return int(existing)
        inserted = insert_ignore_returning(
            conn,
            manifests,
            {
                "repository_id": repository_id,
                "digest": digest,
                "media_type": media_type,
                "artifact_type": artifact_type,
                "subject_digest": subject_digest,
                "annotations": json.dumps(annotations) if annotations else None,
                "size": len(content),
                "content": content,
                "created_at": time.time(),
            },
            ["repository_id", "digest"],
            "id",
        )
        if inserted is not None:
            break
    manifest_id = int(inserted)
    references = [(d, "blob") for d in dict.fromkeys(blob_digests)]
    references += [(d, "manifest") for d in dict.fromkeys(manifest_digests)]
    for ref_digest, kind in references:
        insert_ignore(
            conn,
            manifest_references,
            {"manifest_id": manifest_id, "digest": ref_digest, "kind": kind},
            ["manifest_id", "digest", "kind"],
        )
    return manifest_id


def tags_of(conn: Connection, manifest_id: int) -> list[str]:
    return list(
        conn.execute(select(tags.c.name).where(tags.c.manifest_id == manifest_id)).scalars()
    )


def remove(conn: Connection, manifest_id: int) -> None:
    conn.execute(delete(tags).where(tags.c.manifest_id == manifest_id))
    conn.execute(
        delete(manifest_references).where(manifest_references.c.manifest_id == manifest_id)
    )
    conn.execute(delete(manifests).where(manifests.c.id == manifest_id))


def referrers(
    conn: Connection,
    repository_id: int,
    subject_digest: str,
    artifact_type: str | None,
    last: str | None,
    limit: int,
) -> list[Referrer]:
    """Manifests whose subject is ``subject_digest``, ordered by digest after ``last``."""
    query = (
        select(
            manifests.c.digest,
            manifests.c.media_type,
            manifests.c.artifact_type,
            manifests.c.size,
            manifests.c.annotations,
        )
        .where(
            manifests.c.repository_id == repository_id,
            manifests.c.subject_digest == subject_digest,
        )
        .order_by(manifests.c.digest)
        .limit(limit)
    )
    if artifact_type is not None:
        query = query.where(manifests.c.artifact_type == artifact_type)
    if last:
        query = query.where(manifests.c.digest > last)
    return [
        Referrer(
            digest=row.digest,
            media_type=row.media_type,
            artifact_type=row.artifact_type,
            size=row.size,
            annotations=json.loads(row.annotations) if row.annotations else None,
        )
        for row in conn.execute(query)
    ]
