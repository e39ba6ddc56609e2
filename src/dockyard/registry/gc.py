"""Online garbage collection: no read-only mode, no downtime.

What lives: a manifest while a tag, an index of its repository or (a referrer) its subject
keeps it — untagged manifests are only collected when the policy says so; a blob link while
a manifest of its repository references the blob; a blob while any link or manifest
references it. Anything younger than the grace period lives too, which protects pushes in
flight (a layer uploaded a moment ago, its manifest not yet pushed).

Safety with concurrent pushes: every delete re-checks its condition inside its own
transaction, so whichever of a push and the collector commits first wins and the other
sees it; a blob's bytes are removed under the blob's lock (the one uploads hold while they
publish and record), and only after its row is gone. A crash between the two leaves bytes
without a row, which the next run removes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from dockyard.db import collection as gc_db
from dockyard.registry.context import Context


@dataclass(frozen=True)
class GcPolicy:
    grace_seconds: float = 3600.0
    delete_untagged: bool = False


@dataclass
class GcReport:
    dry_run: bool
    manifests: list[tuple[str, str]] = field(default_factory=list)  # (repository, digest)
    links: int = 0
    blobs: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "manifests_deleted": [{"repository": r, "digest": d} for r, d in self.manifests],
            "links_removed": self.links,
            "blobs_deleted": self.blobs,
            "orphan_files_deleted": self.orphan_files,
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
        }


class GarbageCollector:
    def __init__(self, ctx: Context, policy: GcPolicy) -> None:
        self.ctx = ctx
        self.policy = policy

    async def collect(self, dry_run: bool = False) -> GcReport:
        started = time.monotonic()
        cutoff = time.time() - self.policy.grace_seconds
        report = GcReport(dry_run=dry_run)
        if dry_run:
            await self.ctx.run(partial(self._rehearse, cutoff, report))
        else:
            if self.policy.delete_untagged:
                await self._manifests(cutoff, report)
            await self._links(cutoff, report)
            await self._blobs(cutoff, report)
        await self._orphan_files(cutoff, report)
        report.seconds = time.monotonic() - started
        return report

    def _rehearse(self, cutoff: float, report: GcReport) -> None:
        """A dry run: a real run's deletions, same queries, in one transaction rolled back
        at the end, so what deleting an index or a subject would free is counted too."""
        with self.ctx.db.writer.connect() as conn:
            transaction = conn.begin()
            try:
                while self.policy.delete_untagged:
                    found = gc_db.untagged_manifests(conn, cutoff)
                    if not found:
                        break
                    for manifest_id, repository, digest, _size in found:
                        if gc_db.delete_manifest_if_garbage(conn, manifest_id, cutoff):
                            report.manifests.append((repository, digest))
                for repository_id, digest in gc_db.garbage_links(conn, cutoff):
                    removed = gc_db.delete_link_if_garbage(conn, repository_id, digest, cutoff)
                    report.links += int(removed)
                for digest, size in gc_db.garbage_blobs(conn, cutoff):
                    report.blobs.append(digest)
                    report.bytes_freed += size
            finally:
                transaction.rollback()

    async def _manifests(self, cutoff: float, report: GcReport) -> None:
        # deleting an index or a subject can free its children: repeat until nothing goes
        seen: set[int] = set()
        for _ in range(100):
            found = await self.ctx.read(lambda conn: gc_db.untagged_manifests(conn, cutoff))
            found = [m for m in found if m[0] not in seen]
            if not found:
                return
            for manifest_id, repository, digest, _size in found:
                seen.add(manifest_id)
                deleted = await self.ctx.write(
                    partial(
                        gc_db.delete_manifest_if_garbage, manifest_id=manifest_id, cutoff=cutoff
                    )
                )
                if deleted:
                    report.manifests.append((repository, digest))

    async def _links(self, cutoff: float, report: GcReport) -> None:
        links = await self.ctx.read(lambda conn: gc_db.garbage_links(conn, cutoff))
        for repository_id, digest in links:
            removed = await self.ctx.write(
                partial(
                    gc_db.delete_link_if_garbage,
                    repository_id=repository_id,
                    digest=digest,
                    cutoff=cutoff,
                )
            )
            report.links += int(removed)

    async def _blobs(self, cutoff: float, report: GcReport) -> None:
        store = self.ctx.store
        candidates = await self.ctx.read(lambda conn: gc_db.garbage_blobs(conn, cutoff))
        for digest, size in candidates:
            lock = await self.ctx.run(partial(store.lock_blob, digest))
            try:
                deleted = await self.ctx.write(
                    partial(gc_db.delete_blob_if_garbage, digest=digest, cutoff=cutoff)
                )
                if deleted:
                    await self.ctx.run(partial(store.delete_blob, digest))
                    report.blobs.append(digest)
                    report.bytes_freed += size
            finally:
                lock.release()

    async def _orphan_files(self, cutoff: float, report: GcReport) -> None:
        """Bytes without a row: left by a crash between a delete and its file removal, or
        by an upload killed between publishing and recording."""
        store = self.ctx.store
        files = await self.ctx.run(lambda: list(store.list_blobs()))
        for digest in files:
            # the database first: most files have a row, and asking the store may be a
            # network round trip (S3), made from a thread
            if await self.ctx.read(partial(gc_db.blob_recorded, digest=digest)):
                continue
            mtime = await self.ctx.run(partial(store.blob_mtime, digest))
            if mtime is None or mtime >= cutoff:
                continue
            if report.dry_run:
                report.orphan_files.append(digest)
                stored_size: int | None = await self.ctx.run(partial(store.stat_blob, digest))
                report.bytes_freed += stored_size or 0
                continue
            lock = await self.ctx.run(partial(store.lock_blob, digest))
            try:
                recorded = await self.ctx.read(partial(gc_db.blob_recorded, digest=digest))
                if not recorded:
                    stored: int | None = await self.ctx.run(partial(store.stat_blob, digest))
                    size = stored or 0
                    await self.ctx.run(partial(store.delete_blob, digest))
                    report.orphan_files.append(digest)
                    report.bytes_freed += size
            finally:
                lock.release()
