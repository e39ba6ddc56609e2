"""A registry on S3 (a real dockyard server on SeaweedFS), over HTTP: chunked pushes, then
blob GETs redirected to presigned URLs, or streamed through with ranges when redirects are
off."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support.oci_client import OciClient, explain, image_from_blobs, sha256_digest
from tests.support.processes import Server, start_dockyard
from tests.support.seaweed import Seaweed, new_prefix

MIB = 1024 * 1024


def _start(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed, **settings: str) -> Server:
    env = {**seaweed.settings(new_prefix()), "DOCKYARD_S3_CHUNK_MIB": "5", **settings}
    return start_dockyard(tmp_path_factory.mktemp("s3-registry") / "data", env=env)


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> Iterator[Server]:
    server = _start(tmp_path_factory, seaweed)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> Iterator[Server]:
    server = _start(tmp_path_factory, seaweed, DOCKYARD_S3_REDIRECT="false")
    try:
        yield server
    finally:
        server.stop()


def _push(server: Server, repository: str) -> tuple[bytes, bytes]:
    """An image whose layers go up in chunks: 3 MiB chunks (each stored as a small object,
    published by streaming) and 6 MiB chunks (published by server-side part copies)."""
    small_chunks = os.urandom(7 * MIB + 5)
    large_chunks = os.urandom(13 * MIB + 7)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    image = image_from_blobs(repository, "1.0", config, (small_chunks, large_chunks))
    with OciClient(server.url) as client:
        client.push_blob(repository, config, chunk_size=0)
        client.push_blob(repository, small_chunks, chunk_size=3 * MIB)
        client.push_blob(repository, large_chunks, chunk_size=6 * MIB)
        response = client.put_manifest(repository, "1.0", image.manifest)
        assert response.status_code == 201, explain(response)
        pulled = client.get_manifest(repository, "1.0")
        assert pulled.status_code == 200 and pulled.content == image.manifest
    return small_chunks, large_chunks


def test_blob_get_redirects_to_a_presigned_url(redirecting: Server, seaweed: Seaweed) -> None:
    layers = _push(redirecting, "s3/redirect")
    with httpx.Client(base_url=redirecting.url, timeout=30) as http:
        for layer in layers:
            digest = sha256_digest(layer)
            path = f"/v2/s3/redirect/blobs/{digest}"
            response = http.get(path)
            assert response.status_code == 307, explain(response)
            assert response.headers["Location"].startswith(f"{seaweed.endpoint}/")
            assert response.headers["Docker-Content-Digest"] == digest
            followed = http.get(path, follow_redirects=True)
            assert followed.status_code == 200
            assert followed.content == layer
            head = http.head(path)  # HEAD never redirects
            assert head.status_code == 200
            assert head.headers["Content-Length"] == str(len(layer))
            assert "Location" not in head.headers


def test_blob_get_streams_when_redirects_are_off(streaming: Server) -> None:
    # one test per server: xdist would start a module's server again in each worker
    small, large = _push(streaming, "s3/stream")
    with httpx.Client(base_url=streaming.url, timeout=30) as http:
        for layer in (small, large):
            path = f"/v2/s3/stream/blobs/{sha256_digest(layer)}"
            response = http.get(path)
            assert response.status_code == 200, explain(response)
            assert response.headers["Content-Length"] == str(len(layer))
            assert response.content == layer
        path = f"/v2/s3/stream/blobs/{sha256_digest(large)}"
        start, end = 5 * MIB - 10, 6 * MIB + 10
        ranged = http.get(path, headers={"Range": f"bytes={start}-{end}"})
        assert ranged.status_code == 206, explain(ranged)
        assert ranged.headers["Content-Range"] == f"bytes {start}-{end}/{len(large)}"
        assert ranged.content == large[start : end + 1]
        tail = http.get(path, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == large[-100:]
        past = http.get(path, headers={"Range": f"bytes={len(large)}-"})
        assert past.status_code == 416
        head = http.head(path)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(large))
    _check_errors(streaming)


def _check_errors(streaming: Server) -> None:
    """Unknown blobs and misplaced chunks get their errors from an S3-backed registry too."""
    with OciClient(streaming.url) as client:
        missing = client.http.get(f"/v2/s3/errors/blobs/{sha256_digest(b'never pushed')}")
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        location = client.start_upload("s3/errors")
        first = client.patch(location, b"0123456789", start=0)
        assert first.status_code == 202, explain(first)
        location = first.headers["Location"]
        misplaced = client.patch(location, b"abc", start=3)
        assert misplaced.status_code == 416, explain(misplaced)
        assert misplaced.headers["Range"] == "0-9"
        wrong = client.finish_upload(location, sha256_digest(b"something else"))
        assert wrong.status_code == 400, explain(wrong)
        assert wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
        right = client.finish_upload(location, sha256_digest(b"0123456789"))
        assert right.status_code == 201, explain(right)
