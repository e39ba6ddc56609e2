"""Zero-copy downloads: blob GETs redirected to the sendfile port with signed links."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.http.sendfile import BlobLinks
from tests.support.processes import Server, free_port, running_dockyard

SECRET = "test-secret-0123456789"
MIN_BYTES = 64 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def side_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, side_port: int) -> Iterator[Server]:
    env = {
        "DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{side_port}",
        "DOCKYARD_SENDFILE_SECRET": SECRET,
        "DOCKYARD_SENDFILE_MIN_BYTES": str(MIN_BYTES),
        "DOCKYARD_WORKERS": "2",
    }
    with running_dockyard(tmp_path_factory.mktemp("sendfile") / "data", env=env) as srv:
        yield srv


def push(server: Server, name: str, data: bytes) -> str:
    digest = digest_of(data)
    response = httpx.post(
        f"{server.url}/v2/{name}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return digest


def test_large_blob_is_redirected_to_signed_link(server: Server, side_port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = push(server, "sf/large", data)
    first = httpx.get(f"{server.url}/v2/sf/large/blobs/{digest}")
    assert first.status_code == 307
    assert first.headers["docker-content-digest"] == digest
    assert first.headers["cache-control"] == "no-store"
    location = first.headers["location"]
    assert location.startswith(f"http://127.0.0.1:{side_port}/blobs/{digest}?")

    followed = httpx.get(f"{server.url}/v2/sf/large/blobs/{digest}", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.content == data
    assert followed.headers["docker-content-digest"] == digest
    assert int(followed.headers["content-length"]) == len(data)


def test_range_through_the_redirect(server: Server) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = push(server, "sf/range", data)
    response = httpx.get(
        f"{server.url}/v2/sf/range/blobs/{digest}",
        headers={"Range": "bytes=1000-1999"},
        follow_redirects=True,
    )
    assert response.status_code == 206
    assert response.content == data[1000:2000]
    assert response.headers["content-range"] == f"bytes 1000-1999/{len(data)}"


def test_small_blobs_and_heads_are_served_directly(server: Server) -> None:
    small = os.urandom(MIN_BYTES - 1)
    digest = push(server, "sf/small", small)
    response = httpx.get(f"{server.url}/v2/sf/small/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == small

    large = os.urandom(MIN_BYTES * 4)
    large_digest = push(server, "sf/small", large)
    head = httpx.head(f"{server.url}/v2/sf/small/blobs/{large_digest}")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(large)


def test_unknown_blob_is_not_redirected(server: Server) -> None:
    missing = digest_of(b"never pushed")
    response = httpx.get(f"{server.url}/v2/sf/large/blobs/{missing}")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_forged_expired_and_swapped_links_are_refused(server: Server, side_port: int) -> None:
    data = os.urandom(MIN_BYTES * 2)
    digest = push(server, "sf/forged", data)
    other = push(server, "sf/forged", os.urandom(MIN_BYTES * 2))
    base = f"http://127.0.0.1:{side_port}"

    good = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1")
    assert httpx.get(good).content == data

    wrong_key = BlobLinks(b"another key", side_port).url(digest, "127.0.0.1")
    expired = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1", now=time.time() - 120)
    swapped = good.replace(digest, other)
    unsigned = f"{base}/blobs/{digest}"
    for url in (wrong_key, expired, swapped, unsigned):
        response = httpx.get(url)
        assert response.status_code == 403, url
        assert response.json()["errors"][0]["code"] == "DENIED"

    assert httpx.get(f"{base}/blobs/sha256:..%2F..%2Fetc?expires=1&signature=x").status_code in (
        400,
        403,
        404,
    )
    assert httpx.get(f"{base}/v2/").status_code == 404


def test_a_valid_link_to_a_deleted_blob_is_404(server: Server, side_port: int) -> None:
    data = os.urandom(MIN_BYTES * 2)
    digest = push(server, "sf/deleted", data)
    link = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1")
    store_file = Path(server.data_dir) / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert store_file.exists()
    store_file.unlink()  # what garbage collection does to the bytes
    response = httpx.get(link)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_authorization_happens_before_the_redirect(tmp_path: Path) -> None:
    side = free_port()
    env = {"DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{side}", "DOCKYARD_ANONYMOUS_PULL": "false"}
    with running_dockyard(tmp_path / "data", env=env, auth=True) as srv:
        response = httpx.get(f"{srv.url}/v2/private/app/blobs/{digest_of(b'x')}")
        assert response.status_code == 401
        assert "location" not in response.headers


def test_refuses_the_same_port_twice(tmp_path: Path) -> None:
    from dockyard.config import Settings
    from dockyard.server import ServeRefused, check

    port = free_port()
    settings = Settings(
        listen=f"127.0.0.1:{port}", sendfile_listen=f"127.0.0.1:{port}", data_dir=tmp_path
    )
    with pytest.raises(ServeRefused, match="sendfile_listen must differ"):
        check(settings)
