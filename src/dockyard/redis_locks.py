"""Named locks shared by every node through Redis, with leases (the ``Locks`` protocol of
``dockyard.storage.locks``).

A lock is a key set with ``SET NX PX`` to a random token. While it is held, a background
thread renews its lease (``lease_seconds``, renewed every third of it), so an upload of a
large layer may hold a lock for as long as it takes; a node that dies (kill -9, power
loss) stops renewing, and the lock is free again when the lease runs out. Release and
renewal go through Lua scripts that act only while the key still holds this holder's
token, so a holder whose lease ran out can never release or extend another's lock.

Waiting is polling with exponential backoff (a few milliseconds up to ``max_wait_step``),
cut short when the holder releases: a release pushes to the lock's wake-up list, which
waiters block on (BLPOP) instead of sleeping.

When Redis does not answer, ``acquire`` and ``try_acquire`` raise ``Unavailable`` (503):
a lock that cannot be taken safely is not taken.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from dockyard.oci.errors import Unavailable
from dockyard.redis_support import RedisLink
from dockyard.storage.locks import FileLocks, Locks

if TYPE_CHECKING:
    from dockyard.config import Settings

log = logging.getLogger("dockyard.redis")

LEASE_SECONDS = 30.0

# KEYS[1]: lock, KEYS[2]: its wake-up list; ARGV[1]: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('DEL', KEYS[2])
    redis.call('RPUSH', KEYS[2], '1')
    redis.call('PEXPIRE', KEYS[2], 10000)
    return 1
end
return 0
"""

# KEYS[1]: lock; ARGV[1]: token, ARGV[2]: lease in milliseconds
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LockTimeout(TimeoutError):
    """``acquire(name, timeout=...)`` gave up waiting."""


class RedisLock:
    """One held lock; ``release()`` frees it (once; later calls do nothing)."""

    def __init__(self, locks: RedisLocks, name: str, key: str, token: str) -> None:
        self.name = name
        self.key = key
        self.token = token
        self._locks = locks
        self.lost = False  # the lease ran out (or Redis lost the key) while held
        self.released = False

    def release(self) -> None:
        self._locks._release(self)

    def __enter__(self) -> RedisLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RedisLocks:
    """Locks with leases in Redis, for every process of every node (see the module)."""

    def __init__(
        self,
        link: RedisLink,
        namespace: str = "lock",
        lease_seconds: float = LEASE_SECONDS,
        max_wait_step: float = 0.2,
    ) -> None:
        if lease_seconds < 0.3:
            raise ValueError("lease_seconds must be at least 0.3")
        self._link = link
        self._client = link.client
        self._namespace = namespace
        self.lease_seconds = lease_seconds
        self._max_step = min(max_wait_step, link_timeout(link) / 2)
        self._release_script = self._client.register_script(_RELEASE)
        self._renew_script = self._client.register_script(_RENEW)
        self._held: dict[str, RedisLock] = {}  # by token
        self._guard = threading.Condition()
        self._renewer: threading.Thread | None = None

    def _keys(self, name: str) -> tuple[str, str]:
        return (
            self._link.key(self._namespace, name),
            self._link.key(self._namespace + "-wake", name),
        )

    def try_acquire(self, name: str) -> RedisLock | None:
        key, _ = self._keys(name)
        token = secrets.token_hex(16)
        try:
            taken = self._client.set(key, token, nx=True, px=int(self.lease_seconds * 1000))
        except redis.RedisError as exc:
            raise Unavailable(f"shared locks unavailable (redis: {str(exc)[:200]})") from None
        if not taken:
            return None
        held = RedisLock(self, name, key, token)
        with self._guard:
            self._held[token] = held
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="redis-lock-leases", daemon=True
                )
                self._renewer.start()
            self._guard.notify_all()
        return held

    def acquire(self, name: str, timeout: float | None = None) -> RedisLock:
        """Wait until ``name`` is free (at most ``timeout`` seconds, then ``LockTimeout``)."""
        _, wake = self._keys(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0.002
        while True:
            held = self.try_acquire(name)
            if held is not None:
                return held
            pause = step * (0.5 + random.random())  # jitter: waiters do not move in step
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(f"lock {name!r} still held after {timeout}s")
                pause = min(pause, left)
            try:
                # sleeps like time.sleep(pause), but wakes when the holder releases
                self._client.blpop([wake], timeout=max(pause, 0.001))
            except redis.RedisError as exc:
                raise Unavailable(f"shared locks unavailable (redis: {str(exc)[:200]})") from None
            step = min(step * 2, self._max_step)

    def _release(self, held: RedisLock) -> None:
        with self._guard:
            if held.released:
                return
            held.released = True
            self._held.pop(held.token, None)
        try:
            freed = self._release_script(keys=list(self._keys(held.name)), args=[held.token])
        except redis.RedisError as exc:
            # not renewed any more: it is free when its lease runs out
            log.warning(
                "releasing lock %s failed (%s): free after its lease", held.name, str(exc)[:200]
            )
            return
        if not freed and not held.lost:
            held.lost = True
            log.error("lock %s had expired before it was released", held.name)

    def _renew_loop(self) -> None:
        period = self.lease_seconds / 3
        while True:
            with self._guard:
                if not self._held:
                    self._renewer = None
                    return
                self._guard.wait(period)
                held = list(self._held.values())
            lease_ms = int(self.lease_seconds * 1000)
            for lock in held:
                if lock.released:
                    continue
                try:
                    renewed = self._renew_script(keys=[lock.key], args=[lock.token, lease_ms])
                except Exception as exc:  # this thread must outlive any failure
                    log.warning("renewing lock %s failed: %s", lock.name, str(exc)[:200])
                    continue
                if not renewed and not lock.released:
                    lock.lost = True
                    with self._guard:
                        self._held.pop(lock.token, None)
                    log.error("lock %s was lost: its lease ran out while held", lock.name)

    def held(self) -> list[str]:
        """Names of the locks this object holds now."""
        with self._guard:
            return sorted(lock.name for lock in self._held.values())


def link_timeout(link: RedisLink) -> float:
    """The command timeout of ``link``'s client (a blocking wait must stay below it)."""
    timeout = link.client.connection_pool.connection_kwargs.get("socket_timeout")
    return float(timeout) if timeout else 1.0


def make_locks(settings: Settings, link: RedisLink | None = None) -> Locks:
    """The named locks for blob stores without a local filesystem: Redis when
    ``redis_url`` is set (several nodes), else flock files under the data directory (one
    machine). Pass the process's ``RedisLink`` (``Context.redis``) to share its connections."""
    if link is None and settings.redis_url:
        link = RedisLink(settings.redis_url, settings.redis_prefix)
    if link is not None:
        return RedisLocks(link)
    return FileLocks(Path(settings.data_dir).resolve() / "locks")
