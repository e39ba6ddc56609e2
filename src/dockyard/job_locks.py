"""One run of each background job at a time, across every ``dockyard worker`` of every node.

Which lock depends on what the workers share:

- Redis (``redis_url``): a lock with a lease (``dockyard.redis_locks``); a worker killed
  mid-run frees it when the lease runs out.
- PostgreSQL without Redis: a session-level advisory lock on a connection held for the run;
  the server frees it when that connection closes, a killed worker's included.
- Otherwise (SQLite: every worker on one machine): flock on a file in the data directory.

A scheduled run finds the job running elsewhere and skips (that run serves the schedule);
``dockyard worker --once`` waits for it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from dockyard.db.engine import Database
from dockyard.redis_locks import RedisLocks
from dockyard.redis_support import RedisLink
from dockyard.storage.base import BlobLock
from dockyard.storage.locks import FileLocks, Locks


def advisory_key(name: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for job ``name``."""
    digest = hashlib.sha256(f"dockyard-job:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _HeldAdvisory:
    def __init__(self, conn: Connection, key: int) -> None:
        self._conn: Connection | None = conn
        self._key = key

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        finally:
            # the unlock failed only if the connection did: closing frees the lock then
            conn.close()


class AdvisoryLocks:
    """PostgreSQL session-level advisory locks, one connection held per lock."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _take(self, name: str, wait: bool) -> _HeldAdvisory | None:
        conn = self._db.writer.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            key = advisory_key(name)
            function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
            taken = conn.execute(text(f"SELECT {function}(:key)"), {"key": key}).scalar()
        except BaseException:
            conn.close()
            raise
        if not wait and not taken:
            conn.close()
            return None
        return _HeldAdvisory(conn, key)

    def acquire(self, name: str) -> BlobLock:
        held = self._take(name, wait=True)
        assert held is not None
        return held

    def try_acquire(self, name: str) -> BlobLock | None:
        return self._take(name, wait=False)


def job_locks(db: Database, data_dir: Path, link: RedisLink | None) -> Locks:
    """The locks background jobs take, for what these workers share (see the module)."""
    if link is not None:
        return RedisLocks(link, namespace="job")
    if make_url(db.url).get_backend_name() == "postgresql":
        return AdvisoryLocks(db)
    return FileLocks(data_dir.resolve() / "job-locks")


class Jobs:
    """``async with jobs.alone("gc", wait=False) as mine:`` runs the body's job only if
    ``mine`` (this worker holds the job's lock until the block ends)."""

    def __init__(self, locks: Locks) -> None:
        self.locks = locks

    @contextlib.asynccontextmanager
    async def alone(self, job: str, wait: bool) -> AsyncIterator[bool]:
        name = f"job-{job}"
        taking = asyncio.ensure_future(
            asyncio.to_thread(self.locks.acquire if wait else self.locks.try_acquire, name)
        )
        try:
            held = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # cancelled while waiting: release the lock if the thread still gets it
            def release(done: asyncio.Future[BlobLock | None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    lock = done.result()
                    if lock is not None:
                        lock.release()

            taking.add_done_callback(release)
            raise
        if held is None:
            yield False
            return
        try:
            yield True
        finally:
            await asyncio.to_thread(held.release)
