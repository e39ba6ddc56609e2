"""Concurrent writers on each backend: SQLite runs one write transaction at a time,
PostgreSQL runs them side by side. Pushes from many threads and from two registries (two
processes' worth of engines and pools) must leave the same state either way; and names
sort bytewise on both."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from dockyard.db import lifecycle as life_db
from dockyard.db.schema import blobs, manifests, repositories, repository_blobs, tags
from dockyard.oci import mediatypes as mt
from dockyard.oci.errors import Denied
from dockyard.registry.service import Registry
from tests.registry.test_core import body, digest_of, push_blob, push_image, run

T = TypeVar("T")

THREADS = 8


def together(
    jobs: list[tuple[Registry, Callable[[Registry], Coroutine[Any, Any, T]]]],
) -> list[T | BaseException]:
    """Run each job in a thread of its own (its own event loop), all released at once;
    the result or the exception of each."""
    barrier = threading.Barrier(len(jobs))

    def one(registry: Registry, job: Callable[[Registry], Coroutine[Any, Any, T]]) -> T:
        barrier.wait(timeout=30)
        return asyncio.run(job(registry))

    results: list[T | BaseException] = []
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(one, registry, job) for registry, job in jobs]
        for future in futures:
            try:
                results.append(future.result(timeout=120))
            except Exception as exc:
                results.append(exc)
    return results


def count(registry: Registry, table: Any, *where: Any) -> int:
    with registry.ctx.db.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar())


def _write(registry: Registry, fn: Callable[[Any], object]) -> None:
    with registry.ctx.db.writer.begin() as conn:
        fn(conn)
    registry.ctx.changes.bump()


def test_same_image_pushed_at_once_from_two_registries(
    registry: Registry, other_process: Registry
) -> None:
    """Same repository (new), same blobs, same manifest, same tag, all at once: every push
    succeeds and each thing is stored once."""

    async def push(side: Registry) -> str:
        return await push_image(side, "team/same", "latest", b"the same layer")

    sides = [registry if i % 2 else other_process for i in range(THREADS)]
    results = together([(side, push) for side in sides])
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1
    digest = results[0]
    assert isinstance(digest, str)
    assert count(registry, repositories, repositories.c.name == "team/same") == 1
    assert count(registry, manifests, manifests.c.digest == digest) == 1
    assert count(registry, tags, tags.c.name == "latest") == 1
    layer = digest_of(b"the same layer")
    assert count(registry, blobs, blobs.c.digest == layer) == 1
    assert count(registry, repository_blobs, repository_blobs.c.digest == layer) == 1
    assert run(other_process.manifests.get("team/same", "latest")).digest == digest


def test_many_new_repositories_and_tags_at_once(
    registry: Registry, other_process: Registry
) -> None:
    """Each thread pushes into every repository (all new), under its own tag: nothing is
    lost, no repository is made twice."""
    names = [f"burst/r{i}" for i in range(4)]

    def job(n: int) -> Callable[[Registry], Coroutine[Any, Any, list[str]]]:
        async def push(side: Registry) -> list[str]:
            return [await push_image(side, name, f"t{n}", f"{n}".encode()) for name in names]

        return push

    results = together([(registry if n % 2 else other_process, job(n)) for n in range(THREADS)])
    assert all(isinstance(r, list) for r in results), results
    assert count(registry, repositories, repositories.c.name.like("burst/%")) == len(names)
    for name in names:
        listed = run(registry.listings.tags(name, None, None)).items
        assert listed == sorted(f"t{n}" for n in range(THREADS))


def test_immutable_new_tag_raced_by_different_manifests(
    registry: Registry, other_process: Registry
) -> None:
    """An immutable tag that does not exist yet, pushed at once with different manifests:
    exactly one push creates it, every other one is refused, and the tag keeps the first."""
    _write(registry, lambda conn: life_db.add_rule(conn, "locked/*", "v*"))

    def job(n: int) -> Callable[[Registry], Coroutine[Any, Any, str]]:
        async def push(side: Registry) -> str:
            return await push_image(side, "locked/app", "v1", f"variant {n}".encode())

        return push

    results = together([(registry if n % 2 else other_process, job(n)) for n in range(THREADS)])
    won = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, Denied)]
    assert len(won) == 1 and len(refused) == THREADS - 1, results
    assert run(registry.manifests.get("locked/app", "v1")).digest == won[0]


def test_quota_exact_with_pushes_from_two_registries(
    registry: Registry, other_process: Registry
) -> None:
    _write(registry, lambda conn: life_db.set_quota(conn, "tight", 5_000, 3))

    def job(n: int) -> Callable[[Registry], Coroutine[Any, Any, str]]:
        async def push(side: Registry) -> str:
            # half the threads push into a new repository: the repository quota races too
            name = f"tight/r{n}" if n % 2 else "tight/shared"
            try:
                await push_blob(side, name, bytes([n]) * 1000)
            except Denied as exc:
                return str((exc.detail or {}).get("quota"))
            return "pushed"

        return push

    jobs = [(registry if n % 2 else other_process, job(n)) for n in range(THREADS * 2)]
    results = together(jobs)
    assert set(results) <= {"pushed", "bytes", "repositories"}, results
    with registry.ctx.db.reader.connect() as conn:
        used = life_db.namespace_bytes(conn, "tight")
        repository_count = life_db.namespace_repository_count(conn, "tight")
    assert used == 1000 * results.count("pushed")  # every accepted byte counted, no more
    assert used <= 5_000 and repository_count <= 3
    if "bytes" in results:  # refused for bytes only once no 1000 more fitted: full
        assert used == 5_000
    assert results.count("pushed") >= 3  # one per repository at least, before any refusal


def test_delete_by_digest_while_tagging_it_again(
    registry: Registry, other_process: Registry
) -> None:
    """A manifest deleted by digest while another push tags it again: either order is a
    consistent end state (the tag resolves to a stored manifest, or neither exists)."""
    digest = run(push_image(registry, "churn/app", "a", b"layer"))
    content = run(registry.manifests.get("churn/app", digest)).content

    async def delete(side: Registry) -> str:
        await side.manifests.delete("churn/app", digest)
        return "deleted"

    async def tag(side: Registry) -> str:
        await side.manifests.put("churn/app", "b", content, mt.OCI_MANIFEST)
        return "tagged"

    for _ in range(5):
        results = together([(registry, delete), (other_process, tag)])
        assert sorted(str(r) for r in results) == ["deleted", "tagged"], results
        try:
            tagged = run(registry.manifests.get("churn/app", "b"))
        except Exception:
            tagged = None
        if tagged is not None:  # the push came second: manifest and tag are both there
            assert run(registry.manifests.get("churn/app", digest)).digest == digest
        else:  # the delete came second and took the tag with it
            assert count(registry, tags, tags.c.name == "b") == 0
        run(registry.manifests.put("churn/app", "a", content, mt.OCI_MANIFEST))


@pytest.mark.parametrize("rounds", [3])
def test_chunked_uploads_of_one_blob_finishing_together(
    registry: Registry, other_process: Registry, rounds: int
) -> None:
    """Many uploads of the same bytes into one repository finish at once: one blob row,
    one link, every upload gone."""
    for round_ in range(rounds):
        data = f"round {round_} ".encode() * 500
        digest = digest_of(data)

        async def upload(side: Registry, data: bytes = data, digest: str = digest) -> int:
            status = await side.uploads.start("same/blob")
            await side.uploads.append("same/blob", status.id, body(data))
            return (await side.uploads.finish("same/blob", status.id, digest)).size

        results = together([(registry if n % 2 else other_process, upload) for n in range(6)])
        assert results == [len(data)] * 6
        assert count(registry, blobs, blobs.c.digest == digest) == 1
        assert count(registry, repository_blobs, repository_blobs.c.digest == digest) == 1


def test_names_sort_bytewise(registry: Registry) -> None:
    """The catalog and tag lists are in byte order on both databases (PostgreSQL's
    language collations would put ``B`` after ``a`` and ``a_b`` before ``a0``)."""
    repos = ["a_b", "a0", "a-b", "a.b", "ab", "a/b"]
    tag_names = ["b", "B", "a_b", "a0", "A-1", "a.1"]

    async def scenario() -> None:
        for name in repos:
            await push_image(registry, name, "t", name.encode())
        for tag in tag_names:
            await push_image(registry, "a0", tag, b"a0")
        assert (await registry.listings.catalog(None, None)).items == sorted(repos)
        first = await registry.listings.catalog(3, None)
        rest = await registry.listings.catalog(None, first.items[-1])
        assert first.items + rest.items == sorted(repos)
        expected = sorted([*tag_names, "t"])
        assert (await registry.listings.tags("a0", None, None)).items == expected
        page = await registry.listings.tags("a0", 2, expected[1])
        assert page.items == expected[2:4]

    run(scenario())


def test_referrers_found_by_subject(registry: Registry) -> None:
    async def scenario() -> None:
        subject = await push_image(registry, "refs/app", "v1", b"subject layer")
        empty = await push_blob(registry, "refs/app", b"{}")
        pushed = []
        for n in range(3):
            document = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": f"application/x.kind{n % 2}",
                    "config": {"mediaType": mt.OCI_EMPTY, "digest": empty, "size": 2},
                    "layers": [],
                    "subject": {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 1},
                    "annotations": {"n": str(n)},
                }
            ).encode()
            pushed.append(
                await registry.manifests.put("refs/app", digest_of(document), document, None)
            )
        page = json.loads((await registry.referrers.list("refs/app", subject, None)).body)
        assert [m["digest"] for m in page["manifests"]] == sorted(p.digest for p in pushed)
        kind0 = json.loads(
            (await registry.referrers.list("refs/app", subject, "application/x.kind0")).body
        )
        assert len(kind0["manifests"]) == 2

    run(scenario())
