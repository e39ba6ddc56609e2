"""Queries on blobs and their links to repositories."""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, select

from dockyard.db.dialect import upsert
from dockyard.db.schema import blobs, repository_blobs


def record(conn: Connection, digest: str, size: int) -> None:
    """Record that the blob is stored (idempotent; a blob stored again is young again, so
    the grace period of garbage collection protects it as it protects a new one)."""
    upsert(
        conn,
        blobs,
        {"digest": digest, "size": size, "created_at": time.time()},
        ["digest"],
        ["created_at"],
    )


def link(conn: Connection, repository_id: int, digest: str) -> None:
    """Make the blob servable from the repository (idempotent; refreshes its age)."""
    upsert(
        conn,
        repository_blobs,
        {"repository_id": repository_id, "digest": digest, "created_at": time.time()},
        ["repository_id", "digest"],
        ["created_at"],
    )


def unlink(conn: Connection, repository_id: int, digest: str) -> bool:
    result = conn.execute(
        delete(repository_blobs).where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest == digest,
        )
    )
    return result.rowcount > 0


def linked_size(
    conn: Connection, repository_id: int, digest: str, *, lock: bool = False
) -> int | None:
    """The blob's size when it is linked to the repository, else None. ``lock``: keep the
    link share-locked until the transaction ends (it cannot be collected meanwhile)."""
    query = (
        select(blobs.c.size)
        .join(repository_blobs, repository_blobs.c.digest == blobs.c.digest)
        .where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest == digest,
        )
    )
    if lock:
        query = query.with_for_update(read=True, of=repository_blobs)
    return conn.execute(query).scalar()


def linked_digests(
    conn: Connection, repository_id: int, digests: list[str], *, lock: bool = False
) -> set[str]:
    """Which of ``digests`` are linked to the repository. ``lock``: the links found stay
    share-locked until the transaction ends, so a manifest being stored keeps its blobs
    (the garbage collector waits for it, then sees the manifest's references)."""
    if not digests:
        return set()
    query = (
        select(repository_blobs.c.digest)
        .where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest.in_(digests),
        )
        .order_by(repository_blobs.c.digest)
    )
    if lock:
        query = query.with_for_update(read=True)
    return set(conn.execute(query).scalars())


def size(conn: Connection, digest: str) -> int | None:
    return conn.execute(select(blobs.c.size).where(blobs.c.digest == digest)).scalar()
