"""Blobs in an S3-compatible object store: AWS S3, MinIO, Ceph RGW, SeaweedFS.

Layout, every key under an optional prefix::

    <prefix>/blobs/<algorithm>/<first two hex>/<hex>            published blobs
    <prefix>/uploads/<upload id>/created                          the upload exists (empty)
    <prefix>/uploads/<upload id>/<start offset, 20 digits>        its bytes, in chunk objects

An upload is a run of chunk objects named by the offset they start at: each writer session
(one PATCH) appends chunk objects of ``chunk_bytes`` (the last one of a session shorter), so
the upload's size is the end of its last chunk and any process or node can read it back in
order. Nothing is visible as a blob until ``publish_upload`` assembles the chunks into the
blob's key, which S3 makes appear whole or not at all (CopyObject, or a multipart upload of
server-side part copies, or of the bytes streamed through), then removes the upload.

Two things S3 cannot do are done with ``Locks`` (one machine: ``FileLocks``; several nodes:
Redis): one writer per upload (``upload-<id>``), and keeping a publish apart from the garbage
collector's check-and-delete of the same digest (``blob-<first two hex>``).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from dockyard.storage.base import BlobLock, UploadBusy
from dockyard.storage.locks import Locks

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024
_UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_OFFSET_DIGITS = 20
_MARKER = "created"
_READ_CHUNK = 1 * MIB
MIN_PART = 5 * MIB  # S3's smallest part but the last
_STREAM_PART = 8 * MIB
_MAX_PARTS = 10_000
_MAX_COPY = 5 * 1024 * MIB  # the largest CopyObject / UploadPartCopy source
_PARALLEL_PARTS = 4
# what an S3 service answers for a call it does not implement (server-side copies)
_UNSUPPORTED = {"NotImplemented", "NotSupported", "XNotImplemented", "MethodNotAllowed"}


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS S3 itself
    region: str = "us-east-1"
    access_key: str | None = None  # None: the usual AWS credential chain
    secret_key: str | None = None
    addressing: Literal["path", "virtual"] | None = None  # None: path with an endpoint
    chunk_bytes: int = 16 * MIB


def make_client(options: S3Options) -> S3Client:
    """A boto3 client for ``options``: SigV4, checksums only where S3 requires them (some
    S3-compatible services reject the newer default ones), a connection pool large enough for
    the threads that use it."""
    addressing = options.addressing or ("path" if options.endpoint else "virtual")
    config = Config(
        region_name=options.region,
        signature_version="s3v4",
        s3={"addressing_style": addressing},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=64,
        connect_timeout=10,
        read_timeout=120,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=options.endpoint,
        aws_access_key_id=options.access_key,
        aws_secret_access_key=options.secret_key,
        config=config,
    )


@dataclass(frozen=True, slots=True)
class _Chunk:
    key: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True, slots=True)
class _UploadState:
    exists: bool
    chunks: list[_Chunk]  # the contiguous run from offset 0, in order
    stray: list[str]  # every other key under the upload (chunks past a gap)

    @property
    def size(self) -> int:
        return self.chunks[-1].end if self.chunks else 0


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _missing(exc: ClientError) -> bool:
    return _status(exc) == 404 or _error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def _unsupported(exc: ClientError) -> bool:
    return _status(exc) == 501 or _error_code(exc) in _UNSUPPORTED


class S3UploadWriter:
    """Appends to one upload in chunk objects of ``chunk_bytes``.

    A full chunk is stored by a background thread while the next one fills: at most one PUT
    in flight and one chunk buffered, so an upload in progress holds at most about twice
    ``chunk_bytes`` in memory whatever the size of the request.
    """

    def __init__(self, store: S3BlobStore, upload_id: str, offset: int, lock: BlobLock) -> None:
        self._store = store
        self._upload_id = upload_id
        self._lock: BlobLock | None = lock
        self._start = offset
        self._size = offset
        self._buffer = bytearray()
        self._buffer_start = offset
        self._inflight: Future[None] | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> Future[None] | None:
        if not data:
            return None
        inflight = self._inflight
        if inflight is not None and inflight.done():
            inflight.result()  # a failed PUT fails the request now
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) < self._store.chunk_bytes:
            return None
        if inflight is not None and not inflight.done():
            if len(self._buffer) < 2 * self._store.chunk_bytes:
                return inflight  # wait for it; the next write (or flush) sends this chunk
            inflight.result()  # the caller did not wait: wait here
        self._send()
        return None

    def _send(self) -> None:
        data, self._buffer = self._buffer, bytearray()
        key = self._store.chunk_key(self._upload_id, self._buffer_start)
        self._buffer_start += len(data)
        self._inflight = self._store.executor.submit(self._store.put, key, data)

    def flush(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()
        if self._buffer:
            data, self._buffer = self._buffer, bytearray()
            self._store.put(self._store.chunk_key(self._upload_id, self._buffer_start), data)
            self._buffer_start += len(data)

    def rollback(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            with contextlib.suppress(Exception):  # it is being undone anyway
                inflight.result()
        self._buffer = bytearray()
        state = self._store.upload_state(self._upload_id)
        # this writer holds the upload: every chunk from where it started is its own
        mine = [chunk.key for chunk in state.chunks if chunk.start >= self._start]
        self._store.delete_keys(mine + state.stray)
        self._size = self._buffer_start = self._start

    def close(self) -> None:
        if self._lock is None:
            return
        try:
            self.flush()
        except BaseException:
            try:
                self.rollback()
            finally:
                self._release()
            raise
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            self._store.forget_writer(self._upload_id, self)
            lock.release()


class S3BlobStore:
    remote = True

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        locks: Locks,
        prefix: str = "",
        chunk_bytes: int = 16 * MIB,
    ) -> None:
        if not MIN_PART <= chunk_bytes <= 1024 * MIB:
            raise ValueError("chunk_bytes must be from 5 MiB (S3's smallest part) to 1 GiB")
        self.client = client
        self.bucket = bucket
        self.locks = locks
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.chunk_bytes = chunk_bytes
        # background PUTs of upload chunks and parallel part copies
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="s3")
        # writers open in this process, so that publishing an upload stores what its writer
        # still holds (a caller may publish before closing, as the registry does)
        self._writers: dict[str, S3UploadWriter] = {}
        self._writers_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: S3Options, locks: Locks) -> S3BlobStore:
        return cls(
            make_client(options),
            options.bucket,
            locks,
            prefix=options.prefix,
            chunk_bytes=options.chunk_bytes,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False)

    # keys

    def _blob_key(self, digest: str) -> str:
        if not _DIGEST_RE.fullmatch(digest) or ".." in digest:
            raise ValueError(f"not a digest: {digest!r}")
        algorithm, _, hex_part = digest.partition(":")
        return f"{self.prefix}blobs/{algorithm}/{hex_part[:2]}/{hex_part}"

    def _upload_prefix(self, upload_id: str) -> str:
        if not _UPLOAD_ID_RE.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}uploads/{upload_id}/"

    def chunk_key(self, upload_id: str, start: int) -> str:
        return f"{self._upload_prefix(upload_id)}{start:0{_OFFSET_DIGITS}d}"

    # low-level calls

    def put(self, key: str, data: bytes | bytearray) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=_body(data))

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield dict(item)

    def delete_keys(self, keys: list[str]) -> None:
        for first in range(0, len(keys), 1000):
            batch = keys[first : first + 1000]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise OSError(f"S3 refused to delete {len(errors)} objects: {errors[0]}")

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    # blobs

    def stat_blob(self, digest: str) -> int | None:
        head = self._head(self._blob_key(digest))
        return None if head is None else int(head["ContentLength"])

    def blob_path(self, digest: str) -> str | None:
        return None  # no local file: see blob_url and read_blob

    def blob_url(self, digest: str, ttl_seconds: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._blob_key(digest)},
            ExpiresIn=ttl_seconds,
        )

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        yield from self._read(self._blob_key(digest), start, end)

    def _read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = self.client.get_object(**arguments)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            if _error_code(exc) == "InvalidRange":
                return  # starts at or past the end: nothing to read
            raise
        body = response["Body"]
        try:
            yield from body.iter_chunks(_READ_CHUNK)
        finally:
            body.close()

    def delete_blob(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._blob_key(digest))

    def lock_blob(self, digest: str) -> BlobLock:
        # 256 locks, by the first byte of the digest, as the filesystem store has
        _, _, hex_part = digest.partition(":")
        bucket = hex_part[:2] if re.fullmatch(r"[0-9a-f]{2}", hex_part[:2]) else "xx"
        return self.locks.acquire(f"blob-{bucket}")

    def blob_mtime(self, digest: str) -> float | None:
        head = self._head(self._blob_key(digest))
        return None if head is None else float(head["LastModified"].timestamp())

    def list_blobs(self) -> Iterator[str]:
        root = f"{self.prefix}blobs/"
        for item in self._list(root):
            parts = str(item["Key"])[len(root) :].split("/")
            if len(parts) == 3 and parts[2].startswith(parts[1]) and parts[2]:
                yield f"{parts[0]}:{parts[2]}"

    # uploads

    def upload_state(self, upload_id: str) -> _UploadState:
        prefix = self._upload_prefix(upload_id)
        exists = False
        chunks: list[_Chunk] = []
        others: list[str] = []
        for item in self._list(prefix):
            key = str(item["Key"])
            name = key[len(prefix) :]
            if name == _MARKER:
                exists = True
            elif len(name) == _OFFSET_DIGITS and name.isdigit():
                chunks.append(_Chunk(key, int(name), int(item["Size"])))
            else:
                others.append(key)
        chunks.sort(key=lambda chunk: chunk.start)
        run: list[_Chunk] = []
        for chunk in chunks:
            if chunk.start != (run[-1].end if run else 0) or chunk.size == 0:
                others.append(chunk.key)  # past a gap: left by a writer that died mid-way
            else:
                run.append(chunk)
        return _UploadState(exists, run, others)

    def create_upload(self, upload_id: str) -> None:
        self.put(f"{self._upload_prefix(upload_id)}{_MARKER}", b"")

    def upload_size(self, upload_id: str) -> int | None:
        state = self.upload_state(upload_id)
        return state.size if state.exists else None

    def open_upload(self, upload_id: str, offset: int) -> S3UploadWriter:
        self._upload_prefix(upload_id)  # refuse a bad id before taking a lock for it
        lock = self.locks.try_acquire(f"upload-{upload_id}")
        if lock is None:
            raise UploadBusy(upload_id)
        try:
            state = self.upload_state(upload_id)
            if not state.exists:
                raise FileNotFoundError(upload_id)
            if state.stray:  # a writer died mid-way: what it left past the gap is dropped
                self.delete_keys(state.stray)
            if state.size != offset:
                raise ValueError(f"upload has {state.size} bytes, chunk starts at {offset}")
        except BaseException:
            lock.release()
            raise
        writer = S3UploadWriter(self, upload_id, offset, lock)
        with self._writers_lock:
            self._writers[upload_id] = writer
        return writer

    def forget_writer(self, upload_id: str, writer: S3UploadWriter) -> None:
        with self._writers_lock:
            if self._writers.get(upload_id) is writer:
                del self._writers[upload_id]

    def read_upload(self, upload_id: str, start: int = 0) -> Iterator[bytes]:
        state = self.upload_state(upload_id)
        if not state.exists:
            raise FileNotFoundError(upload_id)
        for chunk in state.chunks:
            if chunk.end > start:
                yield from self._read(chunk.key, max(0, start - chunk.start))

    def publish_upload(self, upload_id: str, digest: str) -> None:
        with self._writers_lock:
            writer = self._writers.get(upload_id)
        if writer is not None:
            writer.flush()
        state = self.upload_state(upload_id)
        if not state.exists:
            raise FileNotFoundError(upload_id)
        target = self._blob_key(digest)
        chunks = state.chunks
        total = state.size
        try:
            if not chunks:
                self.put(target, b"")
            elif len(chunks) == 1:
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={"Bucket": self.bucket, "Key": chunks[0].key},
                )
            elif total <= _STREAM_PART:
                self._publish_streamed(chunks, target)
            else:
                plan = _plan_parts(chunks)
                if len(plan) > _MAX_PARTS:
                    self._publish_streamed(chunks, target)
                else:
                    self._publish_assembled(plan, target)
        except ClientError as exc:
            if not _unsupported(exc):
                raise
            self._publish_streamed(chunks, target)  # no server-side copies here
        self._remove_upload(upload_id, state)

    def _publish_assembled(self, plan: list[_Part], target: str) -> None:
        """One multipart upload: parts that are whole ranges of a chunk object are copied by
        S3 itself; the short pieces between them are read back and sent."""
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload_id = upload["UploadId"]
        try:

            def send(number: int, part: _Part) -> CompletedPartTypeDef:
                if len(part) == 1 and part[0].copyable:
                    piece = part[0]
                    result = self.client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": piece.key},
                        CopySourceRange=f"bytes={piece.start}-{piece.end - 1}",
                    )
                    return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}
                data = bytearray()
                for piece in part:
                    for bytes_read in self._read(piece.key, piece.start, piece.end):
                        data += bytes_read
                return self._upload_part(target, upload_id, number, data)

            parts = _in_parallel(self.executor, send, plan)
            self._complete(target, upload_id, parts)
        except BaseException:
            self._abort(target, upload_id)
            raise

    def _publish_streamed(self, chunks: list[_Chunk], target: str) -> None:
        """Read the chunks back and write them out as the blob: one PUT when small, else a
        multipart upload of parts of at least 8 MiB."""
        total = chunks[-1].end
        if total <= _STREAM_PART:
            data = bytearray()
            for chunk in chunks:
                for piece in self._read(chunk.key):
                    data += piece
            self.put(target, data)
            return
        part_size = max(_STREAM_PART, -(-total // (_MAX_PARTS - 1)))
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload_id = upload["UploadId"]
        parts: list[CompletedPartTypeDef] = []

        def send(data: bytes | bytearray) -> None:
            number = len(parts) + 1
            parts.append(self._upload_part(target, upload_id, number, data))

        try:
            buffer = bytearray()
            for chunk in chunks:
                for piece in self._read(chunk.key):
                    buffer += piece
                    if len(buffer) >= part_size:
                        send(buffer[:part_size])
                        del buffer[:part_size]
            if buffer or not parts:
                send(buffer)
            self._complete(target, upload_id, parts)
        except BaseException:
            self._abort(target, upload_id)
            raise

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray
    ) -> CompletedPartTypeDef:
        result = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=_body(data)
        )
        return {"PartNumber": number, "ETag": result["ETag"]}

    def _complete(self, key: str, upload_id: str, parts: list[CompletedPartTypeDef]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def _abort(self, key: str, upload_id: str) -> None:
        # else the incomplete multipart upload is kept (and billed) until a lifecycle rule
        # of the bucket ends it
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def _remove_upload(self, upload_id: str, state: _UploadState) -> None:
        # the marker first: from then on the upload does not exist, whatever is left of it
        # (a crash in between leaves chunks that list_uploads still names, for the purge)
        if state.exists:
            self.client.delete_object(
                Bucket=self.bucket, Key=f"{self._upload_prefix(upload_id)}{_MARKER}"
            )
        self.delete_keys([chunk.key for chunk in state.chunks] + state.stray)

    def delete_upload(self, upload_id: str) -> None:
        self._remove_upload(upload_id, self.upload_state(upload_id))

    def list_uploads(self) -> Iterator[tuple[str, float]]:
        """Every upload id with its newest object's time, including the remains of an
        upload whose removal was cut short (so that a purge finishes it)."""
        root = f"{self.prefix}uploads/"
        newest: dict[str, float] = {}
        for item in self._list(root):
            upload_id = str(item["Key"])[len(root) :].split("/", 1)[0]
            if _UPLOAD_ID_RE.fullmatch(upload_id):
                mtime = float(item["LastModified"].timestamp())
                newest[upload_id] = max(mtime, newest.get(upload_id, 0.0))
        yield from newest.items()


@dataclass(frozen=True, slots=True)
class _Piece:
    """Bytes ``[start, end)`` of one chunk object."""

    key: str
    start: int
    end: int
    copyable: bool  # may be a part of its own (S3 copies it: at least 5 MiB, or the last)


_Part = list[_Piece]


def _plan_parts(chunks: list[_Chunk]) -> list[_Part]:
    """The parts of a multipart upload that assembles ``chunks``, copying as much as S3
    allows: every part but the last must be at least 5 MiB, so a chunk object that big (or
    its remainder) is copied as it is, and the short tails that PATCHes end with are
    joined, with the head of what follows, into parts of just over 5 MiB to be sent."""
    parts: list[_Part] = []
    pending: _Part = []
    pending_size = 0
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        position = 0
        if pending:
            take = min(MIN_PART - pending_size, chunk.size)
            pending.append(_Piece(chunk.key, 0, take, False))
            pending_size += take
            position = take
            if pending_size >= MIN_PART:
                parts.append(pending)
                pending, pending_size = [], 0
        rest = chunk.size - position
        if rest <= 0:
            continue
        if rest >= MIN_PART or (last and not pending):
            for start in range(position, chunk.size, _MAX_COPY):  # a part copies <= 5 GiB
                parts.append([_Piece(chunk.key, start, min(start + _MAX_COPY, chunk.size), True)])
        else:
            pending.append(_Piece(chunk.key, position, chunk.size, False))
            pending_size += rest
    if pending:
        parts.append(pending)
    return parts


def _body(data: bytes | bytearray) -> bytes:
    # botocore sends a bytearray as it is (its stubs say bytes): no copy of a whole chunk
    return cast(bytes, data)


def _in_parallel(
    executor: ThreadPoolExecutor,
    send: Callable[[int, _Part], CompletedPartTypeDef],
    plan: list[_Part],
) -> list[CompletedPartTypeDef]:
    """Run ``send(part number, part)`` for every part, a few at a time (each sent part is
    held in memory while it goes), and return what they give in order."""
    results: list[CompletedPartTypeDef] = []
    window = threading.BoundedSemaphore(_PARALLEL_PARTS)
    futures: list[Future[CompletedPartTypeDef]] = []

    def run(number: int, part: _Part) -> CompletedPartTypeDef:
        try:
            return send(number, part)
        finally:
            window.release()

    try:
        for number, part in enumerate(plan, start=1):
            window.acquire()
            futures.append(executor.submit(run, number, part))
        for future in futures:
            results.append(future.result())
    finally:
        for future in futures:
            future.cancel()
    return results
