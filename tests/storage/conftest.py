"""Every BlobStore driver runs the same suite: add a driver to ``DRIVERS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.storage.base import BlobStore
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.locks import FileLocks
from dockyard.storage.s3 import S3BlobStore
from tests.support.seaweed import Seaweed, new_prefix


def _filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    yield FilesystemBlobStore(tmp_path / "store")


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """SeaweedFS S3, the session's server, under a prefix of this test's own."""
    seaweed: Seaweed = request.getfixturevalue("seaweed")
    store = S3BlobStore(
        seaweed.client(), seaweed.bucket, FileLocks(tmp_path / "locks"), prefix=new_prefix()
    )
    try:
        yield store
    finally:
        store.close()


DRIVERS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[BlobStore]]] = {
    "filesystem": _filesystem,
    "s3": _s3,
}


@pytest.fixture(params=sorted(DRIVERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    yield from DRIVERS[request.param](request, tmp_path)
