"""Blobs as files under a root directory.

Layout::

    <root>/blobs/<algorithm>/<first two hex>/<hex>   published blobs
    <root>/uploads/<upload id>                        uploads in progress

Publishing is fsync + rename on the same filesystem, so a blob file is either absent or
complete, whatever moment the process is killed at.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dockyard.storage import splice
from dockyard.storage.base import SocketBody, UploadBusy

_UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_READ_CHUNK = 1024 * 1024
# With fsync on, an upload's bytes are flushed to disk in the background every this many
# bytes while it is received, so the fsync before publishing has only the tail left to wait
# for (the disk writes while the network reads, instead of after).
WRITEBACK_BYTES = 64 * 1024 * 1024
_writeback = ThreadPoolExecutor(max_workers=4, thread_name_prefix="writeback")


def _flush_quietly(fd: int) -> None:
    # an error here shows again, and counts, in the fsync before publishing
    with contextlib.suppress(OSError):
        os.fdatasync(fd)


class FileUploadWriter:
    def __init__(self, path: Path, offset: int, writeback_bytes: int = 0) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadBusy(str(path)) from None
        # The upload may have been published (renamed into blobs/) between our open and
        # our lock: then the path no longer names the file we hold.
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != held.st_ino or held.st_nlink == 0:
            os.close(fd)
            raise FileNotFoundError(str(path))
        size = held.st_size
        if size != offset:
            os.close(fd)
            raise ValueError(f"upload has {size} bytes, chunk starts at {offset}")
        self._fd = fd
        self._path = path
        self._start = size
        self._size = size
        self._writeback_bytes = writeback_bytes
        # flush each time the file grows past a multiple of writeback_bytes: an upload sent
        # as many smaller PATCHes (a writer each) is flushed ahead as one big PUT is
        self._flush_at = self._next_flush(size)
        self._flushing: Future[None] | None = None
        # flushes use a descriptor of their own, without the lock: closing this writer
        # (and so releasing the upload to its next request) never waits for one
        self._flush_fd = -1
        if writeback_bytes:
            with contextlib.suppress(OSError):  # then no flushing ahead: fsync does it all
                self._flush_fd = os.open(path, os.O_RDONLY)
                if os.fstat(self._flush_fd).st_ino != held.st_ino:
                    os.close(self._flush_fd)
                    self._flush_fd = -1

    def _next_flush(self, size: int) -> int:
        """The next multiple of writeback_bytes above ``size``."""
        step = self._writeback_bytes
        return (size // step + 1) * step if step else 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._grew(len(data))

    def receive(self, body: SocketBody, hasher: Any) -> None:
        """Append ``body.length`` bytes straight from the body's socket, hashing them
        with ``hasher`` (storage/splice.py). Blocks: run it on a thread."""
        # splice writes at an offset, which a descriptor opened to append refuses
        write_fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            read_fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(write_fd)
            raise

        def grew(count: int) -> None:
            self._grew(count)
            body.received += count

        try:
            if os.fstat(write_fd).st_ino != os.fstat(self._fd).st_ino:
                raise FileNotFoundError(str(self._path))  # replaced since we locked it
            splice.receive(
                body.sock.fileno(),
                write_fd,
                read_fd,
                self._size,
                body.length,
                hasher,
                body.timeout,
                grew,
            )
        finally:
            os.close(write_fd)
            os.close(read_fd)

    def _grew(self, count: int) -> None:
        self._size += count
        if (
            self._flush_fd >= 0
            and self._size >= self._flush_at
            and (self._flushing is None or self._flushing.done())
        ):
            self._flush_at = self._next_flush(self._size)
            self._flushing = _writeback.submit(_flush_quietly, self._flush_fd)

    def flush(self) -> None:
        pass  # every write went straight to the file

    def rollback(self) -> None:
        if self._fd >= 0 and self._size != self._start:
            os.ftruncate(self._fd, self._start)
            self._size = self._start

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1
        if self._flush_fd >= 0:
            flush_fd, self._flush_fd = self._flush_fd, -1
            if self._flushing is None or self._flushing.done():
                os.close(flush_fd)
            else:  # the flush still runs on it: close it after
                self._flushing.add_done_callback(lambda _: os.close(flush_fd))


class FileLock:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1


class FilesystemBlobStore:
    remote = False

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._blobs = root / "blobs"
        self._uploads = root / "uploads"
        self._locks = root / "locks"
        for directory in (self._blobs, self._uploads, self._locks):
            directory.mkdir(parents=True, exist_ok=True)

    # blobs

    def _blob_file(self, digest: str) -> Path:
        algorithm, _, hex_part = digest.partition(":")
        if not hex_part or "/" in digest or ".." in digest:
            raise ValueError(f"not a digest: {digest!r}")
        return self._blobs / algorithm / hex_part[:2] / hex_part

    def stat_blob(self, digest: str) -> int | None:
        try:
            return os.stat(self._blob_file(digest)).st_size
        except FileNotFoundError:
            return None

    def blob_path(self, digest: str) -> str | None:
        return str(self._blob_file(digest))

    def blob_url(self, digest: str, ttl_seconds: int) -> str | None:
        return None  # served from blob_path

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with open(self._blob_file(digest), "rb") as handle:
            handle.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
                chunk = handle.read(size)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def delete_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blob_file(digest).unlink()

    def lock_blob(self, digest: str) -> FileLock:
        # 256 lock files, by the first byte of the digest: few files, little contention
        _, _, hex_part = digest.partition(":")
        return FileLock(self._locks / f"{hex_part[:2] or 'xx'}.lock")

    def blob_mtime(self, digest: str) -> float | None:
        try:
            return os.stat(self._blob_file(digest)).st_mtime
        except FileNotFoundError:
            return None

    def list_blobs(self) -> Iterator[str]:
        for algorithm_dir in self._blobs.iterdir():
            for prefix in algorithm_dir.iterdir():
                for blob in prefix.iterdir():
                    if not blob.name.startswith("."):
                        yield f"{algorithm_dir.name}:{blob.name}"

    # uploads

    def _upload_file(self, upload_id: str) -> Path:
        if not _UPLOAD_ID_RE.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self._uploads / upload_id

    def create_upload(self, upload_id: str) -> None:
        self._upload_file(upload_id).touch(exist_ok=False)

    def link_upload(self, upload_id: str, source: str) -> None:
        """Create upload ``upload_id`` as a hard link to the file ``source``: no bytes copied.

        For ``dockyard import``; raises ``OSError`` (``EXDEV`` across filesystems) when the
        link cannot be made, and the caller copies instead. The linked file must never be
        changed in place afterwards (registries replace files, they do not rewrite them).
        """
        os.link(source, self._upload_file(upload_id))

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return os.stat(self._upload_file(upload_id)).st_size
        except FileNotFoundError:
            return None

    def open_upload(self, upload_id: str, offset: int) -> FileUploadWriter:
        writeback = WRITEBACK_BYTES if self.fsync else 0
        return FileUploadWriter(self._upload_file(upload_id), offset, writeback)

    def read_upload(self, upload_id: str, start: int = 0) -> Iterator[bytes]:
        with open(self._upload_file(upload_id), "rb") as handle:
            handle.seek(start)
            while chunk := handle.read(_READ_CHUNK):
                yield chunk

    def publish_upload(self, upload_id: str, digest: str) -> None:
        source = self._upload_file(upload_id)
        target = self._blob_file(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.fsync:  # on disk before visible: survives power loss, not only kill -9
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        # Same content under the same name: replacing an existing blob is harmless.
        os.replace(source, target)
        if self.fsync:
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def delete_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_file(upload_id).unlink()

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        for entry in os.scandir(self._uploads):
            if entry.is_file():
                yield entry.name, entry.stat().st_mtime
