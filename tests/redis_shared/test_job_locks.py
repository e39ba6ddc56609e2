"""Background jobs run once at a time across every ``dockyard worker`` (dockyard.job_locks):
with Redis, a lease lock; with PostgreSQL alone, an advisory lock; on one machine, flock.

Each run's start and end (taken inside the job's lock) are in the worker's JSON log lines;
the tests read them back from real worker processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import Settings
from dockyard.db.engine import Database
from dockyard.job_locks import AdvisoryLocks, Jobs, job_locks
from dockyard.redis_locks import RedisLocks
from dockyard.redis_support import RedisLink
from dockyard.server import prepare
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.locks import FileLocks
from tests.support.processes import dockyard_command, kill_tree, wait_until

pytestmark = pytest.mark.timeout(120)


def entries(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def start_worker(
    data_dir: Path, log: Path, env: dict[str, str], *extra: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*dockyard_command(), "worker", "--data-dir", str(data_dir), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "DOCKYARD_LOG_LEVEL": "info", **env},
        )


def test_a_worker_waits_while_another_node_runs_the_job(tmp_path: Path, redis_url: str) -> None:
    """The test holds the gc lock as another node's worker would: `dockyard worker --once`
    runs its other jobs, but collects only once the lock is released."""
    data_dir = tmp_path / "data"
    prepare(Settings(data_dir=data_dir))
    link = RedisLink(redis_url)  # the default prefix, as the worker's
    log = tmp_path / "worker.log"
    try:
        held = RedisLocks(link, namespace="job").acquire("job-gc")
        worker = start_worker(data_dir, log, {"DOCKYARD_REDIS_URL": redis_url}, "--once")
        try:
            wait_until(
                lambda: {"purge-uploads", "retention"} <= {e["job"] for e in entries(log)},
                60,
                "the jobs not held elsewhere",
            )
            assert worker.poll() is None, "it waits for gc"
            assert "gc" not in {e["job"] for e in entries(log)}
            released_at = time.time()
            held.release()
            assert worker.wait(60) == 0, log.read_text()
        finally:
            kill_tree(worker, signal.SIGKILL)
        runs = {e["job"]: e for e in entries(log)}
        assert runs["gc"]["started"] >= released_at
        assert runs["gc"]["finished"] >= runs["gc"]["started"]
    finally:
        link.close()


def test_two_workers_on_one_schedule_never_run_a_job_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    """Two workers collect every second. One collection is held up midway (the test holds
    the lock of a blob it must delete, as an upload publishing that blob would): the other
    worker's turns come and find it running, and skip. Over the runs that follow, no two
    runs of a job ever overlap."""
    data_dir = tmp_path / "data"
    prepare(Settings(data_dir=data_dir))
    store = FilesystemBlobStore(data_dir.resolve())
    orphan = os.urandom(100)
    digest = "sha256:" + hashlib.sha256(orphan).hexdigest()
    path = data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)  # bytes without a row, as a crash leaves them
    past = time.time() - 3600
    os.utime(path, (past, past))
    env = {
        "DOCKYARD_REDIS_URL": redis_url,
        "DOCKYARD_GC_INTERVAL_SECONDS": "1",
        "DOCKYARD_GC_GRACE_SECONDS": "0",
        "DOCKYARD_RETENTION_INTERVAL_SECONDS": "1",
    }
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    blob_lock = store.lock_blob(digest)
    workers = [start_worker(data_dir, log, env) for log in logs]
    try:

        def gc_lines(key: str) -> int:
            for worker in workers:
                assert worker.poll() is None, [log.read_text() for log in logs]
            return sum(1 for log in logs for e in entries(log) if e["job"] == "gc" and key in e)

        try:
            wait_until(lambda: gc_lines("skipped") >= 2, 60, "a turn finding gc running")
            assert gc_lines("started") == 0, "the held-up collection has not finished"
        finally:
            blob_lock.release()
        wait_until(lambda: gc_lines("started") >= 4, 60, "four collections")
    finally:
        for worker in workers:
            kill_tree(worker)
    runs: dict[str, list[tuple[float, float, str]]] = {}
    for log in logs:
        for entry in entries(log):
            if "skipped" not in entry:
                interval = (entry["started"], entry["finished"], log.name)
                runs.setdefault(entry["job"], []).append(interval)
    assert {"gc", "retention", "purge-uploads"} <= set(runs)
    for job, intervals in runs.items():
        intervals.sort()
        for (_, end, who), (start, _, other) in itertools.pairwise(intervals):
            assert end <= start, f"{job} ran in {who} and {other} at once"
    deleted = [
        e for log in logs for e in entries(log) if digest in e.get("orphan_files_deleted", ())
    ]
    assert len(deleted) == 1, "the orphan was deleted, once"
    assert not path.exists()


HOLDER = """
import sys, threading
from dockyard.db.engine import Database
from dockyard.job_locks import AdvisoryLocks

AdvisoryLocks(Database(sys.argv[1])).acquire("job-gc")
print("held", flush=True)
threading.Event().wait()
"""


def test_postgresql_without_redis_uses_advisory_locks(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        locks = job_locks(db, Path("unused"), None)
        assert isinstance(locks, AdvisoryLocks)
        other = AdvisoryLocks(db)
        held = locks.try_acquire("job-gc")
        assert held is not None
        assert other.try_acquire("job-gc") is None
        assert other.try_acquire("job-retention") is not None
        held.release()
        again = other.try_acquire("job-gc")
        assert again is not None
        again.release()

        # a worker killed -9 while running the job: its connection closes, the lock is free
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, postgres_url],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"held\n"
            assert other.try_acquire("job-gc") is None
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            taken: list[object] = []

            def take() -> bool:
                lock = other.try_acquire("job-gc")
                if lock is not None:
                    taken.append(lock)
                return lock is not None

            wait_until(take, 30, "PostgreSQL to free the dead worker's lock")
            taken[0].release()  # type: ignore[attr-defined]
        finally:
            kill_tree(holder, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        db.dispose()


def test_one_machine_without_redis_uses_file_locks(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare(settings)
    db = Database(settings.resolved_database_url)
    try:
        locks = job_locks(db, settings.data_dir, None)
        assert isinstance(locks, FileLocks)
        first, second = Jobs(locks), Jobs(job_locks(db, settings.data_dir, None))

        async def scenario() -> list[bool]:
            seen = []
            async with first.alone("gc", wait=False) as mine:
                seen.append(mine)
                async with second.alone("gc", wait=False) as theirs:
                    seen.append(theirs)
            async with second.alone("gc", wait=False) as theirs:
                seen.append(theirs)
            return seen

        assert asyncio.run(scenario()) == [True, False, True]
    finally:
        db.dispose()
