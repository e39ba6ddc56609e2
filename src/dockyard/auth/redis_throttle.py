"""Rate limits shared by every process of every node: the same token buckets as
``dockyard.auth.throttle.Buckets`` (``rate`` a second on average, bursts up to ``burst``),
kept in Redis and taken from atomically by a Lua script that reads Redis's own clock, so
that nodes with drifting clocks still draw from one budget.

When Redis does not answer, each process falls back to its own buckets (the limit is then
per process again, as without Redis) and tries Redis again a few seconds later.
"""

from __future__ import annotations

import logging
import time

import redis

from dockyard.auth.throttle import Buckets
from dockyard.redis_support import RedisLink

log = logging.getLogger("dockyard.redis")

# KEYS[1]: the bucket; ARGV: rate, burst. Returns the seconds to wait (as a string: Lua
# numbers become integers in replies), "0" when the request may pass.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
    tokens = burst
    stamp = now
end
local elapsed = now - stamp
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

RETRY_AFTER_SECONDS = 5.0


class RedisBuckets:
    """Token buckets in Redis, one per key, with this process's ``Buckets`` as fallback."""

    def __init__(self, link: RedisLink, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._link = link
        self._take = link.client.register_script(_TAKE)
        self._local = Buckets(rate, burst)
        self._down_until = 0.0

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds to wait before the next request may pass."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        if now < self._down_until:
            return self._local.take(key)
        try:
            answer = self._take(keys=[self._link.key("rate", key)], args=[self.rate, self.burst])
            return max(0.0, float(answer))
        except (redis.RedisError, ValueError, TypeError) as exc:
            log.warning(
                "redis unreachable (%s): rate limits per process for %.0fs",
                str(exc)[:200],
                RETRY_AFTER_SECONDS,
            )
            self._down_until = now + RETRY_AFTER_SECONDS
            return self._local.take(key)


def rate_buckets(link: RedisLink | None, rate: float, burst: int) -> Buckets | RedisBuckets:
    """Shared buckets when Redis is configured, else this process's own."""
    if link is None or rate <= 0:
        return Buckets(rate, burst)
    return RedisBuckets(link, rate, burst)
