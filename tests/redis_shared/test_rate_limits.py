"""Rate limits shared through Redis (dockyard.auth.redis_throttle): every process of every
node draws from one token bucket per key; without Redis each process has its own again."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from dockyard.auth.redis_throttle import RedisBuckets, rate_buckets
from dockyard.auth.throttle import Buckets
from dockyard.redis_support import RedisLink
from tests.support.processes import start_dockyard, wait_until
from tests.support.redis_server import running_redis

pytestmark = pytest.mark.timeout(90)


def test_two_processes_share_one_budget(redis_url: str) -> None:
    links = [RedisLink(redis_url, "rate-test") for _ in range(2)]
    try:
        a, b = (RedisBuckets(link, rate=0.01, burst=6) for link in links)
        waits = [bucket.take("addr:10.0.0.1") for bucket in (a, b, a, b, a, b)]
        assert waits == [0.0] * 6
        for bucket in (a, b):
            wait = bucket.take("addr:10.0.0.1")
            assert 0 < wait <= 100, "the seventh request, through either, waits"
        assert a.take("addr:10.0.0.2") == 0.0, "another key has its own bucket"
        # the bucket fills again at ``rate``: one token every 500 ms here, so the next
        # request right away waits, and one made once that time has passed does not
        refilling = RedisBuckets(links[0], rate=2.0, burst=1)
        assert refilling.take("burst-1") == 0.0
        wait = refilling.take("burst-1")
        assert 0 < wait <= 0.5
        wait_until(lambda: refilling.take("burst-1") == 0.0, 5, "the bucket to refill")
    finally:
        for link in links:
            link.close()


def test_redis_down_falls_back_to_the_process_bucket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dockyard.redis")
    with running_redis(tmp_path / "redis") as server:
        link = RedisLink(server.url, "rate-test", timeout=0.5)
        buckets = RedisBuckets(link, rate=0.01, burst=2)
        assert buckets.take("k") == 0.0
        assert buckets.take("k") == 0.0
        assert buckets.take("k") > 0
        server.stop()
        # the local bucket, full: this process alone limits again
        assert buckets.take("k") == 0.0
        assert buckets.take("k") == 0.0
        assert buckets.take("k") > 0
        assert "rate limits per process" in caplog.text
        link.close()


def test_without_redis_the_buckets_are_per_process() -> None:
    assert isinstance(rate_buckets(None, 5.0, 10), Buckets)


def test_two_servers_share_the_limit_of_an_address(tmp_path: Path, redis_url: str) -> None:
    """Two ``dockyard serve`` nodes with authentication and a burst of 4 requests per
    address: two requests to each use it up; the fifth gets 429 from either."""
    env = {
        "DOCKYARD_REDIS_URL": redis_url,
        "DOCKYARD_RATE_LIMIT_PER_SECOND": "0.01",
        "DOCKYARD_RATE_LIMIT_BURST": "4",
        "DOCKYARD_ACCESS_LOG": "false",
    }
    data_dir = tmp_path / "data"
    first = start_dockyard(data_dir, "--workers", "1", env=env, auth=True)
    try:
        second = start_dockyard(data_dir, "--workers", "1", env=env, auth=True)
        try:
            statuses = [
                httpx.get(f"{server.url}/v2/", timeout=10).status_code
                for server in (first, second, first, second)
            ]
            assert statuses == [401] * 4  # anonymous, challenged, and counted
            for server in (first, second):
                answer = httpx.get(f"{server.url}/v2/", timeout=10)
                assert answer.status_code == 429, answer.text
                assert answer.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
                assert int(answer.headers["Retry-After"]) >= 1
        finally:
            second.stop()
    finally:
        first.stop()
