"""Queries of the garbage collector. Every delete re-checks, in its own transaction, that
nothing references the row any more, so a push that commits first always wins.

With concurrent writers (PostgreSQL), each delete first locks the row it is about to
delete, then re-checks in a new statement: a push that relies on the row holds a lock on
it until it commits (it share-locks the links and child manifests it references, and
writes the manifest it tags), so the collector waits for it and its re-check then sees
the push's references. SQLite runs one writer at a time, where the locks are no-ops.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, Exists, and_, delete, exists, not_, select
from sqlalchemy.orm import aliased

from dockyard.db.schema import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
)

_referencing = aliased(manifests)


def _manifest_is_referenced() -> Exists:
    """A manifest in the same repository lists this one (an index keeps its children)."""
    return exists().where(
        manifest_references.c.digest == manifests.c.digest,
        manifest_references.c.kind == "manifest",
        manifest_references.c.manifest_id == _referencing.c.id,
        _referencing.c.repository_id == manifests.c.repository_id,
    )


def _subject_present() -> Exists:
    """The manifest's subject is in the repository (referrers live with their subject)."""
    return exists().where(
        _referencing.c.repository_id == manifests.c.repository_id,
        _referencing.c.digest == manifests.c.subject_digest,
    )


def _untagged_unreferenced(cutoff: float) -> ColumnElement[bool]:
    return and_(
        manifests.c.created_at < cutoff,
        not_(exists().where(tags.c.manifest_id == manifests.c.id)),
        not_(_manifest_is_referenced()),
        not_(and_(manifests.c.subject_digest.is_not(None), _subject_present())),
    )


def untagged_manifests(conn: Connection, cutoff: float) -> list[tuple[int, str, str, int]]:
    """(id, repository, digest, size) of manifests nothing keeps alive, older than cutoff."""
    rows = conn.execute(
        select(manifests.c.id, repositories.c.name, manifests.c.digest, manifests.c.size)
        .join(repositories, repositories.c.id == manifests.c.repository_id)
        .where(_untagged_unreferenced(cutoff))
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def delete_manifest_if_garbage(conn: Connection, manifest_id: int, cutoff: float) -> bool:
    locked = conn.execute(
        select(manifests.c.id).where(manifests.c.id == manifest_id).with_for_update()
    ).first()
    if locked is None:
        return False
    still = conn.execute(
        select(manifests.c.id).where(manifests.c.id == manifest_id, _untagged_unreferenced(cutoff))
    ).first()
    if still is None:
        return False
    conn.execute(
        delete(manifest_references).where(manifest_references.c.manifest_id == manifest_id)
    )
    conn.execute(delete(manifests).where(manifests.c.id == manifest_id))
    return True


def _link_is_garbage(cutoff: float) -> ColumnElement[bool]:
    return and_(
        repository_blobs.c.created_at < cutoff,
        not_(
            exists().where(
                manifest_references.c.digest == repository_blobs.c.digest,
                manifest_references.c.kind == "blob",
                manifest_references.c.manifest_id == manifests.c.id,
                manifests.c.repository_id == repository_blobs.c.repository_id,
            )
        ),
    )


def garbage_links(conn: Connection, cutoff: float) -> list[tuple[int, str]]:
    """(repository id, digest) of blob links no manifest of their repository uses."""
    rows = conn.execute(
        select(repository_blobs.c.repository_id, repository_blobs.c.digest).where(
            _link_is_garbage(cutoff)
        )
    )
    return [(r[0], r[1]) for r in rows]


def delete_link_if_garbage(
    conn: Connection, repository_id: int, digest: str, cutoff: float
) -> bool:
    locked = conn.execute(
        select(repository_blobs.c.digest)
        .where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest == digest,
        )
        .with_for_update()
    ).first()
    if locked is None:
        return False
    result = conn.execute(
        delete(repository_blobs).where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest == digest,
            _link_is_garbage(cutoff),
        )
    )
    return result.rowcount > 0


def _blob_is_garbage(cutoff: float) -> ColumnElement[bool]:
    return and_(
        blobs.c.created_at < cutoff,
        not_(exists().where(repository_blobs.c.digest == blobs.c.digest)),
        not_(
            exists().where(
                manifest_references.c.digest == blobs.c.digest,
                manifest_references.c.kind == "blob",
            )
        ),
    )


def garbage_blobs(conn: Connection, cutoff: float) -> list[tuple[str, int]]:
    rows = conn.execute(select(blobs.c.digest, blobs.c.size).where(_blob_is_garbage(cutoff)))
    return [(r[0], r[1]) for r in rows]


def delete_blob_if_garbage(conn: Connection, digest: str, cutoff: float) -> bool:
    locked = conn.execute(
        select(blobs.c.digest).where(blobs.c.digest == digest).with_for_update()
    ).first()
    if locked is None:
        return False
    result = conn.execute(delete(blobs).where(blobs.c.digest == digest, _blob_is_garbage(cutoff)))
    return result.rowcount > 0


def blob_recorded(conn: Connection, digest: str) -> bool:
    return conn.execute(select(blobs.c.digest).where(blobs.c.digest == digest)).first() is not None
