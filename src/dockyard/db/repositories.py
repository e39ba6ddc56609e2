"""Queries on repositories."""

from __future__ import annotations

import time

from sqlalchemy import Connection, exists, select

from dockyard.db.dialect import insert_ignore
from dockyard.db.schema import manifests, repositories


def get_id(conn: Connection, name: str) -> int | None:
    return conn.execute(select(repositories.c.id).where(repositories.c.name == name)).scalar()


def ensure(conn: Connection, name: str) -> int:
    """The repository's id, creating the repository if needed (inside a write transaction).

    Safe when concurrent transactions create the same repository: the insert ignores the
    conflict (on PostgreSQL it waits for the other transaction and, once that commits,
    the lookup after it sees the row)."""
    repository_id = get_id(conn, name)
    if repository_id is not None:
        return repository_id
    insert_ignore(conn, repositories, {"name": name, "created_at": time.time()}, ["name"])
    repository_id = get_id(conn, name)
    assert repository_id is not None
    return repository_id


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
