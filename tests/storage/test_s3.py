"""What the S3 store does beyond the shared driver suite, against a real SeaweedFS: uploads in
chunk objects over several sessions, each way of publishing them, rollback, one writer per
upload across stores, presigned URLs."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.storage.base import UploadBusy
from dockyard.storage.locks import FileLocks
from dockyard.storage.s3 import MIB, MIN_PART, S3BlobStore, _Chunk, _plan_parts
from tests.support.processes import wait_until
from tests.support.seaweed import Seaweed, new_prefix

PIECE = 64 * 1024  # what the registry hands a writer at a time


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def locks(tmp_path: Path) -> FileLocks:
    return FileLocks(tmp_path / "locks")


@pytest.fixture
def store(seaweed: Seaweed, locks: FileLocks) -> Iterator[S3BlobStore]:
    """Chunk objects of 5 MiB (the smallest allowed), so that tens of MiB make several."""
    store = S3BlobStore(
        seaweed.client(), seaweed.bucket, locks, prefix=new_prefix(), chunk_bytes=5 * MIB
    )
    try:
        yield store
    finally:
        store.close()


def _session(store: S3BlobStore, upload_id: str, data: bytes, wait: bool = True) -> None:
    """One PATCH: ``data`` in 64 KiB pieces, waiting for the writer when it asks to (as the
    registry does) or not (then the writer makes the next write wait)."""
    writer = store.open_upload(upload_id, store.upload_size(upload_id) or 0)
    try:
        for at in range(0, len(data), PIECE):
            backlog = writer.write(data[at : at + PIECE])
            if backlog is not None and wait:
                backlog.result()
        writer.flush()
        assert store.upload_size(upload_id) == writer.size
    finally:
        writer.close()


def _objects(seaweed: Seaweed, store: S3BlobStore, under: str) -> dict[str, int]:
    listing = seaweed.client().list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + under)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def test_forty_mib_in_three_sessions(seaweed: Seaweed, store: S3BlobStore) -> None:
    data = os.urandom(40 * MIB)
    store.create_upload("big")
    cuts = [0, 17 * MIB, 31 * MIB, len(data)]
    for number, (start, end) in enumerate(itertools.pairwise(cuts)):
        _session(store, "big", data[start:end], wait=number != 1)
        assert store.upload_size("big") == end
    chunks = _objects(seaweed, store, "uploads/big/")
    assert len(chunks) > 3 + 1  # sessions made several chunk objects each, plus the marker
    assert sum(chunks.values()) == len(data)
    # the registry re-reads an upload from any offset to catch up its running hash
    assert b"".join(store.read_upload("big", 20 * MIB + 5)) == data[20 * MIB + 5 :]
    digest = _digest(data)
    store.publish_upload("big", digest)
    assert store.stat_blob(digest) == len(data)
    assert hashlib.sha256(b"".join(store.read_blob(digest))).hexdigest() == digest[7:]
    assert (
        b"".join(store.read_blob(digest, 17 * MIB - 3, 17 * MIB + 3))
        == data[17 * MIB - 3 : 17 * MIB + 3]
    )
    assert _objects(seaweed, store, "uploads/") == {}
    assert store.upload_size("big") is None


def test_many_small_sessions(store: S3BlobStore) -> None:
    """Chunk objects too small to be parts: the bytes are streamed into the blob."""
    pieces = [os.urandom(97 * 1024 + i) for i in range(16)]
    store.create_upload("small")
    for piece in pieces:
        _session(store, "small", piece)
    data = b"".join(pieces)
    store.publish_upload("small", _digest(data))
    assert b"".join(store.read_blob(_digest(data))) == data


def test_small_chunk_in_the_middle_of_a_large_upload(store: S3BlobStore) -> None:
    """More than one streamed part: 6 MiB, 1 MiB, 6 MiB sessions cannot be copied as parts."""
    parts = [os.urandom(6 * MIB), os.urandom(MIB), os.urandom(6 * MIB + 11)]
    store.create_upload("mixed")
    for part in parts:
        _session(store, "mixed", part)
    data = b"".join(parts)
    store.publish_upload("mixed", _digest(data))
    assert store.stat_blob(_digest(data)) == len(data)
    assert b"".join(store.read_blob(_digest(data))) == data


def test_empty_blob(store: S3BlobStore) -> None:
    store.create_upload("empty")
    _session(store, "empty", b"")
    store.publish_upload("empty", _digest(b""))
    assert store.stat_blob(_digest(b"")) == 0
    assert b"".join(store.read_blob(_digest(b""))) == b""


def test_rollback_removes_the_chunks_it_stored(seaweed: Seaweed, store: S3BlobStore) -> None:
    kept = os.urandom(MIB)
    store.create_upload("undo")
    _session(store, "undo", kept)
    writer = store.open_upload("undo", len(kept))
    dropped = os.urandom(12 * MIB)
    for at in range(0, len(dropped), PIECE):
        backlog = writer.write(dropped[at : at + PIECE])
        if backlog is not None:
            backlog.result()
    # two full chunks went out already, in the background
    wait_until(lambda: len(_objects(seaweed, store, "uploads/undo/")) >= 3, 30, "chunks stored")
    writer.rollback()
    writer.close()
    assert store.upload_size("undo") == len(kept)
    assert b"".join(store.read_upload("undo")) == kept
    assert len(_objects(seaweed, store, "uploads/undo/")) == 2  # the marker and the kept chunk


def test_one_writer_across_stores(seaweed: Seaweed, store: S3BlobStore, locks: FileLocks) -> None:
    """Two stores sharing the locks (two processes of one machine): the second writer of an
    upload is refused while the first holds it, and welcome after."""
    other = S3BlobStore(seaweed.client(), store.bucket, locks, prefix=store.prefix)
    try:
        store.create_upload("busy")
        first = store.open_upload("busy", 0)
        first.write(b"abc")
        with pytest.raises(UploadBusy):
            other.open_upload("busy", 0)
        first.close()
        second = other.open_upload("busy", 3)
        second.write(b"def")
        second.close()
        assert b"".join(store.read_upload("busy")) == b"abcdef"
    finally:
        other.close()


def test_leftovers_of_a_dead_writer_are_dropped(seaweed: Seaweed, store: S3BlobStore) -> None:
    """A chunk past a gap (its writer died before the chunk before it was stored) is not part
    of the upload, and the next writer removes it."""
    store.create_upload("gap")
    _session(store, "gap", b"12345")
    stray = store.chunk_key("gap", 10)
    seaweed.client().put_object(Bucket=store.bucket, Key=stray, Body=b"stray")
    assert store.upload_size("gap") == 5
    assert b"".join(store.read_upload("gap")) == b"12345"
    _session(store, "gap", b"67890")
    assert b"".join(store.read_upload("gap")) == b"1234567890"
    assert store.chunk_key("gap", 10) not in _objects(seaweed, store, "uploads/gap/")


def test_remains_of_a_removed_upload_are_listed_for_the_purge(
    seaweed: Seaweed, store: S3BlobStore
) -> None:
    store.create_upload("half")
    _session(store, "half", b"bytes")
    # a removal cut short after the marker went: the upload is gone, its chunk is not
    seaweed.client().delete_object(Bucket=store.bucket, Key=f"{store.prefix}uploads/half/created")
    assert store.upload_size("half") is None
    assert "half" in dict(store.list_uploads())
    store.delete_upload("half")
    assert _objects(seaweed, store, "uploads/") == {}


def test_presigned_url(store: S3BlobStore) -> None:
    data = os.urandom(300 * 1024)
    store.create_upload("url")
    _session(store, "url", data)
    digest = _digest(data)
    store.publish_upload("url", digest)
    url = store.blob_url(digest, 3600)
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    short = store.blob_url(digest, 1)
    assert short is not None
    wait_until(lambda: httpx.get(short).status_code == 403, 15, "the URL to expire")


@pytest.mark.parametrize("bad", ["sha256:../../x", "sha256:ab/cd", "nodigest", "sha256:"])
def test_digests_cannot_escape(store: S3BlobStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.stat_blob(bad)
    with pytest.raises(ValueError):
        store.blob_url(bad, 60)


@pytest.mark.parametrize(
    "sizes",
    [
        [6 * MIB, 1 * MIB, 6 * MIB, 100],  # PATCHes ending in short chunk objects
        [5 * MIB, 5 * MIB, 3],  # every object big enough: all copied
        [100] * 120,  # many tiny PATCHes: all sent, in parts of 5 MiB at most
        [1 * MIB, 16 * MIB, 16 * MIB, 2 * MIB, 4 * MIB],
        [4 * MIB, 4 * MIB],
    ],
)
def test_assembly_plans_follow_the_multipart_rules(sizes: list[int]) -> None:
    """Parts cover the upload in order, every part but the last is >= 5 MiB, and what can
    be copied by S3 is."""
    chunks, start = [], 0
    for number, size in enumerate(sizes):
        chunks.append(_Chunk(f"k{number}", start, size))
        start += size
    plan = _plan_parts(chunks)
    offsets = {chunk.key: chunk.start for chunk in chunks}
    position = 0
    for index, part in enumerate(plan):
        part_size = 0
        for piece in part:
            assert offsets[piece.key] + piece.start == position
            position += piece.end - piece.start
            part_size += piece.end - piece.start
        if index < len(plan) - 1:
            assert part_size >= MIN_PART
        assert all(not piece.copyable for piece in part) or len(part) == 1
    assert position == start
    copied = sum(p[0].end - p[0].start for p in plan if p[0].copyable)
    big = sum(size for size in sizes[:-1] if size >= MIN_PART)
    assert copied >= big - len(sizes) * MIN_PART  # at most one short head per object sent
    if all(size >= MIN_PART for size in sizes[:-1]):
        assert all(len(part) == 1 and part[0].copyable for part in plan)


def test_publish_takes_what_an_open_writer_still_holds(store: S3BlobStore) -> None:
    """As on a filesystem, bytes written are part of the upload even before the writer is
    flushed or closed (a caller may publish first and close after)."""
    data = os.urandom(6 * MIB + 3)
    store.create_upload("open")
    writer = store.open_upload("open", 0)
    try:
        for at in range(0, len(data), PIECE):
            writer.write(data[at : at + PIECE])
        store.publish_upload("open", _digest(data))
    finally:
        writer.close()
    assert b"".join(store.read_blob(_digest(data))) == data
