"""Named locks with leases in a real Redis (dockyard.redis_locks): one holder at a time
across processes, leases renewed while held, a holder killed with -9 frees its lock when
the lease runs out, a holder whose lease ran out cannot free another's lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.oci.errors import Unavailable
from dockyard.redis_locks import LockTimeout, RedisLock, RedisLocks, make_locks
from dockyard.redis_support import RedisLink
from dockyard.storage.locks import FileLocks
from tests.support.processes import kill_tree, wait_until
from tests.support.redis_server import running_redis

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def links(redis_url: str) -> Iterator[list[RedisLink]]:
    """Two separate connections, as two nodes have."""
    made = [RedisLink(redis_url, "locks-test") for _ in range(2)]
    try:
        yield made
    finally:
        for link in made:
            link.close()


def holds_for(locks: RedisLocks, name: str, seconds: float) -> None:
    """Assert that ``name`` stays taken (by someone else) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stolen = locks.try_acquire(name)
        if stolen is not None:
            stolen.release()
            pytest.fail(f"{name} was free while held")
        time.sleep(0.05)


def test_one_holder_at_a_time(links: list[RedisLink]) -> None:
    a, b = RedisLocks(links[0]), RedisLocks(links[1])
    held = a.try_acquire("sha256-abc")
    assert held is not None
    assert b.try_acquire("sha256-abc") is None
    assert a.try_acquire("sha256-abc") is None, "not re-entrant either"
    other = b.try_acquire("sha256-def")
    assert other is not None, "other names are independent"
    held.release()
    held.release()  # a second release does nothing
    again = b.try_acquire("sha256-abc")
    assert again is not None
    again.release()
    other.release()
    assert a.held() == [] and b.held() == []


def test_acquire_waits_for_the_release_and_wakes_at_once(links: list[RedisLink]) -> None:
    a, b = RedisLocks(links[0]), RedisLocks(links[1])
    held = a.acquire("upload-1")
    got: list[RedisLock] = []
    taken = threading.Event()

    def wait_for_it() -> None:
        got.append(b.acquire("upload-1"))
        taken.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert not taken.wait(0.5), "acquired while held"
    released_at = time.monotonic()
    held.release()
    assert taken.wait(5)
    assert time.monotonic() - released_at < 0.3, "a release wakes the waiter"
    waiter.join()
    assert a.try_acquire("upload-1") is None
    got[0].release()


def test_acquire_with_a_timeout_gives_up(links: list[RedisLink]) -> None:
    a, b = RedisLocks(links[0]), RedisLocks(links[1])
    held = a.acquire("busy")
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        b.acquire("busy", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    held.release()


def test_the_lease_is_renewed_while_held(links: list[RedisLink]) -> None:
    a, b = RedisLocks(links[0], lease_seconds=0.6), RedisLocks(links[1])
    held = a.acquire("long-upload")
    holds_for(b, "long-upload", 2.5)  # four leases
    ttl = links[1].client.pttl("locks-test:lock:long-upload")
    assert 0 < ttl <= 600
    held.release()
    freed = b.try_acquire("long-upload")
    assert freed is not None
    freed.release()


def test_an_expired_holder_cannot_release_the_next_holders_lock(links: list[RedisLink]) -> None:
    a, b = RedisLocks(links[0]), RedisLocks(links[1])
    held = a.acquire("blob")
    links[1].client.delete("locks-test:lock:blob")  # as if its lease had run out
    taken = b.try_acquire("blob")
    assert taken is not None
    held.release()
    assert held.lost
    assert links[1].client.get("locks-test:lock:blob") == taken.token.encode()
    assert a.try_acquire("blob") is None
    taken.release()


HOLDER = """
import sys, threading
from dockyard.redis_locks import RedisLocks
from dockyard.redis_support import RedisLink

locks = RedisLocks(RedisLink(sys.argv[1], "locks-test"), lease_seconds=float(sys.argv[2]))
locks.acquire("gc-blob")
print("held", flush=True)
threading.Event().wait()
"""


def test_a_holder_killed_with_9_frees_its_lock_when_the_lease_runs_out(
    links: list[RedisLink], redis_url: str
) -> None:
    lease = 1.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, str(lease)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        locks = RedisLocks(links[0])
        holds_for(locks, "gc-blob", 3 * lease)  # renewed by the living holder
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed_at = time.monotonic()
        taken: list[RedisLock] = []

        def take() -> bool:
            lock = locks.try_acquire("gc-blob")
            if lock is not None:
                taken.append(lock)
            return lock is not None

        wait_until(take, 10, "the dead holder's lease to run out")
        assert time.monotonic() - killed_at <= lease + 0.5
        taken[0].release()
    finally:
        kill_tree(holder, signal.SIGKILL)  # type: ignore[arg-type]


def test_redis_unreachable_refuses_with_503(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        link = RedisLink(server.url, "locks-test", timeout=0.5)
        locks = RedisLocks(link)
        held = locks.acquire("x")
        server.stop()
        held.release()  # logged, not raised: the lease frees it
        with pytest.raises(Unavailable) as refused:
            locks.try_acquire("x")
        assert refused.value.status == 503
        with pytest.raises(Unavailable):
            locks.acquire("x")
        link.close()


def test_make_locks_picks_redis_or_files(tmp_path: Path, redis_url: str) -> None:
    assert isinstance(make_locks(Settings(data_dir=tmp_path)), FileLocks)
    locks = make_locks(Settings(data_dir=tmp_path, redis_url=redis_url))
    assert isinstance(locks, RedisLocks)
    held = locks.try_acquire("blob-1")
    assert held is not None
    assert locks.try_acquire("blob-1") is None
    held.release()
