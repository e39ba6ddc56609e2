"""Queries on tags."""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, select

from dockyard.db.dialect import upsert
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
