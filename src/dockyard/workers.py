"""``dockyard worker``: background jobs on a schedule. Several workers may run (on several
nodes): each job runs in one of them at a time (``dockyard.job_locks``); a worker whose
turn finds the job running elsewhere skips that run."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dockyard.config import Settings
from dockyard.job_locks import Jobs, job_locks
from dockyard.oci.errors import Unavailable
from dockyard.registry.gc import GarbageCollector, GcPolicy
from dockyard.registry.service import Registry

log = logging.getLogger("dockyard.worker")


async def run_worker(settings: Settings, once: bool = False) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    registry = Registry.from_settings(settings)
    collector = GarbageCollector(
        registry.ctx, GcPolicy(settings.gc_grace_seconds, settings.gc_delete_untagged)
    )
    jobs = Jobs(job_locks(registry.ctx.db, settings.data_dir, registry.ctx.redis))

    async def purge() -> dict[str, Any]:
        purged = await registry.uploads.purge_stale(settings.upload_purge_after_seconds)
        return {"purged": purged}

    async def retention() -> dict[str, Any]:
        return (await registry.retention.run()).to_json()

    async def gc() -> dict[str, Any]:
        return (await collector.collect()).to_json()

    next_gc = 0.0
    next_purge = 0.0
    next_retention = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_purge:
                await run_job(jobs, "purge-uploads", purge, wait=once)
                next_purge = now + min(3600.0, settings.upload_purge_after_seconds / 4)
            if (settings.retention_interval_seconds or once) and now >= next_retention:
                await run_job(jobs, "retention", retention, wait=once)
                next_retention = now + max(1, settings.retention_interval_seconds)
            if (settings.gc_interval_seconds or once) and now >= next_gc:
                await run_job(jobs, "gc", gc, wait=once)
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


async def run_job(
    jobs: Jobs, name: str, job: Callable[[], Awaitable[dict[str, Any]]], wait: bool
) -> None:
    """Run ``job`` unless another worker is running it (``wait``: until it has finished),
    and log one JSON line: its result with when it started and finished (epoch seconds,
    both inside the job's lock), or why it was skipped."""
    try:
        async with jobs.alone(name, wait=wait) as mine:
            if not mine:
                log.info(json.dumps({"job": name, "skipped": "running in another worker"}))
                return
            started = time.time()
            result = await job()
            entry = {"job": name, **result, "started": started, "finished": time.time()}
            log.info(json.dumps(entry))
    except Unavailable as exc:
        log.error(json.dumps({"job": name, "skipped": exc.message}))
