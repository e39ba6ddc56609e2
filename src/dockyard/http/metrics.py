"""Prometheus metrics, summed over every worker process.

Counting goes into plain per-process dictionaries (a request costs a few dictionary
updates, not the ~8-30 microseconds of prometheus_client's locked, mmap-backed values). Each
process writes a snapshot of its totals to ``<metrics dir>/<pid>.json`` once a second and
when it stops; ``/metrics`` sums every snapshot, the answering process's live totals
included, and prometheus_client formats the exposition. Snapshots of processes that died
stay, so counters never go backwards.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# (route, method, status) -> requests; (route, method) -> [bucket counts..., +Inf], sum;
# route -> bytes in / out
_requests: dict[tuple[str, str, int], int] = {}
_latency: dict[tuple[str, str], list[float]] = {}
_bytes_in: dict[str, int] = {}
_bytes_out: dict[str, int] = {}


def observe(
    route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    key = (route, method, status)
    _requests[key] = _requests.get(key, 0) + 1
    histogram = _latency.get((route, method))
    if histogram is None:
        # one slot per bucket, one for +Inf, then the sum
        histogram = _latency[(route, method)] = [0.0] * (len(BUCKETS) + 2)
    histogram[bisect.bisect_left(BUCKETS, seconds)] += 1
    histogram[-1] += seconds
    if bytes_in:
        _bytes_in[route] = _bytes_in.get(route, 0) + bytes_in
    if bytes_out:
        _bytes_out[route] = _bytes_out.get(route, 0) + bytes_out


def snapshot() -> dict[str, Any]:
    return {
        "requests": [[*key, value] for key, value in _requests.items()],
        "latency": [[*key, values] for key, values in _latency.items()],
        "bytes_in": _bytes_in,
        "bytes_out": _bytes_out,
    }


def metrics_dir() -> Path | None:
    value = os.environ.get("DOCKYARD_METRICS_DIR")
    return Path(value) if value else None


def flush() -> None:
    """Write this process's totals where the other processes can sum them."""
    directory = metrics_dir()
    if directory is None:
        return
    target = directory / f"{os.getpid()}.json"
    temporary = directory / f".{os.getpid()}.json.tmp"
    temporary.write_text(json.dumps(snapshot()))
    os.replace(temporary, target)


def _snapshots() -> Iterator[dict[str, Any]]:
    directory = metrics_dir()
    own = f"{os.getpid()}.json"
    if directory is not None:
        for path in directory.glob("*.json"):
            if path.name != own:
                with contextlib.suppress(OSError, ValueError):
                    yield json.loads(path.read_text())
    yield snapshot()


class _Collector:
    def __init__(self, gauges: Callable[[], list[GaugeMetricFamily]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Any]:
        requests: dict[tuple[str, str, str], float] = {}
        latency: dict[tuple[str, str], list[float]] = {}
        bytes_in: dict[str, float] = {}
        bytes_out: dict[str, float] = {}
        for snap in _snapshots():
            for route, method, status, value in snap["requests"]:
                key = (route, method, str(status))
                requests[key] = requests.get(key, 0) + value
            for route, method, values in snap["latency"]:
                total = latency.setdefault((route, method), [0.0] * len(values))
                for i, value in enumerate(values):
                    total[i] += value
            for route, value in snap["bytes_in"].items():
                bytes_in[route] = bytes_in.get(route, 0) + value
            for route, value in snap["bytes_out"].items():
                bytes_out[route] = bytes_out.get(route, 0) + value

        family = CounterMetricFamily(
            "dockyard_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        for labels, value in sorted(requests.items()):
            family.add_metric(list(labels), value)
        yield family

        histogram = HistogramMetricFamily(
            "dockyard_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            labels=["route", "method"],
        )
        for (route, method), values in sorted(latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([route, method], buckets, values[-1])
        yield histogram

        for name, text, totals in (
            ("dockyard_http_request_bytes", "Request body bytes received", bytes_in),
            ("dockyard_http_response_bytes", "Response body bytes sent", bytes_out),
        ):
            counter = CounterMetricFamily(name, text, labels=["route"])
            for route, value in sorted(totals.items()):
                counter.add_metric([route], value)
            yield counter

        yield from self._gauges()


def registry_gauges(uploads_in_progress: int, usage: Any) -> list[GaugeMetricFamily]:
    """Gauges read from the metadata at scrape time: exact across processes and restarts."""
    uploads = GaugeMetricFamily(
        "dockyard_uploads_in_progress",
        "Blob upload sessions started and not yet finished or cancelled",
        value=uploads_in_progress,
    )
    storage = GaugeMetricFamily(
        "dockyard_storage_bytes",
        "Bytes of blobs and manifests: stored (each blob once) and logical (per repository)",
        labels=["kind"],
    )
    storage.add_metric(["stored"], usage.stored_bytes)
    storage.add_metric(["logical"], usage.logical_bytes)
    namespaces = GaugeMetricFamily(
        "dockyard_namespace_stored_bytes",
        "Bytes of a namespace's distinct blobs and manifests (what its quota counts)",
        labels=["namespace"],
    )
    logical = GaugeMetricFamily(
        "dockyard_namespace_logical_bytes",
        "Bytes of a namespace's repositories, each counted in full (shared blobs once per "
        "repository)",
        labels=["namespace"],
    )
    repositories = GaugeMetricFamily(
        "dockyard_namespace_repositories",
        "Repositories of a namespace",
        labels=["namespace"],
    )
    quota_bytes = GaugeMetricFamily(
        "dockyard_namespace_quota_bytes",
        "The byte quota of a namespace (only namespaces that have one)",
        labels=["namespace"],
    )
    quota_repositories = GaugeMetricFamily(
        "dockyard_namespace_quota_repositories",
        "The repository quota of a namespace (only namespaces that have one)",
        labels=["namespace"],
    )
    for row in usage.namespaces:
        label = [row["namespace"]]
        namespaces.add_metric(label, row["stored_bytes"])
        logical.add_metric(label, row["logical_bytes"])
        repositories.add_metric(label, row["repositories"])
        quota = row["quota"] or {}
        if quota.get("bytes") is not None:
            quota_bytes.add_metric(label, quota["bytes"])
        if quota.get("repositories") is not None:
            quota_repositories.add_metric(label, quota["repositories"])
    return [
        uploads,
        storage,
        namespaces,
        logical,
        repositories,
        quota_bytes,
        quota_repositories,
    ]


def render(gauges: Callable[[], list[GaugeMetricFamily]]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(gauges))
    return generate_latest(registry), CONTENT_TYPE_LATEST
