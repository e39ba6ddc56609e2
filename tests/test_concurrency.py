"""Concurrent pushes of the same blob, the same manifest and the same tag, and concurrent
writes to one upload, against a registry with two worker processes: they are safe and
idempotent, nothing answers 500, and the final state is one of the states pushed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import pytest

from tests.support.data_dir import bad_blob_files
from tests.support.oci_client import (
    OciClient,
    chunks_of,
    explain,
    image_from_blobs,
    random_image,
    sha256_digest,
)
from tests.support.processes import Server, start_dockyard, wait_until

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
THREADS = 12
SPEC_ERROR_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "RANGE_INVALID",  # Distribution's code for 416 on uploads
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_dockyard(tmp_path_factory.mktemp("concurrency") / "data", "--workers", "2")
    try:
        yield started
    finally:
        started.stop()


def all_at_once(count: int, task: Callable[[int, OciClient], T], url: str) -> list[T]:
    """Run ``task(i, client)`` in ``count`` threads, each with its own connection, released
    together by a barrier."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        with OciClient(url) as client:
            barrier.wait(30)
            return task(index, client)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def is_clean_error(response: httpx.Response) -> bool:
    """A 4xx with the spec's error body."""
    if not 400 <= response.status_code < 500:
        return False
    codes = {error.get("code") for error in response.json().get("errors", [])}
    return bool(codes) and codes <= SPEC_ERROR_CODES


def test_same_blob_pushed_by_many_uploads_at_once(server: Server) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    digest = sha256_digest(blob)
    repositories = ["same-blob/a", "same-blob/b"]

    def push(index: int, client: OciClient) -> httpx.Response:
        repository = repositories[index % 2]
        mode = index % 3
        if mode == 0:  # monolithic POST ?digest=
            return client.http.post(
                f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=blob
            )
        location = client.start_upload(repository)
        if mode == 1:  # POST, then PUT with the whole body
            return client.finish_upload(location, digest, blob)
        offset = 0  # POST, PATCH chunks, empty PUT
        for chunk in chunks_of(blob, 1024 * 1024):
            response = client.patch(location, chunk, start=offset)
            if response.status_code != 202:
                return response
            location = response.headers["Location"]
            offset += len(chunk)
        return client.finish_upload(location, digest)

    responses = all_at_once(THREADS, push, server.url)
    assert [r.status_code for r in responses] == [201] * THREADS, [explain(r) for r in responses]
    assert {r.headers["Docker-Content-Digest"] for r in responses} == {digest}
    with OciClient(server.url) as client:
        for repository in repositories:
            assert client.get_blob(repository, digest) == blob
    blob_file = server.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert blob_file.read_bytes() == blob
    assert bad_blob_files(server.data_dir) == []


def test_same_manifest_pushed_at_once(server: Server) -> None:
    image = random_image("same-manifest/app", "v1", (50_000, 1000))

    def push_blobs(index: int, client: OciClient) -> None:
        for blob in image.blobs:
            client.push_blob(image.repository, blob, chunk_size=0)

    all_at_once(4, push_blobs, server.url)

    def put(index: int, client: OciClient) -> httpx.Response:
        reference = image.tag if index % 2 else image.digest
        return client.put_manifest(image.repository, reference, image.manifest)

    responses = all_at_once(THREADS, put, server.url)
    assert [r.status_code for r in responses] == [201] * THREADS, [explain(r) for r in responses]
    assert {r.headers["Docker-Content-Digest"] for r in responses} == {image.digest}
    with OciClient(server.url) as client:
        client.check_image(image)
        tags = client.http.get(f"/v2/{image.repository}/tags/list").json()
        assert tags == {"name": image.repository, "tags": [image.tag]}


def test_first_pushes_to_a_new_repository_at_once(server: Server) -> None:
    """Many clients create the same repository with their first push."""
    repository = f"fresh/{os.urandom(4).hex()}"
    images = [random_image(repository, f"t{i}", (2000,)) for i in range(THREADS)]

    def push(index: int, client: OciClient) -> str:
        return client.push_image(images[index], chunk_size=[0, None, 700][index % 3])

    assert all_at_once(THREADS, push, server.url) == [image.digest for image in images]
    with OciClient(server.url) as client:
        for image in images:
            client.check_image(image)
        tags = client.http.get(f"/v2/{repository}/tags/list").json()["tags"]
        assert sorted(tags) == sorted(image.tag for image in images)
        catalog = client.http.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
        assert catalog.count(repository) == 1


@dataclass
class Reads:
    seen: set[str] = field(default_factory=set)
    bad: list[str] = field(default_factory=list)


