"""What every registry service shares: the database, the blob store, the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection

from dockyard.db.changes import ChangeWatcher, Generation
from dockyard.db.engine import Database
from dockyard.redis_support import RedisChangeWatcher, RedisLink
from dockyard.registry.cache import ReadCache
from dockyard.storage.base import BlobStore

T = TypeVar("T")


@dataclass
class Limits:
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_page_size: int = 10_000


@dataclass
class Context:
    db: Database
    store: BlobStore
    limits: Limits = field(default_factory=Limits)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=16, thread_name_prefix="db")
    )
    # Redis, when several nodes share the database: the cache generation lives there
    redis: RedisLink | None = None
    # blob GETs redirect to a URL from the store valid this long, when it has one; 0: never
    redirect_seconds: int = 0
    cache: ReadCache = field(init=False)

    def __post_init__(self) -> None:
        self.changes: Generation = (
            ChangeWatcher(self.db.url) if self.redis is None else RedisChangeWatcher(self.redis)
        )
        self.changes.bump()  # whatever a process that died before announcing did, is seen
        self.cache = ReadCache(self.changes)

    async def cached_read(self, key: object, fn: Callable[[Connection], T]) -> T:
        """``read`` through the per-process cache (for values that are None when absent,
        which are not cached)."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        token = self.cache.token()
        value = await self.read(fn)
        if value is not None:
            self.cache.put(key, value, token)
        return value

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction.

        SQLite reads take microseconds and never wait for writers (WAL), so they run inline
        on the event loop; other databases are reached over the network, from a thread.
        """
        if self.db.is_sqlite:
            return self._read_sync(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._read_sync, fn)

    def _read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.db.reader.connect() as conn:
            return fn(conn)

    async def write(self, fn: Callable[[Connection], T], announce: bool = True) -> T:
        """Run ``fn`` in one write transaction, from a thread (writers may queue).

        ``announce=False`` is for writes no cached read depends on (pull times): other
        processes then keep their caches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._write_sync, fn, announce)

    def _write_sync(self, fn: Callable[[Connection], T], announce: bool = True) -> T:
        try:
            return self.db.write(fn)  # run again if PostgreSQL aborts it for a deadlock
        finally:
            if announce:
                self.changes.bump()  # after the commit (or rollback: a harmless extra bump)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run blocking I/O (fsync, rename, re-hashing) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn)


async def kept_or_undone(pending: Awaitable[T], undo: Callable[[T], object]) -> T:
    """Wait for ``pending`` (a lock or an open file being taken on a thread); if the
    waiting request is cancelled meanwhile, ``undo`` what it yields as soon as it comes,
    instead of leaving it held for good."""
    waiting = asyncio.ensure_future(pending)
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:

        def settle(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        waiting.add_done_callback(settle)
        raise
