"""Redis for what several nodes share (docs/scale-out.md): one client per process with
short timeouts and a key prefix, and the shared generation that tells every process of
every node whether its read cache is still valid.

Rate limits shared through Redis are in ``dockyard.auth.redis_throttle``; locks (with
leases, for blob stores and background jobs) in ``dockyard.redis_locks``.

Redis is optional. When it is configured but unreachable, nothing is served stale: the
read cache is switched off (``token()`` answers None) until an announcement gets through
again, rate limits fall back to this process's own buckets, and locks refuse (503) rather
than pretend.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("dockyard.redis")

# A request must never hang on Redis: a command that takes longer than this fails, and the
# caller falls back (no caching, local rate limits) or refuses (locks).
TIMEOUT_SECONDS = 1.0
_MAX_KEY_PART = 200


class RedisLink:
    """The Redis client of one process (a thread-safe connection pool) and the registry's
    key prefix. Create it after forking: each server worker process opens its own."""

    def __init__(self, url: str, prefix: str = "dockyard", timeout: float = TIMEOUT_SECONDS):
        self.url = url
        self.prefix = prefix
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # one immediate retry on a fresh connection: a pooled connection is broken
            # after Redis restarted, the retry finds out whether Redis itself is gone
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )

    def key(self, *parts: str) -> str:
        """``<prefix>:<part>:<part>...``; long or odd parts (client-chosen names) are hashed."""
        safe = [
            part if len(part) <= _MAX_KEY_PART else hashlib.sha256(part.encode()).hexdigest()
            for part in parts
        ]
        return ":".join([self.prefix, *safe])

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()


def _new_generation() -> int:
    # random rather than INCR: a Redis restarted without persistence (or flushed) would
    # count again from 1 and repeat generations some process has cached under
    return secrets.randbits(63)


class RedisChangeWatcher:
    """The metadata generation in one Redis key, shared by every process of every node.

    ``bump`` (after each commit, by the process that wrote) stores a new random value;
    ``token`` is one GET. A process caches only while its last contact with Redis
    succeeded: after any failure (a GET or an announcement that did not get through) it
    answers None, so nothing is cached or served from the cache, and a background thread
    retries until it has stored a new generation, which also announces the writes this
    process could not announce and drops every process's older entries.
    """

    def __init__(self, link: RedisLink, retry_seconds: float = 1.0) -> None:
        self._client = link.client
        self._key = link.key("generation")
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._down = False
        self._failures = 0
        self._retrying: threading.Thread | None = None
        self._closed = threading.Event()

    def token(self) -> int | None:
        if self._down:
            return None
        try:
            value = self._client.get(self._key)
            if value is None:
                # gone (Redis restarted or flushed): a fresh value, never seen before
                self._client.set(self._key, _new_generation(), nx=True)
                value = self._client.get(self._key)
            return int(value)  # type: ignore[arg-type]
        except (redis.RedisError, ValueError, TypeError) as exc:
            self._failed(exc)
            return None

    def bump(self) -> None:
        try:
            self._client.set(self._key, _new_generation())
        except redis.RedisError as exc:
            self._failed(exc)

    @property
    def healthy(self) -> bool:
        """False from a failure until an announcement has got through again."""
        return not self._down

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            if not self._down:
                log.warning(
                    "redis unreachable (%s): read caching off until it answers again",
                    str(exc)[:200],
                )
            self._down = True
            self._failures += 1
            if self._retrying is None or not self._retrying.is_alive():
                self._retrying = threading.Thread(
                    target=self._recover, name="redis-generation", daemon=True
                )
                self._retrying.start()

    def _recover(self) -> None:
        while not self._closed.wait(self._retry_seconds):
            with self._lock:
                failures = self._failures
            try:
                self._client.set(self._key, _new_generation())
            except redis.RedisError:
                continue
            with self._lock:
                if failures != self._failures:
                    continue  # failed again meanwhile: announce once more
                self._down = False
                self._retrying = None
            log.warning("redis answers again: read caching back on")
            return

    def close(self) -> None:
        self._closed.set()
