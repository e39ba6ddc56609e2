"""Blobs streamed through the mirror: a client that goes away in the middle does not stop
the caching, and a cached blob answers ranges exactly."""

from __future__ import annotations

import os
import threading

import httpx

from tests.mirror.conftest import stored_blob, unique, uploads_left
from tests.mirror.fake_upstream import FakeUpstream
from tests.support.processes import Server, wait_until


def test_client_gone_mid_blob_the_blob_is_cached_all_the_same(
    mirror: Server, fake: FakeUpstream
) -> None:
    data = os.urandom(4 * 1024 * 1024 + 5)
    digest = fake.add_blob(data)
    repository = unique("streaming/gone")
    path = f"/v2/fake/{repository}/blobs/{digest}"
    upstream_path = f"/v2/{repository}/blobs/{digest}"
    fake.pause = threading.Event()  # the upstream sends half the blob, then waits
    try:
        with httpx.Client(base_url=mirror.url, timeout=30) as http:
            with http.stream("GET", path) as response:
                assert response.status_code == 200
                assert response.headers["Content-Length"] == str(len(data))
                received = 0
                for chunk in response.iter_raw():
                    received += len(chunk)
                    if received >= 64 * 1024:
                        break
                assert 64 * 1024 <= received < len(data)
            # the client has hung up, the upstream has not finished yet
            assert not stored_blob(mirror.data_dir, digest)
    finally:
        fake.pause.set()
        fake.pause = None
    wait_until(lambda: stored_blob(mirror.data_dir, digest), 30, "the blob in the cache")
    wait_until(lambda: uploads_left(mirror.data_dir) == [], 30, "the upload published")
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        response = http.get(path)
        assert response.status_code == 200
        assert response.content == data
    assert fake.count("GET", upstream_path) == 1  # the second pull was a cache hit


def test_range_of_a_cached_blob(mirror: Server, fake: FakeUpstream) -> None:
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    path = f"/v2/fake/{unique('streaming/range')}/blobs/{digest}"
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        # not cached yet: streamed from the upstream whole, the range ignored (as HTTP allows)
        response = http.get(path, headers={"Range": "bytes=10-19"})
        assert response.status_code == 200
        assert response.content == data
        assert "Content-Range" not in response.headers
        for first, last in ((0, 0), (1000, 1999), (299_990, 299_999)):
            response = http.get(path, headers={"Range": f"bytes={first}-{last}"})
            assert response.status_code == 206, response.text
            assert response.content == data[first : last + 1]
            assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
            assert response.headers["Content-Length"] == str(last - first + 1)
        response = http.get(path, headers={"Range": "bytes=299000-"})
        assert response.status_code == 206
        assert response.content == data[299_000:]
        response = http.get(path, headers={"Range": f"bytes={len(data)}-"})
        assert response.status_code == 416
