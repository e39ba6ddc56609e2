"""The registry core on S3 (SeaweedFS), as ``Registry.from_settings`` builds it: an upload
moving between two registries sharing the bucket and the database (two nodes), and garbage
collection deleting objects."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.registry.gc import GarbageCollector, GcPolicy
from dockyard.registry.service import Registry
from dockyard.server import prepare
from dockyard.storage.s3 import S3BlobStore
from tests.registry.test_core import body, digest_of, push_blob, push_image, run
from tests.support.processes import wait_until
from tests.support.seaweed import Seaweed, new_prefix

MIB = 1024 * 1024


@pytest.fixture
def settings(seaweed: Seaweed, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        storage="s3",
        s3_endpoint=seaweed.endpoint,
        s3_bucket=seaweed.bucket,
        s3_prefix=new_prefix(),
        s3_access_key=seaweed.access_key,
        s3_secret_key=seaweed.secret_key,
        s3_chunk_mib=5,
    )


@pytest.fixture
def nodes(settings: Settings) -> Iterator[tuple[Registry, Registry]]:
    prepare(settings)
    first, second = Registry.from_settings(settings), Registry.from_settings(settings)
    try:
        yield first, second
    finally:
        for registry in (first, second):
            registry.close()


def test_the_store_is_s3(nodes: tuple[Registry, Registry], settings: Settings) -> None:
    store = nodes[0].ctx.store
    assert isinstance(store, S3BlobStore)
    assert store.prefix == f"{settings.s3_prefix}/"
    assert nodes[0].ctx.redirect_seconds == settings.s3_presign_seconds


def test_an_upload_moves_between_nodes(nodes: tuple[Registry, Registry]) -> None:
    """Started on one, continued on the other (which re-hashes what the first stored),
    finished on the first again."""
    first, second = nodes
    parts = [os.urandom(6 * MIB + 1), os.urandom(MIB), os.urandom(3)]
    data = b"".join(parts)

    async def scenario() -> None:
        status = await first.uploads.start("team/app")
        status = await first.uploads.append("team/app", status.id, body(parts[0]))
        status = await second.uploads.append(
            "team/app", status.id, body(parts[1]), start=len(parts[0])
        )
        assert status.size == len(parts[0]) + len(parts[1])
        await first.uploads.finish("team/app", status.id, digest_of(data), body(parts[2]))
        info = await second.blobs.stat("team/app", digest_of(data))
        assert info.size == len(data) and info.path is None
        pieces = [piece async for piece in second.blobs.read(digest_of(data), 0, len(data))]
        assert b"".join(pieces) == data
        url = await second.blobs.url(digest_of(data))
        assert url is not None and digest_of(data)[7:] in url

    run(scenario())


def test_garbage_collection_deletes_objects(nodes: tuple[Registry, Registry]) -> None:
    registry = nodes[0]
    store = registry.ctx.store

    async def scenario() -> None:
        await push_image(registry, "app", "v1", b"layer-one")
        stray = await push_blob(registry, "app", b"pushed but never used")
        orphan = digest_of(b"bytes without a row")
        store.create_upload("orphan")
        writer = store.open_upload("orphan", 0)
        writer.write(b"bytes without a row")
        writer.close()
        store.publish_upload("orphan", orphan)
        # collected: what is older than now - grace, and S3 times are whole seconds
        wait_until(
            lambda: max(store.blob_mtime(d) or 0.0 for d in (stray, orphan)) < time.time(),
            5,
            "the blobs' times to be in the past",
        )
        report = await GarbageCollector(registry.ctx, GcPolicy(grace_seconds=0)).collect()
        assert stray in report.blobs
        assert orphan in report.orphan_files
        assert store.stat_blob(stray) is None and store.stat_blob(orphan) is None
        assert store.stat_blob(digest_of(b"layer-one")) == len(b"layer-one")

    run(scenario())
