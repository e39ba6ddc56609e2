"""Named locks shared by every process (and, with Redis, every node) of one registry.

Blob stores use them to keep a publish and a garbage collector's check-and-delete of the
same digest apart, and to give one upload a single writer at a time. The filesystem store
can use flock on its own files; stores without a local filesystem (S3) take a ``Locks``.

``FileLocks`` (flock on files in one directory) is enough for one machine;
``dockyard.redis_locks.RedisLocks`` is for several nodes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Protocol

from dockyard.storage.base import BlobLock

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class Locks(Protocol):
    def acquire(self, name: str) -> BlobLock:
        """Wait until ``name`` is free, then hold it until ``release()``."""

    def try_acquire(self, name: str) -> BlobLock | None:
        """Hold ``name`` if it is free right now, else return None without waiting."""


class _HeldFile:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1


class FileLocks:
    """flock(2) on ``<directory>/<name>.lock``: every process on this machine sees them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not _SAFE_NAME.fullmatch(name) or name.startswith("."):
            name = hashlib.sha256(name.encode()).hexdigest()
        return self.directory / f"{name}.lock"

    def _open(self, name: str) -> int:
        return os.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, name: str) -> _HeldFile:
        fd = self._open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return _HeldFile(fd)

    def try_acquire(self, name: str) -> _HeldFile | None:
        fd = self._open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return _HeldFile(fd)
