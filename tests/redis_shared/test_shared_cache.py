"""The read cache's generation in Redis: what one node writes, every other node sees on
its very next read, and repeated reads are still answered from the cache.

Nodes here are separate ``Registry`` objects (each with its own Redis connections and
cache, as separate processes have) over one PostgreSQL database, where there is no shared
generation file: without Redis nothing would be cached at all. Then two real ``dockyard
serve`` processes, and Redis stopped and started again under a running node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from dockyard.config import Settings
from dockyard.redis_support import RedisChangeWatcher, RedisLink
from dockyard.registry.service import Registry
from dockyard.server import prepare
from tests.support.oci_client import OciClient, explain, random_image
from tests.support.processes import free_port, start_dockyard, wait_until
from tests.support.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.timeout(120)


def open_nodes(tmp_path: Path, database_url: str, redis_url: str, count: int = 2) -> list[Registry]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=redis_url)
    prepare(settings)
    return [Registry.from_settings(settings) for _ in range(count)]


@pytest.fixture
def nodes(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[Registry]]:
    registries = open_nodes(tmp_path, postgres_url, redis_url)
    try:
        yield registries
    finally:
        for registry in registries:
            registry.close()


class Counter:
    """Reads ``value`` from table ``t``, counting how often the database was asked."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, conn: Connection) -> int:
        self.reads += 1
        return int(conn.execute(text("SELECT v FROM t")).scalar_one())


def write_value(value: int) -> object:
    def write(conn: Connection) -> None:
        conn.execute(text("UPDATE t SET v = :v"), {"v": value})

    return write


def test_a_write_on_one_node_is_read_on_the_next_request_of_another(
    nodes: list[Registry],
) -> None:
    a, b = nodes

    async def scenario() -> None:
        await a.ctx.write(lambda conn: conn.execute(text("CREATE TABLE t (v integer)")))
        await a.ctx.write(lambda conn: conn.execute(text("INSERT INTO t VALUES (1)")))
        read = Counter()
        for _ in range(5):
            assert await b.ctx.cached_read("v", read) == 1
        assert read.reads == 1, "hot reads are answered from the cache"
        for value in range(2, 12):
            await a.ctx.write(write_value(value))  # type: ignore[arg-type]
            assert await b.ctx.cached_read("v", read) == value, "the very next read"
            assert await b.ctx.cached_read("v", read) == value
        assert read.reads == 11, "each write costs one read, and only one"
        # and the other way round
        read_a = Counter()
        assert await a.ctx.cached_read("v", read_a) == 11
        await b.ctx.write(write_value(99))  # type: ignore[arg-type]
        assert await a.ctx.cached_read("v", read_a) == 99
        assert await a.ctx.cached_read("v", read_a) == 99
        assert read_a.reads == 2

    asyncio.run(scenario())