def test_same_tag_moved_to_different_manifests_at_once(server: Server) -> None:
    repository = "moving/tag"
    layer = os.urandom(20_000)
    images = [
        image_from_blobs(repository, "current", f'{{"n":{i}}}'.encode(), (layer,))
        for i in range(THREADS)
    ]
    with OciClient(server.url) as client:
        client.push_blob(repository, layer)
        for image in images:
            client.push_blob(repository, image.config, chunk_size=0)
        client.push_image(images[0])
    by_digest = {image.digest: image.manifest for image in images}

    # A reader pulls the tag all along: always one of the manifests, never a gap.
    stop = threading.Event()
    reads = Reads()

    def read_tag() -> None:
        with OciClient(server.url) as reader:
            while not stop.is_set():
                response = reader.get_manifest(repository, "current")
                digest = response.headers.get("Docker-Content-Digest", "")
                if response.status_code != 200 or by_digest.get(digest) != response.content:
                    reads.bad.append(explain(response))
                reads.seen.add(digest)

    reader_thread = threading.Thread(target=read_tag, daemon=True)
    reader_thread.start()
    try:
        wait_until(lambda: images[0].digest in reads.seen, 30, "the reader to start")
        for _ in range(3):

            def move(index: int, client: OciClient) -> httpx.Response:
                image = images[index]
                return client.put_manifest(repository, image.tag, image.manifest)

            responses = all_at_once(THREADS, move, server.url)
            statuses = [r.status_code for r in responses]
            assert statuses == [201] * THREADS, [explain(r) for r in responses]

        with OciClient(server.url) as client:
            final = client.get_manifest(repository, "current")
            assert final.status_code == 200
            assert by_digest[final.headers["Docker-Content-Digest"]] == final.content
            # The tag exists once, and every manifest pushed is still there by digest.
            tags = client.http.get(f"/v2/{repository}/tags/list").json()["tags"]
            assert tags == ["current"]
            for image in images:
                response = client.get_manifest(repository, image.digest)
                assert response.status_code == 200
                assert response.content == image.manifest
            assert client.get_blob(repository, sha256_digest(layer)) == layer
            # One more move, after which the reader must see the new target.
            response = client.put_manifest(repository, "current", images[-1].manifest)
            assert response.status_code == 201
        wait_until(lambda: images[-1].digest in reads.seen, 30, "the reader to see the move")
    finally:
        stop.set()
        reader_thread.join(30)
    assert reads.bad == []


def test_concurrent_patches_to_one_upload_one_wins(server: Server) -> None:
    """PATCHes racing for the same range of one upload: exactly one is accepted, the others
    get a clean error, and the upload holds exactly the winner's bytes."""
    repository = "racing/patches"
    size = 256 * 1024
    for _ in range(8):
        with OciClient(server.url) as client:
            location = client.start_upload(repository)
        bodies = [bytes([65 + i]) * size for i in range(4)]

        def patch(
            index: int, client: OciClient, loc: str = location, bodies: list[bytes] = bodies
        ) -> httpx.Response:
            return client.patch(loc, bodies[index], start=0)

        responses = all_at_once(len(bodies), patch, server.url)
        winners = [i for i, r in enumerate(responses) if r.status_code == 202]
        assert len(winners) == 1, [explain(r) for r in responses]
        for i, response in enumerate(responses):
            if i != winners[0]:
                assert response.status_code == 416 and is_clean_error(response), explain(response)
        winner = bodies[winners[0]]
        with OciClient(server.url) as client:
            response = client.finish_upload(location, sha256_digest(winner))
            assert response.status_code == 201, explain(response)
            assert client.get_blob(repository, sha256_digest(winner)) == winner


class HeldBody:
    """A body that sends its first chunk, then waits for ``release`` before the rest."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.data) // 2
        yield self.data[:half]
        self.release.wait(30)
        yield self.data[half:]


def upload_size(client: OciClient, location: str) -> int:
    response = client.http.get(location)
    assert response.status_code == 204, explain(response)
    last = int(response.headers["Range"].rpartition("-")[2])
    return last + 1 if last else 0


@pytest.mark.parametrize("with_range", [True, False], ids=["content-range", "streamed"])
def test_patch_while_another_patch_streams(server: Server, with_range: bool) -> None:
    """A second PATCH arriving while a first one is still streaming its body is refused
    with 416, and the first one completes intact."""
    repository = "racing/held"
    first = HeldBody(os.urandom(512 * 1024))
    second = os.urandom(64 * 1024)
    with OciClient(server.url) as client:
        location = client.start_upload(repository)
    outcome: list[httpx.Response] = []

    def stream_first() -> None:
        with OciClient(server.url) as client:
            outcome.append(client.patch(location, first))

    streamer = threading.Thread(target=stream_first, daemon=True)
    streamer.start()
    try:
        with OciClient(server.url) as client:
            wait_until(lambda: upload_size(client, location) > 0, 30, "the first PATCH to start")
            response = client.patch(location, second, start=0 if with_range else None)
            assert response.status_code == 416, explain(response)
            assert is_clean_error(response), explain(response)
    finally:
        first.release.set()
        streamer.join(30)
    assert outcome and outcome[0].status_code == 202, outcome
    with OciClient(server.url) as client:
        response = client.finish_upload(location, sha256_digest(first.data))
        assert response.status_code == 201, explain(response)
        assert client.get_blob(repository, sha256_digest(first.data)) == first.data


def test_concurrent_final_puts_of_one_upload(server: Server) -> None:
    """Several clients PUT the same upload at once: one creates the blob, the others get a
    clean error (the upload is gone or busy), the blob is intact."""
    repository = "racing/puts"
    blob = os.urandom(2 * 1024 * 1024)
    digest = sha256_digest(blob)
    with OciClient(server.url) as client:
        location = client.start_upload(repository)
        assert client.patch(location, blob, start=0).status_code == 202

    def put(index: int, client: OciClient) -> httpx.Response:
        return client.finish_upload(location, digest)

    responses = all_at_once(6, put, server.url)
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) >= 1, [explain(r) for r in responses]
    for response in responses:
        assert response.status_code == 201 or is_clean_error(response), explain(response)
    with OciClient(server.url) as client:
        assert client.get_blob(repository, digest) == blob
        assert client.http.get(location).status_code == 404
    assert bad_blob_files(server.data_dir) == []
