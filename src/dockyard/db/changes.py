"""Knowing cheaply whether the metadata changed, so hot reads can be cached safely.

On SQLite, every process sharing the database also shares a small "generation" file beside
it (``<database>.generation``), mapped into memory. Every write transaction, in any process,
stores a new random value there right after it commits, and every process stores one when
it starts (so a worker that died between a commit and its store cannot leave others with a
stale view). Reading the generation is one memory read, which is what lets a cached
manifest GET cost microseconds.

Other databases have no shared file: ``token()`` returns None and callers must not cache.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Protocol

from sqlalchemy.engine import make_url

_SIZE = 8


class Generation(Protocol):
    """What a read cache asks: has anything changed since? ``ChangeWatcher`` (SQLite, one
    machine) and ``dockyard.redis_support.RedisChangeWatcher`` (any database, many nodes)."""

    def token(self) -> int | None:
        """The current generation, or None when changes cannot be watched (do not cache)."""

    def bump(self) -> None:
        """Announce a committed change to every process (call after each commit)."""

    def close(self) -> None: ...


class ChangeWatcher:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._map: mmap.mmap | None = None
        database = parsed.database
        if parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
            path = f"{database}.generation"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)
                self._map = mmap.mmap(fd, _SIZE)
            finally:
                os.close(fd)

    def token(self) -> int | None:
        """The current generation, or None when changes cannot be watched."""
        if self._map is None:
            return None
        return int(struct.unpack_from("<Q", self._map, 0)[0])

    def bump(self) -> None:
        """Announce a committed change to every process (call after each commit)."""
        if self._map is not None:
            self._map[0:_SIZE] = os.urandom(_SIZE)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
