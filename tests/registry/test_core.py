"""The registry core without HTTP: uploads, blobs, manifests, tags, referrers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dockyard.oci import mediatypes as mt
from dockyard.oci.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
    RangeInvalid,
    SizeInvalid,
)
from dockyard.registry.service import Registry

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def push_blob(registry: Registry, name: str, data: bytes) -> str:
    digest = digest_of(data)
    await registry.uploads.push(name, digest, body(data), len(data))
    return digest


async def push_image(registry: Registry, name: str, tag: str, layer: bytes) -> str:
    config = json.dumps({"layer": digest_of(layer)}).encode()
    config_digest = await push_blob(registry, name, config)
    layer_digest = await push_blob(registry, name, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    pushed = await registry.manifests.put(name, tag, manifest, mt.OCI_MANIFEST)
    return pushed.digest


def test_chunked_upload_continued_in_another_process(
    registry: Registry, other_process: Registry
) -> None:
    async def scenario() -> None:
        data = b"0123456789" * 1000
        status = await registry.uploads.start("team/app")
        await registry.uploads.append("team/app", status.id, body(data[:4000]), 0, 4000)
        # the next chunk and the final PUT land in a process without the running hash
        await other_process.uploads.append("team/app", status.id, body(data[4000:9000]), 4000)
        done = await registry.uploads.finish(
            "team/app", status.id, digest_of(data), body(data[9000:]), len(data) - 9000
        )
        assert done.size == len(data)
        info = await other_process.blobs.stat("team/app", digest_of(data))
        assert info.size == len(data) and info.path is not None
        assert Path(info.path).read_bytes() == data

    run(scenario())


def test_sha512_upload(registry: Registry) -> None:
    async def scenario() -> None:
        data = b"x" * 100
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        status = await registry.uploads.start("a")
        await registry.uploads.append("a", status.id, body(data))
        await registry.uploads.finish("a", status.id, digest)
        assert (await registry.blobs.stat("a", digest)).size == 100

    run(scenario())


def test_wrong_digest_is_never_visible(registry: Registry) -> None:
    async def scenario() -> None:
        status = await registry.uploads.start("a")
        await registry.uploads.append("a", status.id, body(b"real"))
        wrong = digest_of(b"fake")
        with pytest.raises(DigestInvalid):
            await registry.uploads.finish("a", status.id, wrong)
        with pytest.raises(BlobUnknown):
            await registry.blobs.stat("a", wrong)
        assert registry.ctx.store.stat_blob(wrong) is None

    run(scenario())


def test_short_body_rolls_back_the_chunk(registry: Registry) -> None:
    async def scenario() -> None:
        status = await registry.uploads.start("a")
        await registry.uploads.append("a", status.id, body(b"abc"))
        with pytest.raises(SizeInvalid):
            await registry.uploads.append("a", status.id, body(b"de"), 3, 10)
        assert (await registry.uploads.status("a", status.id)).size == 3
        with pytest.raises(RangeInvalid):
            await registry.uploads.append("a", status.id, body(b"zz"), 5, 2)
        await registry.uploads.finish("a", status.id, digest_of(b"abcdef"), body(b"def"), 3)
        assert (await registry.blobs.stat("a", digest_of(b"abcdef"))).size == 6

    run(scenario())


def test_upload_belongs_to_its_repository(registry: Registry) -> None:
    async def scenario() -> None:
        status = await registry.uploads.start("a")
        with pytest.raises(BlobUploadUnknown):
            await registry.uploads.status("b", status.id)
        await registry.uploads.cancel("a", status.id)
        with pytest.raises(BlobUploadUnknown):
            await registry.uploads.status("a", status.id)
        with pytest.raises(BlobUploadUnknown):
            await registry.uploads.status("a", "not-a-uuid")

    run(scenario())


def test_blobs_are_linked_per_repository_and_mountable(registry: Registry) -> None:
    async def scenario() -> None:
        digest = await push_blob(registry, "src", b"layer")
        with pytest.raises(BlobUnknown):
            await registry.blobs.stat("dst", digest)
        assert not await registry.blobs.mount("dst", digest, "nowhere")
        assert await registry.blobs.mount("dst", digest, "src")
        assert (await registry.blobs.stat("dst", digest)).size == 5
        await registry.blobs.delete("src", digest)
        with pytest.raises(BlobUnknown):
            await registry.blobs.stat("src", digest)
        assert (await registry.blobs.stat("dst", digest)).size == 5

    run(scenario())


def test_manifest_needs_its_blobs_but_not_its_subject(registry: Registry) -> None:
    async def scenario() -> None:
        missing = digest_of(b"missing")
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": missing, "size": 7},
                "layers": [],
            }
        ).encode()
        with pytest.raises(ManifestBlobUnknown) as caught:
            await registry.manifests.put("a", "t", manifest, mt.OCI_MANIFEST)
        assert missing in caught.value.message
        empty = await push_blob(registry, "a", b"{}")
        artifact = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": "application/x.sbom",
                "config": {"mediaType": mt.OCI_EMPTY, "digest": empty, "size": 2},
                "layers": [],
                "subject": {"mediaType": mt.OCI_MANIFEST, "digest": missing, "size": 1},
                "annotations": {"k": "v"},
            }
        ).encode()
        pushed = await registry.manifests.put("a", digest_of(artifact), artifact, mt.OCI_MANIFEST)
        assert pushed.subject == missing and pushed.tags == ()
        page = json.loads((await registry.referrers.list("a", missing, None)).body)
        assert page["manifests"] == [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": pushed.digest,
                "size": len(artifact),
                "artifactType": "application/x.sbom",
                "annotations": {"k": "v"},
            }
        ]
        filtered = await registry.referrers.list("a", missing, "application/other")
        assert json.loads(filtered.body)["manifests"] == []

    run(scenario())


def test_tags_move_and_delete(registry: Registry) -> None:
    async def scenario() -> None:
        first = await push_image(registry, "app", "latest", b"one")
        second = await push_image(registry, "app", "latest", b"two")
        assert (await registry.manifests.get("app", "latest")).digest == second
        assert (await registry.manifests.get("app", first)).digest == first
        await registry.manifests.put(
            "app",
            "v1",
            (await registry.manifests.get("app", first)).content,
            mt.OCI_MANIFEST,
            ["v1.0", "stable"],
        )
        assert (await registry.listings.tags("app", None, None)).items == [
            "latest",
            "stable",
            "v1",
            "v1.0",
        ]
        await registry.manifests.delete("app", "v1")
        assert (await registry.manifests.get("app", first)).digest == first
        await registry.manifests.delete("app", first)
        assert (await registry.listings.tags("app", None, None)).items == ["latest"]
        with pytest.raises(ManifestUnknown):
            await registry.manifests.get("app", "stable")
        with pytest.raises(ManifestUnknown):
            await registry.manifests.delete("app", first)
        with pytest.raises(NameUnknown):
            await registry.manifests.get("nothing-here", "latest")

    run(scenario())


def test_cache_sees_changes_from_another_process(
    registry: Registry, other_process: Registry
) -> None:
    async def scenario() -> None:
        first = await push_image(registry, "app", "latest", b"one")
        assert (await registry.manifests.get("app", "latest")).digest == first
        assert (await registry.manifests.get("app", "latest")).digest == first  # cached
        second = await push_image(other_process, "app", "latest", b"two")
        assert (await registry.manifests.get("app", "latest")).digest == second
        await other_process.manifests.delete("app", second)
        with pytest.raises(ManifestUnknown):
            await registry.manifests.get("app", "latest")

    run(scenario())


def test_catalog_pages(registry: Registry) -> None:
    async def scenario() -> None:
        for name in ("c", "a", "b/x", "b"):
            await push_image(registry, name, "t", name.encode())
        await registry.uploads.start("only-an-upload")
        assert (await registry.listings.catalog(None, None)).items == ["a", "b", "b/x", "c"]
        page = await registry.listings.catalog(2, None)
        assert page.items == ["a", "b"] and page.more
        page = await registry.listings.catalog(2, "b")
        assert page.items == ["b/x", "c"] and not page.more
        assert (await registry.listings.catalog(0, None)).items == []

    run(scenario())


def test_manifest_limits(registry: Registry) -> None:
    async def scenario() -> None:
        with pytest.raises(ManifestTooLarge):
            await registry.manifests.put("a", "t", b" " * (4 * 1024 * 1024 + 1), mt.OCI_MANIFEST)
        with pytest.raises(ManifestInvalid):
            await registry.manifests.put("a", "bad tag!", b"{}", mt.OCI_MANIFEST)
        with pytest.raises(DigestInvalid):
            await registry.manifests.put("a", digest_of(b"other"), b"{}", mt.OCI_MANIFEST)

    run(scenario())


def test_stale_uploads_are_purged(registry: Registry) -> None:
    async def scenario() -> None:
        old = await registry.uploads.start("a")
        await registry.uploads.append("a", old.id, body(b"abc"))
        fresh = await registry.uploads.start("a")
        assert registry.ctx.store.upload_size(old.id) == 3
        # age the first upload's bytes by two days
        path = registry.ctx.store._upload_file(old.id)  # type: ignore[attr-defined]
        os.utime(path, (time.time() - 2 * 86400, time.time() - 2 * 86400))
        assert await registry.uploads.purge_stale(86400) == 1
        with pytest.raises(BlobUploadUnknown):
            await registry.uploads.status("a", old.id)
        assert (await registry.uploads.status("a", fresh.id)).size == 0

    run(scenario())


def test_chunks_alternating_between_processes_hash_only_new_bytes(
    registry: Registry, other_process: Registry
) -> None:
    async def scenario() -> None:
        chunks = [bytes([i]) * 1000 for i in range(6)]
        status = await registry.uploads.start("a")
        read: list[int] = []  # bytes each process reads back from storage to catch up
        for side in (registry, other_process):
            real = side.ctx.store.read_upload

            def counting(upload_id: str, start: int = 0, real=real):  # type: ignore[no-untyped-def]
                for chunk in real(upload_id, start):
                    read.append(len(chunk))
                    yield chunk

            side.ctx.store.read_upload = counting  # type: ignore[method-assign]
        offset = 0
        for i, chunk in enumerate(chunks):
            side = registry if i % 2 == 0 else other_process
            await side.uploads.append("a", status.id, body(chunk), offset, len(chunk))
            offset += len(chunk)
        # each process caught up from where it last was, never from byte 0: every byte was
        # read back at most once (by the process that had not received it)
        assert sum(read) <= 5000
        assert registry.uploads._hashes[status.id].offset == 5000  # chunk 4 was its last
        whole = b"".join(chunks)
        await other_process.uploads.finish("a", status.id, digest_of(whole))
        assert (await registry.blobs.stat("a", digest_of(whole))).size == len(whole)

    run(scenario())
