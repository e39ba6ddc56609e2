"""An oras-py client with short timeouts.

oras-py sends its requests without a timeout and retries a failing request five times,
sleeping 2 + 3**attempt seconds in between: a wedged server would stall a test for minutes.
Every request here gets a timeout, and the retry sleeps are capped (``fast_retries``).
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import oras.decorator  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import requests

REQUEST_TIMEOUT = 30.0
MAX_RETRY_SLEEP = 0.2


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


def make_client(registry_host: str, timeout: float = REQUEST_TIMEOUT) -> oras.provider.Registry:
    client = oras.provider.Registry(hostname=registry_host, insecure=True)
    session = _TimeoutSession(timeout)
    session.cookies = client.session.cookies  # keeps oras' "no cookies" policy
    client.session = session
    client.auth.session = session
    return client


@contextmanager
def fast_retries() -> Iterator[None]:
    """Cap oras-py's retry sleeps while the block runs (the decorator reads the module's
    ``time`` global at call time)."""
    real = oras.decorator.time
    shim = types.SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, MAX_RETRY_SLEEP)))
    oras.decorator.time = shim
    try:
        yield
    finally:
        oras.decorator.time = real
