"""``dockyard worker``: background jobs on a schedule (several workers may run: every job
is safe to run concurrently)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from dockyard.config import Settings
from dockyard.registry.gc import GarbageCollector, GcPolicy
from dockyard.registry.service import Registry

log = logging.getLogger("dockyard.worker")


async def run_worker(settings: Settings, once: bool = False) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    registry = Registry.from_settings(settings)
    collector = GarbageCollector(
        registry.ctx, GcPolicy(settings.gc_grace_seconds, settings.gc_delete_untagged)
    )
    next_gc = 0.0
    next_purge = 0.0
    next_retention = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_purge:
                purged = await registry.uploads.purge_stale(settings.upload_purge_after_seconds)
                log.info(json.dumps({"job": "purge-uploads", "purged": purged}))
                next_purge = now + min(3600.0, settings.upload_purge_after_seconds / 4)
            if (settings.retention_interval_seconds or once) and now >= next_retention:
                retained = await registry.retention.run()
                log.info(json.dumps({"job": "retention", **retained.to_json()}))
                next_retention = now + max(1, settings.retention_interval_seconds)
            if (settings.gc_interval_seconds or once) and now >= next_gc:
                report = await collector.collect()
                log.info(json.dumps({"job": "gc", **report.to_json()}))
                next_gc = now + max(1, settings.gc_interval_seconds)
            if once:
                return
            wake = next_purge
            if settings.gc_interval_seconds:
                wake = min(wake, next_gc)
            if settings.retention_interval_seconds:
                wake = min(wake, next_retention)
            await asyncio.sleep(max(0.5, wake - time.monotonic()))
    finally:
        registry.close()
