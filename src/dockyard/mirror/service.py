"""The pull-through cache: proxied repositories served from the cache, filled from upstreams.

A proxied repository (``hub/library/nginx``) is an ordinary repository of the registry: its
manifests are stored through the manifest service (so usage, referrers and the catalog
work), its blobs through uploads (so they are verified and published atomically). What
differs is where content comes from and when it is refreshed:

- manifests by digest and blobs are immutable: cached forever (until evicted);
- a tag is served from the cache for ``tag_ttl_seconds``, then checked with a HEAD (which
  Docker Hub does not count as a pull): same digest, the cached manifest is served; another,
  the new manifest is fetched;
- a blob not cached streams to the client while it is written to an upload; the upload is
  published only when the digest matches, and the client's response is cut short otherwise;
- concurrent requests for the same missing manifest or blob make one upstream request: one
  request in the process leads, and a named lock per digest keeps other processes waiting
  until it is done (flock files on one machine; with Redis, locks every node shares); they
  then answer from the cache;
- when the upstream fails (down, 5xx, 429), whatever is cached is served, tags past their
  TTL included (stale-if-error); a clear error names the upstream for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection

from dockyard.db import blobs as blob_db
from dockyard.db import mirror as mirror_db
from dockyard.db import repositories as repo_db
from dockyard.mirror import stats
from dockyard.mirror.client import (
    UpstreamClient,
    UpstreamFailure,
    UpstreamMismatch,
    UpstreamMissing,
)
from dockyard.mirror.upstreams import ProxyTarget, Upstream, Upstreams
from dockyard.oci.digest import is_digest, parse_digest
from dockyard.oci.errors import (
    BlobUnknown,
    Denied,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
)
from dockyard.oci.names import validate_tag
from dockyard.registry.blobs import BlobInfo
from dockyard.registry.context import kept_or_undone
from dockyard.registry.manifests import Manifest
from dockyard.registry.service import Registry
from dockyard.storage.base import BlobLock
from dockyard.storage.locks import FileLocks, Locks

log = logging.getLogger("dockyard.mirror")

T = TypeVar("T")


class UpstreamUnavailable(RegistryError):
    """The upstream failed and the content was never cached."""

    code = "UNAVAILABLE"
    status = 503
    default_message = "the upstream registry is unavailable"


class UpstreamInvalid(RegistryError):
    """The upstream sent content that does not match its digest, or cannot be stored."""

    code = "UNAVAILABLE"
    status = 502
    default_message = "the upstream registry sent invalid content"


@dataclass
class BlobStream:
    """A blob on its way from the upstream: ``chunks`` yields its bytes as they are cached,
    and raises (after fewer than ``size`` bytes) when the blob turns out wrong."""

    digest: str
    size: int
    chunks: AsyncIterator[bytes]


class BlobCutShort(Exception):
    """The blob being streamed turned out wrong or incomplete: the response is cut."""


@dataclass(frozen=True)
class BlobHead:
    """A blob the upstream has but the cache does not (for HEAD)."""

    digest: str
    size: int | None


class _Flight:
    """Leading the one fetch of something: release when done (the lock, the waiters)."""

    def __init__(self, flights: dict[str, asyncio.Event], key: str, lock: BlobLock | None) -> None:
        self._flights = flights
        self._key = key
        self._lock = lock
        self._event = asyncio.Event()
        flights[key] = self._event
        self.landed = False

    def land(self) -> None:
        if self.landed:
            return
        self.landed = True
        if self._flights.get(self._key) is self._event:
            del self._flights[self._key]
        self._event.set()
        if self._lock is not None:
            self._lock.release()


class ProxyService:
    def __init__(
        self,
        registry: Registry,
        upstreams: Upstreams,
        data_dir: Path,
        cache_max_bytes: int | None = None,
        locks: Locks | None = None,
    ) -> None:
        """``data_dir``: where the single-flight locks (``locks`` when not given) and the
        upstreams' 429 waits are kept for the processes of this machine. With Redis
        (``registry.ctx.redis``) the waits are kept there, for every node; pass Redis
        ``locks`` (``dockyard.redis_locks.make_locks``) to share those too."""
        self.registry = registry
        self.ctx = registry.ctx
        self.upstreams = upstreams
        self.cache_max_bytes = cache_max_bytes
        self.clients = {
            u.name: UpstreamClient(
                u, self.ctx.limits.max_manifest_bytes, data_dir / "mirror", self.ctx.redis
            )
            for u in upstreams.all
        }
        self.locks: Locks = locks if locks is not None else FileLocks(data_dir / "locks")
        self._flights: dict[str, asyncio.Event] = {}
        self._checked: dict[tuple[str, str], float] = {}  # (repository, tag) -> time
        self._evicting = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    # -- routing --------------------------------------------------------------------------

    async def route(self, name: str, ns: str | None, reading: bool) -> ProxyTarget | None:
        """The proxied repository a request for ``name`` is for, or None for a local one.

        Writes are routed only by namespace (so they can be refused); ``?ns=`` and daemon
        mirror mode apply to reads."""
        if reading and ns:
            target = self.upstreams.by_host(ns, name)
            if target is not None:
                return target
        target = self.upstreams.by_prefix(name)
        if target is not None or not reading or self.upstreams.mirror is None:
            return target
        target = self.upstreams.for_mirror(name)
        if target is None or await self._is_local(name):
            return None
        return target

    async def _is_local(self, name: str) -> bool:
        repository_id = await self.ctx.cached_read(
            ("repository-id", name), lambda conn: repo_db.get_id(conn, name)
        )
        return repository_id is not None

    def refuse_write(self, name: str) -> None:
        """Pushes and deletes into a proxy namespace are refused, saying why."""
        upstream = self.upstreams.namespace_of(name)
        if upstream is not None:
            raise Denied(
                f"{upstream.prefix}/ is a pull-through cache of {upstream.url}; it cannot be "
                "pushed to or deleted from. Push to another namespace",
                detail={"upstream": upstream.name},
            )

    def access_alias(self, conn: Connection, name: str) -> tuple[str, bool] | None:
        """For access decisions: the proxied repository ``name`` stands for and whether its
        upstream is public (None for a local repository). In daemon mirror mode a plain name
        stands for the proxied repository unless a local repository has that name."""
        upstream = self.upstreams.namespace_of(name)
        if upstream is not None:
            return name, upstream.public
        mirror = self.upstreams.mirror
        if mirror is None or repo_db.get_id(conn, name) is not None:
            return None
        target = self.upstreams.for_mirror(name)
        return (target.local, mirror.public) if target is not None else None

    # -- single flight --------------------------------------------------------------------

    async def _lead(
        self, key: str, cached: Callable[[], Awaitable[T | None]]
    ) -> tuple[T | None, _Flight | None]:
        """The cached value, or a flight: this request fetches (and must land the flight).

        Waits while another request of this process, or another process, fetches the same
        thing, then looks in the cache again."""
        lock_name = "mirror-" + hashlib.sha256(key.encode()).hexdigest()[:40]
        for _ in range(5):
            found = await cached()
            if found is not None:
                return found, None
            event = self._flights.get(key)
            if event is not None:
                await event.wait()
                continue
            lock = await asyncio.to_thread(self.locks.try_acquire, lock_name)
            if lock is None:
                held = await kept_or_undone(
                    asyncio.to_thread(self.locks.acquire, lock_name), lambda lock: lock.release()
                )
                held.release()
                continue
            flight = _Flight(self._flights, key, lock)
            try:
                found = await cached()  # filled between our look and the lock
            except BaseException:
                flight.land()
                raise
            if found is not None:
                flight.land()
                return found, None
            return None, flight
        # others kept failing: try ourselves, without waiting any longer
        return None, _Flight(self._flights, key + "#", None)

    # -- manifests ------------------------------------------------------------------------

    async def _cached_manifest(self, local: str, reference: str) -> Manifest | None:
        try:
            return await self.registry.manifests.get(local, reference)
        except (ManifestUnknown, NameUnknown):
            return None

    async def manifest(
        self,
        target: ProxyTarget,
        reference: str,
        accept: Callable[[], list[str]] | None,
        count: bool = True,
    ) -> Manifest:
        """The manifest, from the cache or the upstream; ``accept`` as for
        ``Manifests.get`` (negotiation for old clients). ``count``: a GET (statistics)."""
        upstream = target.upstream
        if is_digest(reference):
            parse_digest(reference)
        else:
            validate_tag(reference)
        cached = await self._cached_manifest(target.local, reference)
        if cached is not None and (is_digest(reference) or await self._fresh(target, reference)):
            return await self._hit(target, reference, accept, cached, count)
        if cached is not None:  # a tag past its TTL: ask the upstream whether it moved
            client = self.clients[upstream.name]
            try:
                head = await client.head_manifest(target.remote, reference)
            except UpstreamFailure as exc:
                log.warning("serving %s:%s from the cache: %s", target.local, reference, exc)
                stats.count(upstream.name, "stale")
                return await self._hit(target, reference, accept, cached, count)
            except UpstreamMissing as exc:
                raise ManifestUnknown(str(exc), detail={"reference": reference}) from None
            if head is not None and head.digest == cached.digest:
                await self._checked_now(target.local, reference)
                return await self._hit(target, reference, accept, cached, count)

        async def look() -> Manifest | None:
            found = await self._cached_manifest(target.local, reference)
            if found is None:
                return None
            if is_digest(reference) or await self._fresh(target, reference):
                return found
            if cached is not None and found.digest != cached.digest:
                return found  # another request just fetched the new one
            return None

        found, flight = await self._lead(f"manifest {target.local} {reference}", look)
        if flight is None:
            assert found is not None
            return await self._hit(target, reference, accept, found, count)
        try:
            fetched = await self._fetch_manifest(target, reference)
        except UpstreamFailure as exc:
            if cached is not None:
                log.warning("serving %s:%s from the cache: %s", target.local, reference, exc)
                stats.count(upstream.name, "stale")
                return await self._hit(target, reference, accept, cached, count)
            stats.count(upstream.name, "errors")
            headers = {"Retry-After": str(int(exc.retry_after) + 1)} if exc.retry_after else None
            raise UpstreamUnavailable(
                f"{exc}; {target.remote}:{reference} is not in the cache",
                detail={"upstream": upstream.name},
                headers=headers,
            ) from None
        finally:
            flight.land()
        stats.count(upstream.name, "misses")
        stats.count(upstream.name, "upstream_bytes", len(fetched.content))
        self._after_fill()
        return await self.registry.manifests.get(target.local, reference, accept)

    async def _fetch_manifest(self, target: ProxyTarget, reference: str) -> Manifest:
        upstream = target.upstream
        client = self.clients[upstream.name]
        try:
            fetched = await client.get_manifest(target.remote, reference)
        except UpstreamMissing as exc:
            raise ManifestUnknown(str(exc), detail={"reference": reference}) from None
        except UpstreamMismatch as exc:
            stats.count(upstream.name, "errors")
            raise UpstreamInvalid(str(exc), detail={"upstream": upstream.name}) from None
        try:
            await self.registry.manifests.put(
                target.local,
                reference,
                fetched.content,
                fetched.media_type,
                verify_references=False,
            )
        except (ManifestInvalid, ManifestUnknown) as exc:
            stats.count(upstream.name, "errors")
            raise UpstreamInvalid(
                f"upstream {upstream.name} sent a manifest Dockyard cannot store: {exc.message}",
                detail={"upstream": upstream.name, "media_type": fetched.media_type},
            ) from None
        if not is_digest(reference):
            self._checked[(target.local, reference)] = time.time()
        return Manifest(fetched.digest, fetched.media_type, fetched.content)

    async def _hit(
        self,
        target: ProxyTarget,
        reference: str,
        accept: Callable[[], list[str]] | None,
        cached: Manifest,
        count: bool,
    ) -> Manifest:
        manifest = cached
        if accept is not None and not is_digest(reference):
            manifest = await self.registry.manifests.get(target.local, reference, accept)
        if count:
            stats.count(target.upstream.name, "hits")
            stats.count(target.upstream.name, "saved_bytes", len(manifest.content))
        return manifest

    async def _fresh(self, target: ProxyTarget, tag: str) -> bool:
        ttl = target.upstream.tag_ttl_seconds
        now = time.time()
        checked = self._checked.get((target.local, tag), 0.0)
        if now - checked < ttl:
            return True
        stored = await self.ctx.read(lambda conn: mirror_db.tag_checked_at(conn, target.local, tag))
        if stored is not None and now - stored < ttl:
            self._checked[(target.local, tag)] = stored
            return True
        return False

    async def _checked_now(self, local: str, tag: str) -> None:
        now = time.time()
        self._checked[(local, tag)] = now
        if len(self._checked) > 100_000:
            self._checked.clear()
        # no cached read depends on when a tag was checked: other processes keep their caches
        await self.ctx.write(
            lambda conn: mirror_db.touch_tag(conn, local, tag, now), announce=False
        )

    # -- blobs ----------------------------------------------------------------------------

    async def _cached_blob(
        self, target: ProxyTarget, digest: str, ask_upstream: bool
    ) -> BlobInfo | None:
        """The blob if this repository has it; a blob the registry stores for another
        repository is linked here when a manifest cached here references it, or (with
        ``ask_upstream``) when the upstream confirms it has it in this repository."""
        try:
            return await self.registry.blobs.stat(target.local, digest)
        except (BlobUnknown, NameUnknown):
            pass

        def probe(conn: Connection) -> tuple[bool, bool]:
            stored = blob_db.size(conn, digest) is not None
            return stored, stored and mirror_db.referenced_here(conn, target.local, digest)

        stored, referenced = await self.ctx.read(probe)
        if not stored:
            return None
        if not referenced:
            if not ask_upstream:
                return None
            try:
                await self.clients[target.upstream.name].head_blob(target.remote, digest)
            except (UpstreamFailure, UpstreamMissing):
                return None
        size = await self.ctx.write(
            lambda conn: mirror_db.link_if_stored(conn, target.local, digest)
        )
        if size is None:
            return None
        return BlobInfo(digest, size, self.ctx.store.blob_path(digest))

    async def blob(
        self, target: ProxyTarget, digest: str, head: bool = False
    ) -> BlobInfo | BlobStream | BlobHead:
        """A cached blob (``BlobInfo``); else, for a GET, a ``BlobStream`` fetching it (for a
        HEAD, the upstream's answer without caching)."""
        parse_digest(digest)
        upstream = target.upstream
        found: BlobInfo | None = await self._cached_blob(target, digest, ask_upstream=False)
        if found is not None:
            return self._blob_hit(upstream, found, head)
        client = self.clients[upstream.name]
        if head:
            try:
                size = await client.head_blob(target.remote, digest)
            except UpstreamMissing as exc:
                raise BlobUnknown(str(exc), detail={"digest": digest}) from None
            except UpstreamFailure as exc:
                raise self._unavailable(upstream, exc, f"blob {digest}") from None
            return BlobHead(digest, size)

        async def look() -> BlobInfo | None:
            return await self._cached_blob(target, digest, ask_upstream=True)

        found, flight = await self._lead(f"blob {digest}", look)
        if flight is None:
            assert found is not None
            return self._blob_hit(upstream, found, head)
        try:
            return await self._open_blob(target, digest, flight)
        except BaseException:
            flight.land()
            raise

    def _blob_hit(self, upstream: Upstream, found: BlobInfo, head: bool) -> BlobInfo:
        if not head:
            stats.count(upstream.name, "hits")
            stats.count(upstream.name, "saved_bytes", found.size)
        return found

    def _unavailable(self, upstream: Upstream, exc: UpstreamFailure, what: str) -> RegistryError:
        stats.count(upstream.name, "errors")
        headers = {"Retry-After": str(int(exc.retry_after) + 1)} if exc.retry_after else None
        return UpstreamUnavailable(
            f"{exc}; {what} is not in the cache",
            detail={"upstream": upstream.name},
            headers=headers,
        )

    async def _open_blob(
        self, target: ProxyTarget, digest: str, flight: _Flight
    ) -> BlobStream | BlobInfo:
        """Start the upstream download; the blob is cached by a task of its own (which lands
        the flight when done) and streamed to the client as it is written."""
        upstream = target.upstream
        client = self.clients[upstream.name]
        opened = client.blob(target.remote, digest)
        try:
            download = await opened.__aenter__()
        except UpstreamMissing as exc:
            raise BlobUnknown(str(exc), detail={"digest": digest}) from None
        except UpstreamFailure as exc:
            raise self._unavailable(upstream, exc, f"blob {digest}") from None
        if download.size is None:
            # no length announced: a cut-short response could not be told from a whole one,
            # so cache it first and serve it from the cache
            try:
                await self._receive(target, digest, download.chunks(), None)
            finally:
                await opened.__aexit__(None, None, None)
                flight.land()
            return await self.registry.blobs.stat(target.local, digest)
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=8)
        listening = True

        async def tee() -> AsyncIterator[bytes]:
            async for chunk in download.chunks():
                yield chunk  # written to the upload first, then sent
                if listening:
                    await queue.put(chunk)

        async def fill() -> None:
            try:
                await self._receive(target, digest, tee(), download.size)
            finally:
                await opened.__aexit__(None, None, None)
                flight.land()

        task = asyncio.get_running_loop().create_task(fill())
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))

        async def body() -> AsyncIterator[bytes]:
            nonlocal listening
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, task}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        yield getter.result()
                        continue
                    getter.cancel()
                    while not queue.empty():
                        yield queue.get_nowait()
                    failure = task.exception()
                    if failure is not None:
                        # a new exception: raising the task's own would tie the client's
                        # response to it in a reference cycle, and the server would close
                        # the cut-short response only when the garbage collector ran
                        raise BlobCutShort(str(failure))
                    return
            finally:
                # the client is gone (or done): the task goes on caching for the next one
                listening = False
                while not queue.empty():
                    queue.get_nowait()

        return BlobStream(digest, download.size, body())

    async def _receive(
        self, target: ProxyTarget, digest: str, chunks: AsyncIterator[bytes], size: int | None
    ) -> None:
        """Write the blob to an upload of the proxied repository and publish it, or (on any
        failure) discard the upload."""
        upstream = target.upstream
        uploads = self.registry.uploads
        status = await uploads.start(target.local, parse_digest(digest).algorithm)
        try:
            await uploads.append(target.local, status.id, chunks, length=size)
            finished = await uploads.finish(target.local, status.id, digest)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await uploads.cancel(target.local, status.id)
            if isinstance(exc, UpstreamMismatch):
                stats.count(upstream.name, "errors")
                log.warning("discarded %s from %s: %s", digest, upstream.name, exc)
                raise UpstreamInvalid(str(exc), detail={"upstream": upstream.name}) from None
            if isinstance(exc, UpstreamFailure):
                log.warning("discarded %s from %s: %s", digest, upstream.name, exc)
                raise self._unavailable(upstream, exc, f"blob {digest}") from None
            raise
        stats.count(upstream.name, "misses")
        stats.count(upstream.name, "upstream_bytes", finished.size)
        self._after_fill()

    # -- tags -----------------------------------------------------------------------------

    async def tags(self, target: ProxyTarget, query: str) -> bytes | None:
        """The upstream's tag list with the name as the client asked for it; None when the
        upstream cannot answer (the cached tags are listed instead)."""
        try:
            return await self.clients[target.upstream.name].tags(target.remote, query)
        except UpstreamMissing as exc:
            raise NameUnknown(str(exc), detail={"name": target.local}) from None
        except UpstreamFailure:
            return None

    # -- the size limit -------------------------------------------------------------------

    def _after_fill(self) -> None:
        if self.cache_max_bytes is not None and not self._evicting:
            self._evicting = True
            task = asyncio.get_running_loop().create_task(self._evict_soon())
            self._tasks.add(task)
            task.add_done_callback(_forget(self._tasks))

    async def _evict_soon(self) -> None:
        from dockyard.mirror.eviction import evict

        try:
            await evict(self, self.cache_max_bytes or 0)
        except Exception:
            log.exception("evicting from the mirror cache failed")
        finally:
            self._evicting = False


def _forget(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: failures are logged where they happen

    return done
