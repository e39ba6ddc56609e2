"""The mirror against an upstream that misbehaves: wrong bytes, a connection cut in the
middle of a blob, 429 Too Many Requests, and many clients asking for one missing blob."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from tests.mirror.conftest import stored_blob, unique, uploads_left
from tests.mirror.fake_upstream import FakeUpstream, digest_of
from tests.support.oci_client import OCI_MANIFEST, random_image, sha256_digest
from tests.support.processes import Server, wait_until

ACCEPT = {"Accept": OCI_MANIFEST}


def broken_download(http: httpx.Client, path: str) -> None:
    """The download fails: an error status, or a body cut short (fewer bytes than its
    Content-Length), never a whole 200 answer."""
    with pytest.raises(httpx.HTTPError) as caught, http.stream("GET", path) as response:
        if response.status_code != 200:
            response.read()
            raise httpx.HTTPStatusError("refused", request=response.request, response=response)
        response.read()
    if isinstance(caught.value, httpx.HTTPStatusError):
        assert caught.value.response.status_code in (502, 503), caught.value.response.text


@pytest.mark.parametrize("fault", ["wrong", "cut"])
def test_bad_blob_is_not_cached_and_the_next_pull_works(
    mirror: Server, fake: FakeUpstream, fault: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    digest = fake.add_blob(data)
    getattr(fake, fault).add(digest)
    repository = unique("faults/blob")
    path = f"/v2/fake/{repository}/blobs/{digest}"
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        broken_download(http, path)
        assert not stored_blob(mirror.data_dir, digest)
        assert uploads_left(mirror.data_dir) == []
        # a second attempt asks the upstream again: nothing was cached
        broken_download(http, path)
        assert fake.count("GET", f"/v2/{repository}/blobs/{digest}") == 2
        getattr(fake, fault).discard(digest)
        response = http.get(path)
        assert response.status_code == 200
        assert response.content == data
        assert fake.count("GET", f"/v2/{repository}/blobs/{digest}") == 3
        # now from the cache
        assert http.get(path).content == data
        assert fake.count("GET", f"/v2/{repository}/blobs/{digest}") == 3
    assert stored_blob(mirror.data_dir, digest)


def test_manifest_with_a_wrong_digest_is_refused(mirror: Server, fake: FakeUpstream) -> None:
    repository = unique("faults/manifest")
    image = random_image(repository, "t1")
    fake.add_manifest(repository, "t1", image.manifest, OCI_MANIFEST)
    fake.wrong_digest_header.add("t1")
    # content at a digest it does not hash to
    liar = "sha256:" + "ab" * 32
    fake.manifests[(repository, liar)] = (image.manifest, OCI_MANIFEST)
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        for reference in ("t1", liar):
            response = http.get(f"/v2/fake/{repository}/manifests/{reference}", headers=ACCEPT)
            assert response.status_code == 502, response.text
            assert "upstream fake" in response.json()["errors"][0]["message"]
        fake.wrong_digest_header.discard("t1")
        response = http.get(f"/v2/fake/{repository}/manifests/t1", headers=ACCEPT)
        assert response.status_code == 200
        assert response.content == image.manifest
        tags = http.get(f"/v2/fake/{repository}/tags/list")
        assert tags.status_code in (200, 404)  # the fake upstream has no tag lists
        # the lie was never stored
        catalog = http.get("/v2/_catalog").json()["repositories"]
        assert f"fake/{repository}" in catalog
        assert (
            http.get(f"/v2/fake/{repository}/manifests/{liar}", headers=ACCEPT).status_code == 502
        )


def test_concurrent_pulls_of_one_missing_blob_make_one_upstream_request(
    mirror: Server, fake: FakeUpstream
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = fake.add_blob(data)
    repository = unique("faults/popular")
    upstream_path = f"/v2/{repository}/blobs/{digest}"
    fake.hold = threading.Event()
    clients = 6
    sent = threading.Semaphore(0)
    results: list[bytes | BaseException] = []

    def pull() -> None:
        def on_request(request: httpx.Request) -> None:
            sent.release()

        try:
            with httpx.Client(
                base_url=mirror.url, timeout=60, event_hooks={"request": [on_request]}
            ) as http:
                response = http.get(f"/v2/fake/{repository}/blobs/{digest}")
                assert response.status_code == 200, response.text
                results.append(response.content)
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(clients):
            assert sent.acquire(timeout=30)
        # one request reached the upstream, and it waits there while the others pile up
        wait_until(lambda: fake.count("GET", upstream_path) >= 1, 30, "the upstream GET")
    finally:
        fake.hold.set()
        for thread in threads:
            thread.join(timeout=60)
        fake.hold = None
    assert all(result == data for result in results), [
        r for r in results if not isinstance(r, bytes)
    ]
    assert len(results) == clients
    assert fake.count("GET", upstream_path) == 1


def test_429_is_respected_and_cached_content_still_served(
    mirror: Server, limited: FakeUpstream
) -> None:
    repository = unique("faults/limited")
    image = random_image(repository, "1")
    limited.add_manifest(repository, "1", image.manifest, OCI_MANIFEST)
    for blob in image.blobs:
        limited.add_blob(blob)
    never = unique("faults/never")
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        cached = http.get(f"/v2/limited/{repository}/manifests/1", headers=ACCEPT)
        assert cached.status_code == 200
        layer = sha256_digest(image.layers[0])
        assert http.get(f"/v2/limited/{repository}/blobs/{layer}").content == image.layers[0]
        limited.rate_limited = True
        limited.retry_after = 3600
        before = sum(limited.requests.values())
        response = http.get(f"/v2/limited/{never}/manifests/1", headers=ACCEPT)
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 3000
        assert "429" in response.json()["errors"][0]["message"]
        assert sum(limited.requests.values()) == before + 1
        # the upstream is not asked again before the time it named, by any worker process
        for _ in range(6):
            response = http.get(f"/v2/limited/{never}/manifests/1", headers=ACCEPT)
            assert response.status_code == 503
            missing = http.get(f"/v2/limited/{never}/blobs/{digest_of(b'x')}")
            assert missing.status_code == 503
            # the cached tag (TTL 0: due for a check) and blob are served all the same
            again = http.get(f"/v2/limited/{repository}/manifests/1", headers=ACCEPT)
            assert again.status_code == 200
            assert again.content == image.manifest
            assert http.get(f"/v2/limited/{repository}/blobs/{layer}").status_code == 200
        assert sum(limited.requests.values()) == before + 1
        body = json.loads(http.get(f"/v2/limited/{repository}/tags/list").content)
        assert body["tags"] == ["1"]  # the upstream cannot answer: the cached tags
