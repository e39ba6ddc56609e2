"""Prometheus metrics, shared by every worker process (prometheus_client multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` is set by ``dockyard serve`` before workers start)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter(
    "dockyard_http_requests_total",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "dockyard_http_request_duration_seconds",
    "Time to answer an HTTP request, by route and method",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BYTES_IN = Counter("dockyard_http_request_bytes_total", "Request body bytes received", ["route"])
BYTES_OUT = Counter("dockyard_http_response_bytes_total", "Response body bytes sent", ["route"])


class _UploadsInProgress:
    """Open upload sessions, counted from the database at scrape time (exact across
    processes and restarts)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "dockyard_uploads_in_progress",
            "Blob upload sessions started and not yet finished or cancelled",
            value=self._count(),
        )


def render(count_uploads: Callable[[], int]) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    extra = _UploadsInProgress(count_uploads)
    registry.register(extra)
    try:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    finally:
        registry.unregister(extra)


_children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}


def observe(
    route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    key = (route, method, status)
    children = _children.get(key)
    if children is None:  # label lookups cost microseconds: do them once per key
        children = (
            REQUESTS.labels(route, method, str(status)),
            LATENCY.labels(route, method),
            BYTES_IN.labels(route),
            BYTES_OUT.labels(route),
        )
        _children[key] = children
    requests, latency, received, sent = children
    requests.inc()
    latency.observe(seconds)
    if bytes_in:
        received.inc(bytes_in)
    if bytes_out:
        sent.inc(bytes_out)
