"""Garbage collection in the core: what lives, what goes, and that nothing live goes."""

from __future__ import annotations

import asyncio
import json
import os
import time

from dockyard.oci import mediatypes as mt
from dockyard.registry.gc import GarbageCollector, GcPolicy
from dockyard.registry.service import Registry
from tests.registry.test_core import body, digest_of, push_blob, push_image, run


def collector(registry: Registry, grace: float = 0.0, untagged: bool = True) -> GarbageCollector:
    return GarbageCollector(registry.ctx, GcPolicy(grace_seconds=grace, delete_untagged=untagged))


async def _present(registry: Registry, name: str, digest: str) -> bool:
    try:
        await registry.blobs.stat(name, digest)
    except Exception:
        return False
    return registry.ctx.store.stat_blob(digest) is not None


def test_unreferenced_blobs_go_referenced_stay(registry: Registry) -> None:
    async def scenario() -> None:
        image = await push_image(registry, "app", "v1", b"layer-one")
        stray = await push_blob(registry, "app", b"pushed but never used")
        time.sleep(0.01)  # the cutoff is "older than now - grace"; not synchronisation
        report = await collector(registry).collect()
        assert stray in report.blobs
        assert report.bytes_freed >= len(b"pushed but never used")
        assert not await _present(registry, "app", stray)
        assert await _present(registry, "app", digest_of(b"layer-one"))
        assert (await registry.manifests.get("app", "v1")).digest == image

    run(scenario())


def test_grace_protects_pushes_in_flight(registry: Registry) -> None:
    async def scenario() -> None:
        young = await push_blob(registry, "app", b"just uploaded")
        report = await collector(registry, grace=3600).collect()
        assert report.blobs == [] and report.links == 0
        assert await _present(registry, "app", young)

    run(scenario())


def test_dry_run_changes_nothing(registry: Registry) -> None:
    async def scenario() -> None:
        stray = await push_blob(registry, "app", b"stray")
        time.sleep(0.01)
        report = await collector(registry).collect(dry_run=True)
        assert report.dry_run and stray in report.blobs and report.links == 1
        assert await _present(registry, "app", stray)

    run(scenario())


def test_untagged_manifests_and_what_keeps_them(registry: Registry) -> None:
    async def scenario() -> None:
        kept = await push_image(registry, "app", "v1", b"tagged")
        child = await push_image(registry, "app", "child", b"in an index")
        orphan = await push_image(registry, "app", "tmp", b"untagged soon")
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": mt.OCI_MANIFEST,
                        "digest": child,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    }
                ],
            }
        ).encode()
        await registry.manifests.put("app", "multi", index, mt.OCI_INDEX)
        empty = await push_blob(registry, "app", b"{}")

        def referrer(subject: str, note: str) -> bytes:
            return json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": "application/x.sig",
                    "config": {"mediaType": mt.OCI_EMPTY, "digest": empty, "size": 2},
                    "layers": [],
                    "subject": {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 1},
                    "annotations": {"n": note},
                }
            ).encode()

        signature = referrer(kept, "of a tagged image")
        dangling = referrer(digest_of(b"never pushed"), "of nothing")
        for document in (signature, dangling):
            await registry.manifests.put("app", digest_of(document), document, mt.OCI_MANIFEST)
        for tag in ("child", "tmp"):
            await registry.manifests.delete("app", tag)
        time.sleep(0.01)
        report = await collector(registry).collect()
        gone = {digest for _, digest in report.manifests}
        assert gone == {orphan, digest_of(dangling)}
        for digest in (kept, child, digest_of(signature)):
            assert (await registry.manifests.get("app", digest)).digest == digest
        assert not await _present(registry, "app", digest_of(b"untagged soon"))
        assert await _present(registry, "app", digest_of(b"in an index"))
        # without the policy, untagged manifests stay
        await registry.manifests.delete("app", "multi")
        time.sleep(0.01)
        report = await collector(registry, untagged=False).collect()
        assert report.manifests == []
        assert (await registry.manifests.get("app", child)).digest == child

    run(scenario())


def test_orphan_files_are_swept(registry: Registry) -> None:
    async def scenario() -> None:
        store = registry.ctx.store
        status = await registry.uploads.start("app")
        await registry.uploads.append("app", status.id, body(b"orphan bytes"))
        digest = digest_of(b"orphan bytes")
        store.publish_upload(status.id, digest)  # as if killed before recording
        path = store.blob_path(digest)
        assert path is not None
        past = time.time() - 10
        os.utime(path, (past, past))
        report = await collector(registry, grace=5).collect()
        assert report.orphan_files == [digest]
        assert store.stat_blob(digest) is None

    run(scenario())


def test_collection_while_pushing_keeps_every_pushed_image(registry: Registry) -> None:
    async def scenario() -> None:
        gc = collector(registry, grace=0.0)

        async def pusher(n: int) -> list[tuple[str, str]]:
            pushed = []
            for i in range(15):
                tag = f"t{n}-{i}"
                try:
                    pushed.append(
                        (tag, await push_image(registry, "busy", tag, f"{n}/{i}".encode()))
                    )
                except Exception as exc:  # a push may lose a race with GC, cleanly
                    assert type(exc).__name__ == "ManifestBlobUnknown", exc
            return pushed

        async def collecting() -> None:
            for _ in range(15):
                await gc.collect()
                await asyncio.sleep(0)

        results = await asyncio.gather(pusher(1), pusher(2), collecting())
        for tag, digest in results[0] + results[1]:
            manifest = await registry.manifests.get("busy", tag)
            assert manifest.digest == digest
            for layer in json.loads(manifest.content)["layers"]:
                info = await registry.blobs.stat("busy", layer["digest"])
                assert info.path is not None
                with open(info.path, "rb") as handle:
                    assert digest_of(handle.read()) == layer["digest"]

    run(scenario())
