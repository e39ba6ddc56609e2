"""Queries on manifests, their references and referrers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from dockyard.db.dialect import insert_ignore
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


def by_digest(conn: Connection, repository_id: int, digest: str) -> StoredManifest | None:
    row = conn.execute(
        select(*_COLUMNS).where(
            manifests.c.repository_id == repository_id, manifests.c.digest == digest
        )
    ).first()
    return StoredManifest(*row) if row else None


def by_tag(conn: Connection, repository_id: int, tag: str) -> StoredManifest | None:
    row = conn.execute(
        select(*_COLUMNS)
        .join(tags, tags.c.manifest_id == manifests.c.id)
        .where(tags.c.repository_id == repository_id, tags.c.name == tag)
    ).first()
    return StoredManifest(*row) if row else None


def existing_digests(conn: Connection, repository_id: int, digests: list[str]) -> set[str]:
    if not digests:
        return set()
    rows = conn.execute(
        select(manifests.c.digest).where(
            manifests.c.repository_id == repository_id, manifests.c.digest.in_(digests)
        )
    )
    return set(rows.scalars())


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
    """Store the manifest (idempotent on digest) with its references; return its id."""
    existing = by_digest(conn, repository_id, digest)
    if existing is not None:  # pushed again: young again (the GC grace period counts from now)
        conn.execute(
            update(manifests).where(manifests.c.id == existing.id).values(created_at=time.time())
        )
        return existing.id
    result = conn.execute(
        insert(manifests).values(
            repository_id=repository_id,
            digest=digest,
            media_type=media_type,
            artifact_type=artifact_type,
            subject_digest=subject_digest,
            annotations=json.dumps(annotations) if annotations else None,
            size=len(content),
            content=content,
            created_at=time.time(),
        )
    )
    assert result.inserted_primary_key is not None
    manifest_id = int(result.inserted_primary_key[0])
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
