"""Queries on tags."""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, select

from dockyard.db.dialect import insert_ignore, upsert
from dockyard.db.schema import tags


def set_tag(conn: Connection, repository_id: int, name: str, manifest_id: int) -> None:
    """Point the tag at the manifest (one row; moving a tag is an update)."""
    upsert(
        conn,
        tags,
        {
            "repository_id": repository_id,
            "name": name,
            "manifest_id": manifest_id,
            "updated_at": time.time(),
        },
        ["repository_id", "name"],
        ["manifest_id", "updated_at"],
    )


def claim(conn: Connection, repository_id: int, name: str, manifest_id: int) -> int | None:
    """Create the tag pointing at the manifest and return None; or, when the tag exists,
    lock its row until the transaction ends and return the manifest it points at, so the
    caller decides whether it may move (``set_tag``) with no concurrent move in between.
    """
    current = select(tags.c.manifest_id).where(
        tags.c.repository_id == repository_id, tags.c.name == name
    )
    while True:
        pointed = conn.execute(current.with_for_update()).scalar()
        if pointed is not None:
            return int(pointed)
        values = {
            "repository_id": repository_id,
            "name": name,
            "manifest_id": manifest_id,
            "updated_at": time.time(),
        }
        if insert_ignore(conn, tags, values, ["repository_id", "name"]):
            return None
        # created by a concurrent transaction since the lookup: lock that one


def remove(conn: Connection, repository_id: int, name: str) -> bool:
    result = conn.execute(
        delete(tags).where(tags.c.repository_id == repository_id, tags.c.name == name)
    )
    return result.rowcount > 0


def list_names(
    conn: Connection, repository_id: int, last: str | None, limit: int | None
) -> list[str]:
    query = select(tags.c.name).where(tags.c.repository_id == repository_id).order_by(tags.c.name)
    if last:
        query = query.where(tags.c.name > last)
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query).scalars())
