"""The filesystem store flushes an upload to disk in the background while it is received
(with fsync on), without holding the upload's lock and without leaking descriptors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dockyard.storage import filesystem
from dockyard.storage.filesystem import FilesystemBlobStore
from tests.support.processes import wait_until

MIB = 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_background_flushes_keep_the_bytes_and_release_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "WRITEBACK_BYTES", MIB)
    store = FilesystemBlobStore(tmp_path / "store", fsync=True)
    baseline = open_fds()
    store.create_upload("wb")
    data = os.urandom(5 * MIB + 123)
    writer = store.open_upload("wb", 0)
    for start in range(0, len(data), 64 * 1024):
        writer.write(data[start : start + 64 * 1024])
    assert isinstance(writer, filesystem.FileUploadWriter)
    assert writer._flushing is not None, "a background flush was started"
    writer.close()
    # closing released the lock at once, whatever flush may still run
    again = store.open_upload("wb", len(data))
    again.close()
    wait_until(lambda: open_fds() == baseline, 10, "the flush descriptors to be closed")

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.publish_upload("wb", digest)
    assert b"".join(store.read_blob(digest)) == data


def test_rollback_during_background_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "WRITEBACK_BYTES", MIB)
    store = FilesystemBlobStore(tmp_path / "store", fsync=True)
    store.create_upload("rb")
    kept = os.urandom(MIB)
    writer = store.open_upload("rb", 0)
    writer.write(kept)
    writer.close()
    writer = store.open_upload("rb", MIB)
    for _ in range(4):
        writer.write(os.urandom(MIB))
    writer.rollback()
    writer.close()
    assert store.upload_size("rb") == MIB
    assert b"".join(store.read_upload("rb")) == kept


def test_no_background_flushes_without_fsync(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "store", fsync=False)
    store.create_upload("nf")
    baseline = open_fds()
    writer = store.open_upload("nf", 0)
    assert open_fds() == baseline + 1  # the upload itself, no flush descriptor
    writer.close()


def test_many_small_sessions_are_flushed_ahead_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH per 512 KiB with flushes every MiB: the session that carries the upload past
    each MiB starts a flush, as one long PUT would."""
    monkeypatch.setattr(filesystem, "WRITEBACK_BYTES", MIB)
    store = FilesystemBlobStore(tmp_path / "store", fsync=True)
    store.create_upload("small")
    started = []
    for session in range(6):
        writer = store.open_upload("small", session * MIB // 2)
        assert isinstance(writer, filesystem.FileUploadWriter)
        writer.write(os.urandom(MIB // 2))
        started.append(writer._flushing is not None)
        writer.close()
    assert started == [False, True, False, True, False, True]
