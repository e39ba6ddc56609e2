"""Quotas, tag immutability and storage usage, enforced in the core's transactions."""

from __future__ import annotations

import asyncio
import time

import pytest

from dockyard.db import lifecycle as life_db
from dockyard.oci.errors import Denied
from dockyard.registry.gc import GarbageCollector, GcPolicy
from dockyard.registry.service import Registry
from dockyard.registry.usage import usage
from tests.registry.test_core import digest_of, push_blob, push_image, run


def _write(registry: Registry, fn: object) -> None:
    with registry.ctx.db.writer.begin() as conn:
        fn(conn)  # type: ignore[operator]
    registry.ctx.changes.bump()


def _usage(registry: Registry) -> dict[str, object]:
    with registry.ctx.db.reader.connect() as conn:
        return usage(conn).to_json()


def test_usage_is_exact_after_deletes_and_gc(registry: Registry) -> None:
    async def scenario() -> None:
        shared = b"shared base layer" * 100
        for name in ("team/a", "team/b"):
            await push_blob(registry, name, shared)
        await push_image(registry, "team/a", "v1", b"a-layer")
        await push_image(registry, "team/b", "v1", b"b-layer")
        first = _usage(registry)
        team = next(n for n in first["namespaces"] if n["namespace"] == "team")  # type: ignore[union-attr, index]
        # the shared layer counts once for the namespace and the registry, twice logically
        assert first["logical_bytes"] - first["stored_bytes"] == len(shared)  # type: ignore[operator]
        assert team["stored_bytes"] == first["stored_bytes"]
        await registry.manifests.delete("team/b", "v1")
        await registry.blobs.delete("team/b", digest_of(shared))
        time.sleep(0.01)
        await GarbageCollector(registry.ctx, GcPolicy(0.0, delete_untagged=True)).collect()
        after = _usage(registry)
        repos = {r["repository"]: r["bytes"] for r in after["repositories"]}  # type: ignore[union-attr]
        assert "team/b" not in repos or repos["team/b"] == 0
        with registry.ctx.db.reader.connect() as conn:
            blob_total, manifest_total = life_db.stored_bytes(conn)
        on_disk = sum(registry.ctx.store.stat_blob(d) or 0 for d in registry.ctx.store.list_blobs())
        assert blob_total == on_disk  # the metadata agrees with the bytes stored
        assert after["stored_bytes"] == blob_total + manifest_total

    run(scenario())


def test_byte_quota_refuses_and_says_by_how_much(registry: Registry) -> None:
    async def scenario() -> None:
        _write(registry, lambda conn: life_db.set_quota(conn, "small", 1000, None))
        await push_blob(registry, "small/app", b"x" * 600)
        with pytest.raises(Denied) as caught:
            await push_blob(registry, "small/app", b"y" * 600)
        assert "quota" in caught.value.message and "200 over" in caught.value.message
        assert registry.ctx.store.stat_blob(digest_of(b"y" * 600)) is not None  # bytes only
        with pytest.raises(Exception):  # noqa: B017 - not linked: BlobUnknown
            await registry.blobs.stat("small/app", digest_of(b"y" * 600))
        # other namespaces are not limited
        await push_blob(registry, "other/app", b"y" * 600)

    run(scenario())


def test_repository_quota(registry: Registry) -> None:
    async def scenario() -> None:
        _write(registry, lambda conn: life_db.set_quota(conn, "few", None, 2))
        await push_blob(registry, "few/one", b"1")
        await push_blob(registry, "few/two", b"2")
        with pytest.raises(Denied) as caught:
            await push_blob(registry, "few/three", b"3")
        assert "2 repositories" in caught.value.message

    run(scenario())


def test_quota_exact_under_concurrent_pushes(registry: Registry) -> None:
    async def scenario() -> None:
        _write(registry, lambda conn: life_db.set_quota(conn, "race", 10_000, None))

        async def push(i: int) -> bool:
            try:
                await push_blob(registry, "race/app", bytes([i]) * 1000)
            except Denied:
                return False
            return True

        results = await asyncio.gather(*(push(i) for i in range(20)))
        assert sum(results) == 10
        with registry.ctx.db.reader.connect() as conn:
            assert life_db.namespace_bytes(conn, "race") == 10_000

    run(scenario())


def test_immutable_tags(registry: Registry) -> None:
    async def scenario() -> None:
        _write(registry, lambda conn: life_db.add_rule(conn, "prod/*", "v*"))
        first = await push_image(registry, "prod/app", "v1", b"one")
        # the same manifest again is fine; another one under the tag is not
        await push_image(registry, "prod/app", "v1", b"one")
        with pytest.raises(Denied) as caught:
            await push_image(registry, "prod/app", "v1", b"two")
        assert "immutable" in caught.value.message
        with pytest.raises(Denied):
            await registry.manifests.delete("prod/app", "v1")
        with pytest.raises(Denied):
            await registry.manifests.delete("prod/app", first)
        assert (await registry.manifests.get("prod/app", "v1")).digest == first
        # tags outside the rule move freely
        await push_image(registry, "prod/app", "latest", b"one")
        await push_image(registry, "prod/app", "latest", b"two")
        await push_image(registry, "dev/app", "v1", b"one")
        await push_image(registry, "dev/app", "v1", b"two")

    run(scenario())
