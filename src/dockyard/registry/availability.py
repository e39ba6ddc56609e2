"""Telling a backend that is down (database, object store, Redis) from a bug.

A request that fails because PostgreSQL, S3 or Redis cannot be reached gets ``503
UNAVAILABLE`` — a client may retry, a load balancer may try another node — instead of the
``500`` a bug gets.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def backend_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    module = type(exc).__module__
    if module.startswith(("botocore", "urllib3")):
        # connection errors, timeouts, and S3's own 5xx answers (SlowDown, InternalError)
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return isinstance(status, int) and status >= 500
        return True
    if module.startswith("redis") and type(exc).__name__ in ("ConnectionError", "TimeoutError"):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)
