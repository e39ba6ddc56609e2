"""The shared driver suite: what every blob store must do, whatever it stores bytes in."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from dockyard.storage.base import BlobStore, UploadBusy


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _publish(store: BlobStore, upload_id: str, data: bytes) -> str:
    store.create_upload(upload_id)
    writer = store.open_upload(upload_id, 0)
    try:
        writer.write(data)
    finally:
        writer.close()
    digest = _digest(data)
    store.publish_upload(upload_id, digest)
    return digest


def test_upload_then_publish(store: BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = _publish(store, "u1", data)
    assert store.stat_blob(digest) == len(data)
    assert b"".join(store.read_blob(digest)) == data
    assert store.upload_size("u1") is None
    assert digest in set(store.list_blobs())


def test_ranges(store: BlobStore) -> None:
    data = bytes(range(256)) * 10
    digest = _publish(store, "u2", data)
    assert b"".join(store.read_blob(digest, 10, 20)) == data[10:20]
    assert b"".join(store.read_blob(digest, 2500)) == data[2500:]


def test_missing_blob(store: BlobStore) -> None:
    assert store.stat_blob("sha256:" + "0" * 64) is None
    store.delete_blob("sha256:" + "0" * 64)  # deleting nothing is fine


def test_chunks_append_in_order(store: BlobStore) -> None:
    store.create_upload("u3")
    for chunk in (b"abc", b"", b"defg"):
        writer = store.open_upload("u3", store.upload_size("u3") or 0)
        writer.write(chunk)
        writer.close()
    assert store.upload_size("u3") == 7
    assert b"".join(store.read_upload("u3")) == b"abcdefg"
    assert b"".join(store.read_upload("u3", 3)) == b"defg"


def test_wrong_offset_is_refused(store: BlobStore) -> None:
    store.create_upload("u4")
    writer = store.open_upload("u4", 0)
    writer.write(b"12345")
    writer.close()
    with pytest.raises(ValueError):
        store.open_upload("u4", 3)
    assert store.upload_size("u4") == 5


def test_one_writer_at_a_time(store: BlobStore) -> None:
    store.create_upload("u5")
    first = store.open_upload("u5", 0)
    try:
        with pytest.raises(UploadBusy):
            store.open_upload("u5", 0)
    finally:
        first.close()
    store.open_upload("u5", 0).close()  # free again once closed


def test_rollback_restores_the_upload(store: BlobStore) -> None:
    store.create_upload("u6")
    writer = store.open_upload("u6", 0)
    writer.write(b"keep")
    writer.close()
    writer = store.open_upload("u6", 4)
    writer.write(b"drop me")
    writer.rollback()
    writer.close()
    assert b"".join(store.read_upload("u6")) == b"keep"


def test_publishing_the_same_blob_twice_is_harmless(store: BlobStore) -> None:
    data = b"same bytes"
    digest = _publish(store, "u7", data)
    assert _publish(store, "u8", data) == digest
    assert b"".join(store.read_blob(digest)) == data


def test_concurrent_publish_of_one_blob(store: BlobStore) -> None:
    data = os.urandom(256 * 1024)
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            _publish(store, f"c{i}", data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert b"".join(store.read_blob(_digest(data))) == data


def test_delete_upload_and_blob(store: BlobStore) -> None:
    digest = _publish(store, "u9", b"bye")
    store.delete_blob(digest)
    assert store.stat_blob(digest) is None
    store.create_upload("u10")
    assert "u10" in {upload_id for upload_id, _ in store.list_uploads()}
    store.delete_upload("u10")
    assert store.upload_size("u10") is None


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "x" * 65])
def test_upload_ids_cannot_escape(store: BlobStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.create_upload(bad)
