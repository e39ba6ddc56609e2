"""The mirror on several nodes: with ``redis_url`` the single-flight locks and an upstream's
429 "not before" time live in Redis, so nodes that share nothing else on this machine still
make one upstream request for one missing blob, and all stop asking an upstream that said
429.

Nodes here are two ``Registry`` + ``ProxyService`` pairs in this process over one data
directory, each with the machine-local state (flock files, 429 files) pointed at a
directory of its own: only Redis connects them, as it connects separate machines.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dockyard.config import Settings
from dockyard.mirror.service import BlobStream, ProxyService, UpstreamUnavailable
from dockyard.mirror.upstreams import Upstreams, UpstreamSettings, build_upstreams
from dockyard.redis_locks import make_locks
from dockyard.registry.blobs import BlobInfo
from dockyard.registry.service import Registry
from dockyard.server import prepare
from dockyard.storage.base import BlobLock
from dockyard.storage.locks import Locks
from tests.mirror.conftest import start_mirror
from tests.mirror.fake_upstream import FakeUpstream
from tests.support.oci_client import OCI_MANIFEST, random_image
from tests.support.redis_server import RedisServer, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

pytestmark = pytest.mark.timeout(120)

ACCEPT = {"Accept": OCI_MANIFEST}


@dataclass
class CountingLocks:
    """A node's locks, counting what ``try_acquire`` answered (refused: another holds it)."""

    locks: Locks
    taken: int = 0
    refused: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, name: str) -> BlobLock:
        return self.locks.acquire(name)

    def try_acquire(self, name: str) -> BlobLock | None:
        held = self.locks.try_acquire(name)
        with self._guard:
            if held is None:
                self.refused += 1
            else:
                self.taken += 1
        return held


@dataclass
class Node:
    registry: Registry
    service: ProxyService
    locks: CountingLocks


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        if fake.hold is not None:
            fake.hold.set()
        fake.stop()


def open_nodes(root: Path, redis_url: str, upstream: FakeUpstream) -> list[Node]:
    upstreams = {"fake": UpstreamSettings(url=upstream.url, tag_ttl_seconds=0)}
    settings = Settings(data_dir=root / "data", redis_url=redis_url, upstreams=upstreams)
    prepare(settings)
    nodes = []
    for number in range(2):
        registry = Registry.from_settings(settings)
        assert registry.ctx.redis is not None
        locks = CountingLocks(make_locks(settings, registry.ctx.redis))
        service = ProxyService(
            registry,
            Upstreams(build_upstreams(upstreams, None)),
            root / f"node{number}",  # this node's flock files and 429 files: not shared
            locks=locks,
        )
        nodes.append(Node(registry, service, locks))
    return nodes


async def close(nodes: list[Node]) -> None:
    for node in nodes:
        await node.service.close()
        node.registry.close()


async def poll(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` while the event loop keeps running the nodes' tasks."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def test_concurrent_fetches_on_two_nodes_make_one_upstream_request(
    tmp_path: Path, redis_url: str, upstream: FakeUpstream
) -> None:
    data = os.urandom(1_500_000)
    digest = upstream.add_blob(data)
    upstream_path = f"/v2/shared/app/blobs/{digest}"
    upstream.hold = threading.Event()  # the upstream holds the blob back until released

    async def main() -> list[bytes]:
        nodes = open_nodes(tmp_path, redis_url, upstream)
        try:

            async def pull(node: Node) -> bytes:
                target = node.service.upstreams.by_prefix("fake/shared/app")
                assert target is not None
                found = await node.service.blob(target, digest)
                if isinstance(found, BlobStream):
                    return b"".join([chunk async for chunk in found.chunks])
                assert isinstance(found, BlobInfo) and found.path is not None
                return Path(found.path).read_bytes()

            pulls = [asyncio.ensure_future(pull(node)) for node in nodes for _ in range(3)]
            try:
                # one node leads (its lock taken), and the other found it held in Redis
                await poll(lambda: upstream.count("GET", upstream_path) >= 1, 30, "upstream GET")
                leader = 0 if nodes[0].locks.taken else 1
                other = nodes[1 - leader].locks
                await poll(lambda: other.refused >= 1, 30, "the other node to find the lock held")
                assert nodes[1 - leader].locks.taken == 0
            finally:
                upstream.hold.set()  # type: ignore[union-attr]
            return await asyncio.gather(*pulls)
        finally:
            await close(nodes)

    results = asyncio.run(main())
    assert results == [data] * 6
    assert upstream.count("GET", upstream_path) == 1


def test_429_on_one_node_stops_every_node(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    image = random_image("shared/limited", "1")
    upstream.add_manifest("shared/limited", "1", image.manifest, OCI_MANIFEST)
    upstream.rate_limited = True
    upstream.retry_after = 600

    async def main() -> None:
        nodes = open_nodes(tmp_path, redis_url, upstream)
        try:
            targets = [n.service.upstreams.by_prefix("fake/shared/limited") for n in nodes]
            assert targets[0] is not None and targets[1] is not None
            with pytest.raises(UpstreamUnavailable) as first:
                await nodes[0].service.manifest(targets[0], "1", None)
            assert "429" in first.value.message
            assert sum(upstream.requests.values()) == 1
            # the other node does not ask: it waits as long as the upstream said
            with pytest.raises(UpstreamUnavailable) as second:
                await nodes[1].service.manifest(targets[1], "1", None)
            assert "retry in" in second.value.message
            assert second.value.headers is not None
            assert 590 <= int(second.value.headers["Retry-After"]) <= 601
            assert sum(upstream.requests.values()) == 1
            # nothing was written to the machine-local files: Redis holds the time
            assert not list(tmp_path.glob("node*/mirror/*.not-before"))
        finally:
            await close(nodes)

    asyncio.run(main())
    with redis_server.client() as client:
        left = client.pttl("dockyard:mirror:not-before:fake")
    assert 590_000 < left <= 600_000


def test_a_server_with_redis_keeps_its_locks_and_waits_there(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    """``dockyard serve`` with ``redis_url``: the mirror's locks and 429 waits go to Redis,
    none to the data directory."""
    data = os.urandom(50_000)
    digest = upstream.add_blob(data)
    server = start_mirror(tmp_path / "data", {"fake": {"url": upstream.url}}, redis_url=redis_url)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.get(f"/v2/fake/redis/app/blobs/{digest}")
            assert response.status_code == 200
            assert response.content == data
            assert not list((tmp_path / "data").glob("locks/mirror-*"))
            upstream.rate_limited = True
            upstream.retry_after = 300
            response = http.get("/v2/fake/redis/other/manifests/1", headers=ACCEPT)
            assert response.status_code == 503
            assert "429" in response.json()["errors"][0]["message"]
        with redis_server.client() as client:
            assert 290_000 < client.pttl("dockyard:mirror:not-before:fake") <= 300_000
        assert not list((tmp_path / "data").glob("mirror/*.not-before"))
    finally:
        server.stop()