def test_without_redis_postgresql_reads_are_not_cached(tmp_path: Path, postgres_url: str) -> None:
    """The contrast: the same reads without Redis all go to the database."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    prepare(settings)
    registry = Registry.from_settings(settings)
    try:

        async def scenario() -> int:
            await registry.ctx.write(lambda conn: conn.execute(text("CREATE TABLE t (v integer)")))
            await registry.ctx.write(lambda conn: conn.execute(text("INSERT INTO t VALUES (7)")))
            read = Counter()
            for _ in range(3):
                assert await registry.ctx.cached_read("v", read) == 7
            return read.reads

        assert asyncio.run(scenario()) == 3
    finally:
        registry.close()


def test_generations_never_repeat_after_redis_loses_them(redis_server: RedisServer) -> None:
    """A Redis restarted without persistence (here: flushed) has no generation: the next
    one is new, never the value a process cached under before."""
    link = RedisLink(redis_server.url, "gen-test")
    watcher = RedisChangeWatcher(link)
    try:
        seen = {watcher.token()}
        assert watcher.token() in seen, "unchanged without a write"
        for _ in range(20):
            with redis_server.client() as client:
                client.delete("gen-test:generation")
            token = watcher.token()
            assert token is not None and token not in seen
            seen.add(token)
            watcher.bump()
            token = watcher.token()
            assert token is not None and token not in seen
            seen.add(token)
    finally:
        watcher.close()
        link.close()


def test_redis_down_turns_caching_off_and_nothing_stale_is_served(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dockyard.redis")
    with running_redis(tmp_path / "redis") as server:
        a, b = open_nodes(tmp_path, postgres_url, server.url)
        try:

            async def before() -> Counter:
                await a.ctx.write(lambda conn: conn.execute(text("CREATE TABLE t (v integer)")))
                await a.ctx.write(lambda conn: conn.execute(text("INSERT INTO t VALUES (1)")))
                read = Counter()
                assert await b.ctx.cached_read("v", read) == 1
                assert await b.ctx.cached_read("v", read) == 1
                assert read.reads == 1
                return read

            read = asyncio.run(before())
            server.stop()

            async def during() -> None:
                await a.ctx.write(write_value(2))  # commits; the announcement fails
                for _ in range(3):
                    assert await b.ctx.cached_read("v", read) == 2  # not the cached 1
                assert read.reads == 4, "no caching while Redis is away"

            asyncio.run(during())
            assert b.ctx.changes.token() is None
            assert "redis unreachable" in caplog.text

            server.start()  # same port, empty
            for node in (a, b):
                watcher = node.ctx.changes
                assert isinstance(watcher, RedisChangeWatcher)
                wait_until(lambda w=watcher: w.healthy, 15, "the watcher to see Redis again")  # type: ignore[misc]

            async def after() -> None:
                await a.ctx.write(write_value(3))
                assert await b.ctx.cached_read("v", read) == 3
                assert await b.ctx.cached_read("v", read) == 3
                assert read.reads == 5, "cached again"

            asyncio.run(after())
        finally:
            a.close()
            b.close()


def test_two_servers_a_tag_moved_on_one_is_pulled_from_the_other_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    """Two ``dockyard serve`` processes (one worker each) on one data directory and one
    Redis: the manifest GETs that one answers from its cache follow every tag move made
    through the other, on the very next request."""
    data_dir = tmp_path / "data"
    env = {"DOCKYARD_REDIS_URL": redis_url, "DOCKYARD_ACCESS_LOG": "false"}
    first = start_dockyard(data_dir, "--workers", "1", env=env)
    try:
        second = start_dockyard(data_dir, "--workers", "1", env=env)
        try:
            with OciClient(first.url) as a, OciClient(second.url) as b:
                for round_ in range(6):
                    pusher, puller = (a, b) if round_ % 2 == 0 else (b, a)
                    image = random_image("scale/app", "latest", (512,))
                    pusher.push_image(image)
                    for _ in range(5):  # hot: answered from the puller's cache after the first
                        answer = puller.get_manifest("scale/app", "latest")
                        assert answer.status_code == 200, explain(answer)
                        assert answer.headers["Docker-Content-Digest"] == image.digest
                        assert answer.content == image.manifest
                deleted = a.http.delete(f"/v2/scale/app/manifests/{image.digest}")
                assert deleted.status_code == 202, explain(deleted)
                gone = b.get_manifest("scale/app", "latest")
                assert gone.status_code == 404, explain(gone)
        finally:
            second.stop()
    finally:
        first.stop()
    with RedisLink(redis_url).client as client:
        assert client.get("dockyard:generation") is not None, "the generation lived in Redis"


def test_a_node_whose_redis_is_away_serves_correctly_without_caching(tmp_path: Path) -> None:
    """Redis configured but not answering (nothing listens on its port): the node starts,
    pushes and pulls work, every answer is current, and it says why it is not caching."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = {"DOCKYARD_REDIS_URL": dead_redis, "DOCKYARD_ACCESS_LOG": "false"}
    server = start_dockyard(tmp_path / "data", "--workers", "1", env=env)
    try:
        with OciClient(server.url) as client:
            for _ in range(3):
                image = random_image("away/app", "latest", (256,))
                client.push_image(image)
                for _ in range(2):
                    answer = client.get_manifest("away/app", "latest")
                    assert answer.status_code == 200, explain(answer)
                    assert answer.headers["Docker-Content-Digest"] == image.digest
        assert "read caching off" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis:", "127.0.0.1:6379"])
def test_a_malformed_redis_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url=url)
    with pytest.raises(ValueError, match="redis_prefix"):
        Settings(redis_prefix="two words")
