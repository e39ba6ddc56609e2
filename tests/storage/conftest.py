"""Every BlobStore driver runs the same suite: add a driver to ``DRIVERS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.storage.base import BlobStore
from dockyard.storage.filesystem import FilesystemBlobStore


def _filesystem(tmp_path: Path) -> Iterator[BlobStore]:
    yield FilesystemBlobStore(tmp_path / "store")


DRIVERS: dict[str, Callable[[Path], Iterator[BlobStore]]] = {"filesystem": _filesystem}


@pytest.fixture(params=sorted(DRIVERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    yield from DRIVERS[request.param](tmp_path)
