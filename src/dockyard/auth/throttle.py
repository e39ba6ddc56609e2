"""Rate limits: a token bucket per key (identity or client address), and a brake on
repeated failed logins. Per process; a shared store comes with scale-out."""

from __future__ import annotations

import time
from collections import OrderedDict


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
    time (capped): brute force slows to a crawl, a typo costs nothing."""

    def __init__(self, free: int = 5, window: float = 300.0, cap: float = 300.0) -> None:
        self.free = free
        self.window = window
        self.cap = cap
        self._failures: dict[str, list[float]] = {}

    def wait(self, key: str) -> float:
        now = time.monotonic()
        recent = [t for t in self._failures.get(key, []) if now - t < self.window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        excess = len(recent) - self.free
        if excess < 0:
            return 0.0
        delay = min(self.cap, 2.0**excess)
        return max(0.0, recent[-1] + delay - now)

    def failed(self, key: str) -> None:
        self._failures.setdefault(key, []).append(time.monotonic())
        if len(self._failures) > 100_000:
            self._failures.clear()

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
