"""Knowing cheaply whether the database changed, so hot reads can be cached safely."""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url


class ChangeWatcher:
    """``token()`` returns a value that differs after any commit, by any process.

    On SQLite this is ``PRAGMA data_version`` on a connection of its own (a few
    microseconds; it changes whenever another connection commits). Other databases have no
    such cheap signal here, so ``token()`` returns None and callers must not cache.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._conn = sqlite3.connect(parsed.database, check_same_thread=False)
            self._cursor = self._conn.cursor()

    def token(self) -> int | None:
        """Call from the event loop thread only (the connection is not shared)."""
        if self._cursor is None:
            return None
        self._cursor.execute("PRAGMA data_version")
        row = self._cursor.fetchone()
        return int(row[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
