"""The cache size limit: least recently pulled proxied repositories go first.

The cache's size is what the proxy namespaces hold, computed from the metadata (each
namespace's distinct blobs and manifests), so it stays exact after evictions and garbage
collection. Above ``mirror_cache_max_bytes``, whole proxied repositories are removed,
least recently used first (the latest of: a pull of one of its tags, a tag check, a
manifest or a blob cached), never the most recently used one; blobs nothing references any
more are deleted at once, under the blob's lock, as the garbage collector deletes them.
The next pull fetches the repository again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from dockyard.db import collection as gc_db
from dockyard.db import mirror as mirror_db
from dockyard.mirror import stats

if TYPE_CHECKING:
    from dockyard.mirror.service import ProxyService

log = logging.getLogger("dockyard.mirror")


async def evict(service: ProxyService, limit: int) -> list[str]:
    """Evict until the cache is within ``limit`` bytes; the repositories evicted."""
    ctx = service.ctx
    prefixes = [u.prefix for u in service.upstreams.all]
    guard = await asyncio.to_thread(service.locks.try_acquire, "mirror-eviction")
    if guard is None:
        return []  # another process is at it
    evicted: list[str] = []
    try:
        while True:
            used = await ctx.read(lambda conn: mirror_db.cache_bytes(conn, prefixes))
            if used <= limit:
                break
            candidates = await ctx.read(lambda conn: mirror_db.proxied_repositories(conn, prefixes))
            progressed = False
            for candidate in candidates[:-1]:  # the most recently used one stays
                removed = await ctx.write(
                    partial(
                        mirror_db.remove_repository,
                        repository_id=candidate.id,
                        not_used_since=candidate.last_used,
                    )
                )
                if removed is None:
                    continue  # in use right now
                await _delete_garbage_blobs(service, removed)
                upstream = service.upstreams.namespace_of(candidate.name)
                if upstream is not None:
                    stats.count(upstream.name, "evicted_repositories")
                log.info("evicted %s from the mirror cache (%d bytes used)", candidate.name, used)
                evicted.append(candidate.name)
                progressed = True
                break
            if not progressed:
                break
    finally:
        guard.release()
    return evicted


async def _delete_garbage_blobs(service: ProxyService, digests: list[str]) -> None:
    ctx = service.ctx
    store = ctx.store
    cutoff = time.time() + 1  # no grace period: these were only the evicted repository's
    for digest in digests:
        lock = await asyncio.to_thread(store.lock_blob, digest)
        try:
            deleted = await ctx.write(
                partial(gc_db.delete_blob_if_garbage, digest=digest, cutoff=cutoff)
            )
            if deleted:
                await ctx.run(partial(store.delete_blob, digest))
        finally:
            lock.release()
