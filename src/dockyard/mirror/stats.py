"""Cache statistics per upstream, summed over every worker process.

As the request metrics (http/metrics.py): each process counts in a plain dictionary and
writes a snapshot of its totals to ``<metrics dir>/<pid>.mirror`` once a second; readers sum
the snapshots with the live totals of their own process. Snapshots of processes that died
stay, so the counters never go backwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily

COUNTERS = {
    "hits": "Requests answered from the cache (manifests and blobs)",
    "misses": "Manifests and blobs fetched from the upstream",
    "stale": "Requests answered from the cache because the upstream failed (stale-if-error)",
    "errors": "Requests the upstream failed while nothing was cached",
    "upstream_bytes": "Bytes of manifests and blobs fetched from the upstream",
    "saved_bytes": "Bytes answered from the cache instead of the upstream",
    "evicted_repositories": "Proxied repositories evicted by the cache size limit",
}

_counts: dict[str, dict[str, int]] = {}


def count(upstream: str, counter: str, amount: int = 1) -> None:
    row = _counts.get(upstream)
    if row is None:
        row = _counts[upstream] = dict.fromkeys(COUNTERS, 0)
    row[counter] += amount


def _directory() -> Path | None:
    value = os.environ.get("DOCKYARD_METRICS_DIR")
    return Path(value) if value else None


def flush() -> None:
    directory = _directory()
    if directory is None or not _counts:
        return
    target = directory / f"{os.getpid()}.mirror"
    temporary = directory / f".{os.getpid()}.mirror.tmp"
    temporary.write_text(json.dumps(_counts))
    os.replace(temporary, target)


def totals() -> dict[str, dict[str, int]]:
    """Every process's counts, summed: upstream -> counter -> value."""
    snapshots: list[dict[str, Any]] = [_counts]
    directory = _directory()
    if directory is not None:
        own = f"{os.getpid()}.mirror"
        for path in directory.glob("*.mirror"):
            if path.name != own:
                with contextlib.suppress(OSError, ValueError):
                    snapshots.append(json.loads(path.read_text()))
    summed: dict[str, dict[str, int]] = {}
    for snapshot in snapshots:
        for upstream, row in snapshot.items():
            target = summed.setdefault(str(upstream), dict.fromkeys(COUNTERS, 0))
            for counter, value in row.items():
                if counter in target and isinstance(value, int):
                    target[counter] += value
    return summed


def families(upstreams: list[str]) -> list[CounterMetricFamily]:
    """The counters for /metrics (every configured upstream, zero until used)."""
    summed = totals()
    result = []
    for counter, text in COUNTERS.items():
        family = CounterMetricFamily(f"dockyard_mirror_{counter}", text, labels=["upstream"])
        for upstream in sorted(set(upstreams) | set(summed)):
            family.add_metric([upstream], summed.get(upstream, {}).get(counter, 0))
        result.append(family)
    return result
