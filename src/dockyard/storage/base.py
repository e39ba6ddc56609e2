"""The interface every blob storage driver implements.

Blobs are content-addressed and immutable once published. Uploads are private work areas
that become a blob only through ``publish_upload``, which must be atomic: a reader sees
either no blob or the whole, verified blob.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol


class UploadWriter(Protocol):
    """Appends to one upload; holds that upload's write lock until closed."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> Future[None] | None:
        """Append ``data``.

        A driver that stores bytes in the background (S3) may return a future: the caller
        waits for it before writing more, which bounds the bytes held in memory. A caller
        that does not wait is made to wait by the next write instead.
        """

    def flush(self) -> None:
        """Store every byte written so far, for ``upload_size``, ``read_upload`` and
        ``publish_upload`` (and other processes) to see. A no-op for local files."""

    def rollback(self) -> None:
        """Drop everything written through this writer (the upload is as it was)."""

    def close(self) -> None:
        """Flush what is left and release the upload's lock."""


@dataclass
class SocketBody:
    """A request body of ``length`` bytes still unread in a (non-blocking) socket: a
    writer with ``receive(body, hasher)`` takes it from there itself (the data port's
    uploads, http/dataport.py); anything else reads it as chunks."""

    sock: socket.socket
    length: int
    timeout: float = 300.0
    received: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while self.received < self.length:
            chunk = await asyncio.wait_for(
                loop.sock_recv(self.sock, min(self.length - self.received, 1024 * 1024)),
                self.timeout,
            )
            if not chunk:
                return
            self.received += len(chunk)
            yield chunk


class ReceivingWriter(UploadWriter, Protocol):
    """An upload writer that can take a body straight from its socket."""

    def receive(self, body: SocketBody, hasher: Any) -> None:
        """Append all of ``body``, updating ``hasher``; blocks (run it on a thread)."""


class BlobLock(Protocol):
    """Held while a blob is published and recorded, or checked and deleted by the garbage
    collector, so that the two never interleave for one digest."""

    def release(self) -> None: ...


class UploadBusy(Exception):
    """Another request is writing to the same upload right now."""


class BlobStore(Protocol):
    # True when every call is a network round trip (S3): callers on an event loop make
    # them from a thread. False for local files, cheap enough to call inline.
    remote: bool

    def stat_blob(self, digest: str) -> int | None:
        """The blob's size, or None when it is not stored."""

    def blob_path(self, digest: str) -> str | None:
        """A local file to send zero-copy, or None when the driver has none."""

    def blob_url(self, digest: str, ttl_seconds: int) -> str | None:
        """A URL any HTTP client can GET the blob from for ``ttl_seconds`` (a presigned
        S3 URL), or None when the driver has none."""

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The blob's bytes from ``start`` up to ``end`` (exclusive)."""

    def delete_blob(self, digest: str) -> None: ...

    def lock_blob(self, digest: str) -> BlobLock:
        """Wait for and take the lock of ``digest`` (shared by every process)."""

    def blob_mtime(self, digest: str) -> float | None:
        """When the blob's bytes were stored (epoch seconds), or None when absent."""

    def list_blobs(self) -> Iterator[str]: ...

    def create_upload(self, upload_id: str) -> None: ...

    def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far, or None when the upload does not exist."""

    def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        """Lock the upload and append at ``offset``, which must equal its size.

        Raises ``UploadBusy`` when another writer holds the upload and ``ValueError`` when
        ``offset`` is not the current size.
        """

    def read_upload(self, upload_id: str, start: int = 0) -> Iterator[bytes]: ...

    def publish_upload(self, upload_id: str, digest: str) -> None:
        """Atomically make the upload's bytes the blob ``digest`` and remove the upload
        (bytes written by a writer of this process that is still open included)."""

    def delete_upload(self, upload_id: str) -> None: ...

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        """Every upload id with the time it was last written (epoch seconds)."""
