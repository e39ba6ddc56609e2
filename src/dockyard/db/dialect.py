"""The two statements whose SQL differs between SQLite and PostgreSQL: insert-or-ignore
and insert-or-update."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(
    conn: Connection, table: Table, values: dict[str, Any], conflict: list[str]
) -> int:
    """Insert a row unless one with the same ``conflict`` key exists; rows inserted."""
    stmt = _insert(conn, table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    return int(conn.execute(stmt).rowcount)


def upsert(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    conflict: list[str],
    update: list[str],
) -> None:
    """Insert a row, or update ``update`` columns of the row with the same key."""
    stmt = _insert(conn, table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=conflict, set_={name: stmt.excluded[name] for name in update}
    )
    conn.execute(stmt)
