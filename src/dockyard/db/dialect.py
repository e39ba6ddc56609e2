"""The statements whose SQL differs between SQLite and PostgreSQL: insert-or-ignore and
insert-or-update.

Both databases run the same queries, but not with the same concurrency: SQLite runs one
write transaction at a time (``BEGIN IMMEDIATE``), PostgreSQL runs them side by side (READ
COMMITTED). Queries that must stay right with concurrent writers therefore never "look,
then insert" (they insert ignoring the conflict, then look), and lock the rows they rely
on with ``FOR UPDATE`` / ``FOR SHARE`` (which SQLite, already serialised, ignores).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, text
from sqlalchemy.dialects import postgresql, sqlite


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(
    conn: Connection, table: Table, values: dict[str, Any], conflict: list[str]
) -> int:
    """Insert a row unless one with the same ``conflict`` key exists; rows inserted.

    Counted from RETURNING: with psycopg, ``rowcount`` of such an insert is -1."""
    stmt = (
        _insert(conn, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict)
        .returning(table.c[conflict[0]])
    )
    return len(conn.execute(stmt).all())


def insert_ignore_returning(
    conn: Connection, table: Table, values: dict[str, Any], conflict: list[str], column: str
) -> Any:
    """Insert a row unless one with the same ``conflict`` key exists; the new row's
    ``column``, or None when nothing was inserted."""
    stmt = (
        _insert(conn, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict)
        .returning(table.c[column])
    )
    return conn.execute(stmt).scalar()


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


def take_turns(conn: Connection, topic: str) -> None:
    """Until the transaction ends, make every other transaction calling this with the
    same ``topic`` wait: for checks over many rows ("is this the last administrator?")
    that no row lock covers. A PostgreSQL advisory lock; SQLite writers take turns anyway.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:topic, 0))"),
            {"topic": f"dockyard:{topic}"},
        )
