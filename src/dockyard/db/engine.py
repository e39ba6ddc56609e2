"""Engines for the metadata database, tuned per dialect, and migrations."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from dockyard.config import Settings

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x646F636B79617264 >> 1  # "dockyard", as a PostgreSQL advisory lock key


_WRITE_ATTEMPTS = 5
# SQLSTATEs of a transaction PostgreSQL rolled back only because of concurrent ones
_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def _retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE


def normalize_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``, as many hosting services print it) means
    the psycopg 3 driver, the one Dockyard ships; an explicit ``postgresql+driver://``
    is kept as given."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


@dataclass(frozen=True)
class PoolOptions:
    """Connection pool of a networked database (each server process has its own pool)."""

    size: int = 10
    max_overflow: int = 20
    pre_ping: bool = True
    recycle_seconds: int = 1800
    timeout_seconds: float = 30.0


class Database:
    """A reader engine and a writer engine over the same database.

    On SQLite, write transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers
    (threads or worker processes) queue on the busy timeout instead of failing to upgrade a
    read lock; reads use plain deferred transactions and never block writers (WAL).
    """

    def __init__(self, url: str, pool: PoolOptions | None = None) -> None:
        url = normalize_url(url)
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.reader = self._sqlite_engine(url, immediate=False)
            self.writer = self._sqlite_engine(url, immediate=True)
        else:
            pool = pool or PoolOptions()
            self.reader = self.writer = create_engine(
                url,
                pool_size=pool.size,
                max_overflow=pool.max_overflow,
                pool_pre_ping=pool.pre_ping,
                pool_recycle=pool.recycle_seconds if pool.recycle_seconds > 0 else -1,
                pool_timeout=pool.timeout_seconds,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(
            settings.resolved_database_url,
            PoolOptions(
                size=settings.database_pool_size,
                max_overflow=settings.database_max_overflow,
                pre_ping=settings.database_pool_pre_ping,
                recycle_seconds=settings.database_pool_recycle_seconds,
                timeout_seconds=settings.database_pool_timeout_seconds,
            ),
        )

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=8,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction and commit.

        On PostgreSQL a transaction the server aborts to break a deadlock (or a
        serialization failure) is run again, a few times, after a short random pause:
        ``fn`` must only touch the database. SQLite writers never deadlock (one at a time).
        """
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self.writer.begin() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if attempt == _WRITE_ATTEMPTS - 1 or not _retryable(exc):
                    raise
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def upgrade(self) -> None:
        """Apply every migration not yet applied (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                # nodes starting together: one migrates, the others wait, then find it done
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.reader.dispose()
        if self.writer is not self.reader:
            self.writer.dispose()
