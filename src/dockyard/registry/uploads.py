"""Blob uploads: sessions that become blobs only once their digest is verified.

Bytes are appended to the blob store's upload area while a running hash advances, inline
on the event loop (one write and one hash update per received chunk), or, for a body still
in its socket (the data port's uploads), by the writer itself on a transfer thread. The
running hash lives in the process that received the bytes; a chunk or a final PUT that lands
in another worker process re-hashes the bytes already stored (from disk, ~1.2 GB/s) and
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection

from dockyard.db import blobs as blob_db
from dockyard.db import repositories as repo_db
from dockyard.db import uploads as upload_db
from dockyard.oci.digest import SUPPORTED_ALGORITHMS, parse_digest
from dockyard.oci.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from dockyard.registry.context import Context, kept_or_undone
from dockyard.registry.lifecycle import enforce_quota
from dockyard.storage.base import SocketBody, UploadBusy, UploadWriter
from dockyard.storage.splice import BodyTimeout, BodyTruncated

_MAX_RUNNING_HASHES = 4096
T = TypeVar("T")
Body = AsyncIterable[bytes]  # chunks, or a SocketBody
# bodies taken straight from their sockets move on these threads (not the executor the
# database calls share: a transfer holds its thread for as long as the client sends)
_transfers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="transfer")


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    size: int


@dataclass
class _RunningHash:
    algorithm: str
    offset: int
    hasher: hashlib._Hash


class Uploads:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._hashes: OrderedDict[str, _RunningHash] = OrderedDict()

    async def start(self, name: str, hash_algorithm: str = "sha256") -> UploadStatus:
        if hash_algorithm not in SUPPORTED_ALGORITHMS:
            raise BlobUploadInvalid(
                f"unsupported digest-algorithm {hash_algorithm[:40]!r}; use sha256 or sha512"
            )
        upload_id = str(uuid.uuid4())
        await self.ctx.run(lambda: self.ctx.store.create_upload(upload_id))

        def create(conn: Connection) -> None:
            upload_db.create(conn, upload_id, repo_db.ensure(conn, name), hash_algorithm)
            enforce_quota(conn, name)

        try:
            await self.ctx.write(create)
        except BaseException:
            await self._store(lambda: self.ctx.store.delete_upload(upload_id))
            raise
        self._hashes[upload_id] = _RunningHash(hash_algorithm, 0, hashlib.new(hash_algorithm))
        return UploadStatus(upload_id, 0)

    async def _row(self, name: str, upload_id: str) -> upload_db.UploadRow:
        def lookup(conn: Connection) -> upload_db.UploadRow | None:
            row = upload_db.get(conn, upload_id)
            if row is None or repo_db.get_id(conn, name) != row.repository_id:
                return None
            return row

        row = await self.ctx.read(lookup) if _is_upload_id(upload_id) else None
        if row is None:
            raise BlobUploadUnknown(detail={"upload": upload_id[:80]})
        return row

    async def status(self, name: str, upload_id: str) -> UploadStatus:
        await self._row(name, upload_id)
        size = await self._store(lambda: self.ctx.store.upload_size(upload_id))
        if size is None:
            raise BlobUploadUnknown(detail={"upload": upload_id})
        return UploadStatus(upload_id, size)

    async def _store(self, fn: Callable[[], T]) -> T:
        """A blob store call: inline for local files (a system call), from a thread for a
        remote store (a network round trip that must not hold up the event loop)."""
        if not self.ctx.store.remote:
            return fn()
        return await self.ctx.run(fn)

    async def _open(self, upload_id: str, start: int | None) -> UploadWriter:
        size = await self._store(lambda: self.ctx.store.upload_size(upload_id))
        if size is None:
            raise BlobUploadUnknown(detail={"upload": upload_id})
        if start is not None and start != size:
            raise RangeInvalid(
                f"chunk starts at byte {start} but the upload has {size} bytes",
                headers={"Range": f"0-{size - 1}" if size else "0-0"},
            )
        try:
            if not self.ctx.store.remote:
                return self.ctx.store.open_upload(upload_id, size)
            # a request cancelled meanwhile closes the writer (and the upload's lock) as
            # soon as the thread has it
            store, executor = self.ctx.store, self.ctx.executor
            return await kept_or_undone(
                self.ctx.run(lambda: store.open_upload(upload_id, size)),
                lambda writer: executor.submit(writer.close),
            )
        except UploadBusy:
            raise RangeInvalid(
                "another request is writing to this upload",
                headers={"Range": f"0-{size - 1}" if size else "0-0"},
            ) from None
        except ValueError:  # grew between stat and lock: a concurrent writer finished
            raise RangeInvalid("the upload changed while this chunk arrived") from None
        except FileNotFoundError:  # finished or cancelled by a concurrent request
            raise BlobUploadUnknown(detail={"upload": upload_id}) from None

    async def _running_hash(self, upload_id: str, algorithm: str, offset: int) -> _RunningHash:
        """The hash of the upload's first ``offset`` bytes, brought up to date from storage.

        Called with the upload's write lock held. Bytes below any offset this process has
        hashed never change while the upload is at least that long (uploads only grow; a
        failed chunk is cut back to where it started), so a state left behind by an earlier
        chunk only needs the bytes other processes added since: chunks alternating between
        workers cost linear, not quadratic, hashing.
        """
        state = self._hashes.get(upload_id)
        if state is not None and state.algorithm == algorithm and state.offset == offset:
            self._hashes.move_to_end(upload_id)
            return state
        if state is None or state.algorithm != algorithm or state.offset > offset:
            state = _RunningHash(algorithm, 0, hashlib.new(algorithm))
        start = state.offset
        hasher = state.hasher.copy()

        def catch_up() -> _RunningHash:
            seen = start
            for chunk in self.ctx.store.read_upload(upload_id, start):
                take = chunk[: offset - seen]
                hasher.update(take)
                seen += len(take)
                if seen >= offset:
                    break
            return _RunningHash(algorithm, seen, hasher)

        state = await self.ctx.run(catch_up)
        self._hashes[upload_id] = state
        self._hashes.move_to_end(upload_id)
        while len(self._hashes) > _MAX_RUNNING_HASHES:
            self._hashes.popitem(last=False)
        return state

    async def _receive(
        self,
        upload_id: str,
        writer: UploadWriter,
        state: _RunningHash,
        chunks: Body,
        length: int | None,
    ) -> None:
        """Append the body to the upload, all of it or (on any failure) none of it."""
        try:
            receive = getattr(writer, "receive", None)
            if isinstance(chunks, SocketBody) and receive is not None:
                await _from_socket(receive, chunks, state.hasher)
                received = chunks.received
            else:
                received = await _write_chunks(writer, state, chunks, length)
            if length is not None and received != length:
                raise SizeInvalid(
                    f"received {received} bytes but the request declared {length}",
                    detail={"declared": length, "received": received},
                )
            await self._store(writer.flush)
        except BaseException:
            await self._store(writer.rollback)
            self._hashes.pop(upload_id, None)
            raise
        state.offset += received

    async def append(
        self,
        name: str,
        upload_id: str,
        chunks: Body,
        start: int | None = None,
        length: int | None = None,
    ) -> UploadStatus:
        """A PATCH: stream a chunk onto the end of the upload."""
        row = await self._row(name, upload_id)
        writer = await self._open(upload_id, start)
        try:
            state = await self._running_hash(upload_id, row.hash_algorithm, writer.size)
            await self._receive(upload_id, writer, state, chunks, length)
            return UploadStatus(upload_id, writer.size)
        finally:
            await self._store(writer.close)

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: str,
        chunks: Body | None = None,
        length: int | None = None,
        start: int | None = None,
    ) -> UploadStatus:
        """The final PUT: take the last chunk, verify digest and size, publish the blob."""
        parsed = parse_digest(digest)
        row = await self._row(name, upload_id)
        writer = await self._open(upload_id, start)
        try:
            if chunks is not None:
                state = await self._running_hash(upload_id, row.hash_algorithm, writer.size)
                await self._receive(upload_id, writer, state, chunks, length)
            size = writer.size
            state = await self._running_hash(upload_id, parsed.algorithm, size)
            actual = f"{parsed.algorithm}:{state.hasher.copy().hexdigest()}"
            if actual != digest:
                await self._store(writer.rollback)
                raise DigestInvalid(
                    "the uploaded content does not match the digest given",
                    detail={"expected": digest, "actual": actual, "size": size},
                )

            def commit(conn: Connection) -> None:
                blob_db.record(conn, digest, size)
                blob_db.link(conn, row.repository_id, digest)
                upload_db.remove(conn, upload_id)
                enforce_quota(conn, name)

            # publish and record under the blob's lock: the garbage collector takes it too.
            # Wait for it on a thread of the default pool: waiters holding ctx.executor
            # threads would starve the holder, which needs one to publish and commit.
            # a request cancelled while waiting releases the lock as soon as the thread has it
            lock = await kept_or_undone(
                asyncio.to_thread(self.ctx.store.lock_blob, digest), lambda lock: lock.release()
            )
            try:
                await self.ctx.run(lambda: self.ctx.store.publish_upload(upload_id, digest))
                await self.ctx.write(commit)
            finally:
                lock.release()
            self._hashes.pop(upload_id, None)
            return UploadStatus(upload_id, size)
        finally:
            await self._store(writer.close)

    async def cancel(self, name: str, upload_id: str) -> None:
        await self._row(name, upload_id)
        await self.ctx.write(lambda conn: upload_db.remove(conn, upload_id))
        await self._store(lambda: self.ctx.store.delete_upload(upload_id))
        self._hashes.pop(upload_id, None)

    async def purge_stale(self, max_age_seconds: float) -> int:
        """Remove uploads untouched for ``max_age_seconds`` (their rows and their bytes).

        Safe to run in several processes at once: every step is idempotent. An upload's age
        is the time its bytes were last written, so a slow push in progress is kept.
        """
        cutoff = time.time() - max_age_seconds
        store = self.ctx.store

        def stale_files() -> list[str]:
            return [upload_id for upload_id, mtime in store.list_uploads() if mtime < cutoff]

        stale = await self.ctx.run(stale_files)
        rows = await self.ctx.read(lambda conn: upload_db.older_than(conn, cutoff))
        # rows whose bytes are gone (a crash between publishing and committing)
        orphans = await self.ctx.run(lambda: [i for i in rows if store.upload_size(i) is None])
        victims = sorted(set(stale) | set(orphans))
        for upload_id in victims:
            await self.ctx.write(partial(_remove_row, upload_id=upload_id))
            await self._store(partial(store.delete_upload, upload_id))
            self._hashes.pop(upload_id, None)
        return len(victims)

    async def push(self, name: str, digest: str, chunks: Body, length: int | None) -> UploadStatus:
        """A single-request upload (``POST ?digest=`` with the whole blob as the body)."""
        parsed = parse_digest(digest)
        status = await self.start(name, parsed.algorithm)
        try:
            return await self.finish(name, status.id, digest, chunks, length)
        except BaseException:
            with contextlib.suppress(BlobUploadUnknown):
                await self.cancel(name, status.id)
            raise


async def _from_socket(
    receive: Callable[[SocketBody, object], None], body: SocketBody, hasher: object
) -> None:
    """Run ``receive(body, hasher)`` on a transfer thread; a cancelled request shuts the
    socket, so the thread stops at once, and waits for it (the caller then rolls back)."""
    transfer = asyncio.get_running_loop().run_in_executor(_transfers, receive, body, hasher)
    try:
        await asyncio.shield(transfer)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            body.sock.shutdown(socket.SHUT_RDWR)
        await asyncio.wait([transfer])
        raise
    except (BodyTruncated, BodyTimeout, ConnectionError) as exc:
        raise SizeInvalid(
            f"received {body.received} bytes but the request declared {body.length} ({exc})",
            detail={"declared": body.length, "received": body.received},
        ) from None


async def _write_chunks(
    writer: UploadWriter, state: _RunningHash, chunks: Body, length: int | None
) -> int:
    received = 0
    async for chunk in chunks:
        if not chunk:
            continue
        backlog = writer.write(chunk)
        state.hasher.update(chunk)
        received += len(chunk)
        if length is not None and received > length:
            raise SizeInvalid("request body is longer than its Content-Length / Content-Range")
        if backlog is not None:  # a remote store is still storing earlier bytes
            await asyncio.shield(asyncio.wrap_future(backlog))
    return received


def _remove_row(conn: Connection, upload_id: str) -> bool:
    return upload_db.remove(conn, upload_id)


def _is_upload_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def check_content_range(value: str | None) -> tuple[int, int] | None:
    """Parse ``Content-Range`` of an upload chunk: ``0-1023`` or ``bytes=0-1023`` (inclusive)."""
    if value is None:
        return None
    text = value.strip()
    for prefix in ("bytes=", "bytes "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.split("/", 1)[0]
    start_text, sep, end_text = text.partition("-")
    if not sep or not start_text.isdigit() or not end_text.isdigit():
        raise RangeInvalid(f"invalid Content-Range {value[:60]!r}")
    start, end = int(start_text), int(end_text)
    if end < start or end >= 2**62:
        raise RangeInvalid(f"invalid Content-Range {value[:60]!r}")
    return start, end
