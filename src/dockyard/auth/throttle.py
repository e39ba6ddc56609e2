"""Rate limits: a token bucket per key (identity or client address), per process; and a
brake on repeated failed logins, shared by all processes through the database."""

from __future__ import annotations

import time
from collections import OrderedDict

from dockyard.db import identities as id_db
from dockyard.registry.context import Context


class Buckets:
    """``rate`` requests a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds to wait before the next request may pass."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, stamp = self._state.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            wait = 0.0
        else:
            self._state[key] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return wait


class LoginBrake:
    """After ``free`` failures within ``window`` seconds, a key must wait, doubling each
    time (capped): brute force slows to a crawl, a typo costs nothing. Failures are kept in
    the database, so the brake holds across every server process."""

    def __init__(
        self, ctx: Context, free: int = 5, window: float = 300.0, cap: float = 300.0
    ) -> None:
        self.ctx = ctx
        self.free = free
        self.window = window
        self.cap = cap

    async def wait(self, key: str) -> float:
        now = time.time()
        since = now - self.window
        recent = await self.ctx.read(lambda conn: id_db.recent_failures(conn, key, since))
        excess = len(recent) - self.free
        if excess < 0:
            return 0.0
        delay = min(self.cap, 2.0**excess)
        return max(0.0, recent[-1] + delay - now)

    async def failed(self, key: str) -> None:
        now = time.time()
        await self.ctx.write(
            lambda conn: id_db.add_failure(conn, key, now, now - self.window), announce=False
        )

    async def succeeded(self, key: str) -> None:
        await self.ctx.write(lambda conn: id_db.clear_failures(conn, key), announce=False)
