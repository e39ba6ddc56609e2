"""Receiving a request body straight from its socket into a file, hashing behind it.

A Python HTTP server hands the application a body as a series of ``bytes`` objects: the
kernel copies every byte out of the socket, the server copies it again into its chunks,
and the application then hashes and writes each one, all on one core. Here the kernel
moves the bytes itself with ``splice(2)`` (socket -> pipe -> file, no copy through user
space), while a second thread hashes what has landed so far through ``mmap`` of the same
file (no copy either). The two run on two cores; the digest is of the bytes as stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PIPE_BYTES = 1024 * 1024  # each splice moves up to this much
HASH_WINDOW = 8 * 1024 * 1024  # and the hashing thread maps up to this much at a time
_F_SETPIPE_SZ = 1031
_hashing = ThreadPoolExecutor(max_workers=32, thread_name_prefix="hash-behind")


class BodyTruncated(Exception):
    """The client closed the connection before sending the whole body."""


class BodyTimeout(Exception):
    """The client sent nothing for too long."""


class _Progress:
    """How far the file has been written, for the hashing thread to follow."""

    def __init__(self, start: int) -> None:
        self.end = start
        self.finished = False
        self._cond = threading.Condition()

    def advance(self, end: int) -> None:
        with self._cond:
            self.end = end
            self._cond.notify()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify()

    def wait_past(self, pos: int) -> tuple[int, bool]:
        with self._cond:
            while self.end <= pos and not self.finished:
                self._cond.wait()
            return self.end, self.finished


def _hash_behind(read_fd: int, start: int, progress: _Progress, hasher: Any) -> int:
    """Hash the file from ``start`` as far as it is written, until the writing finishes."""
    pos = start
    page = mmap.ALLOCATIONGRANULARITY
    while True:
        end, finished = progress.wait_past(pos)
        while pos < end:
            upto = min(end, pos + HASH_WINDOW)
            base = pos - pos % page
            with (
                mmap.mmap(read_fd, upto - base, mmap.MAP_SHARED, mmap.PROT_READ, offset=base) as mm,
                memoryview(mm) as whole,
                whole[pos - base : upto - base] as part,
            ):
                hasher.update(part)
            pos = upto
        if finished and pos >= progress.end:
            return pos


def _wait_readable(fd: int, timeout: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        raise BodyTimeout(f"no body bytes for {timeout:.0f} s")


def receive(
    sock_fd: int,
    write_fd: int,
    read_fd: int,
    offset: int,
    length: int,
    hasher: Any,
    timeout: float,
    grew: Callable[[int], None],
) -> None:
    """Move ``length`` bytes from the (non-blocking) socket into the file at ``offset``
    and feed them to ``hasher``; ``grew(n)`` is told of every ``n`` bytes stored. On any
    failure some bytes may have been stored and hashed: the caller rolls both back."""
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    progress = _Progress(offset)
    hashed = None
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more system calls
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, PIPE_BYTES)
        if length:
            hashed = _hashing.submit(_hash_behind, read_fd, offset, progress, hasher)
        pos, left = offset, length
        while left:
            try:
                moved = os.splice(sock_fd, pipe_w, min(left, PIPE_BYTES))
            except BlockingIOError:
                _wait_readable(sock_fd, timeout)
                continue
            if moved == 0:
                raise BodyTruncated(f"the body ended after {length - left} of {length} bytes")
            pending = moved
            while pending:
                stored = os.splice(pipe_r, write_fd, pending, offset_dst=pos)
                pos += stored
                pending -= stored
            left -= moved
            grew(moved)
            progress.advance(pos)
    finally:
        progress.finish()
        os.close(pipe_r)
        os.close(pipe_w)
        if hashed is not None:
            hashed.result()
