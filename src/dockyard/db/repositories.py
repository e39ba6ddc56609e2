"""Queries on repositories."""

from __future__ import annotations

import time

from sqlalchemy import Connection, exists, insert, select

from dockyard.db.schema import manifests, repositories


def get_id(conn: Connection, name: str) -> int | None:
    return conn.execute(select(repositories.c.id).where(repositories.c.name == name)).scalar()


def ensure(conn: Connection, name: str) -> int:
    """The repository's id, creating the repository if needed (inside a write transaction)."""
    repository_id = get_id(conn, name)
    if repository_id is not None:
        return repository_id
    result = conn.execute(insert(repositories).values(name=name, created_at=time.time()))
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def list_names(conn: Connection, last: str | None, limit: int | None) -> list[str]:
    """Names of repositories holding at least one manifest, in lexical order after ``last``."""
    query = (
        select(repositories.c.name)
        .where(exists().where(manifests.c.repository_id == repositories.c.id))
        .order_by(repositories.c.name)
    )
    if last:
        query = query.where(repositories.c.name > last)
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query).scalars())
