"""Pulling, checking, ranging and deleting blobs; blobs belong to the repositories they were
pushed or mounted to."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import matches_digest, random_blob
from tests.api.protocol import (
    assert_blob_served,
    assert_error,
    blob_exists,
    new_repo,
    push_blob,
)


def test_get_blob_returns_content_and_headers(client: httpx.Client, repo: str) -> None:
    blob = random_blob(3000)
    push_blob(client, repo, blob)
    response = client.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.content == blob.data
    assert int(response.headers["content-length"]) == blob.size
    assert response.headers["docker-content-digest"] == blob.digest
    assert response.headers["etag"].removeprefix("W/") == f'"{blob.digest}"'


def test_head_blob_has_headers_and_no_body(client: httpx.Client, repo: str) -> None:
    blob = random_blob(1500)
    push_blob(client, repo, blob)
    response = client.head(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == blob.size
    assert response.headers["docker-content-digest"] == blob.digest
    assert response.headers["etag"].removeprefix("W/") == f'"{blob.digest}"'


def test_head_blob_advertises_byte_ranges(client: httpx.Client, repo: str) -> None:
    blob = random_blob(100)
    push_blob(client, repo, blob)
    response = client.head(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.headers.get("accept-ranges") == "bytes"


def test_empty_blob(client: httpx.Client, repo: str) -> None:
    blob = random_blob(0)
    push_blob(client, repo, blob)
    response = client.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"
    assert response.headers["docker-content-digest"] == blob.digest


def test_large_blob_round_trip(client: httpx.Client, repo: str) -> None:
    blob = random_blob(8 * 1024 * 1024 + 13)
    push_blob(client, repo, blob)
    # a registry may redirect a blob GET (Dockyard does, to its sendfile port, from 8 MiB)
    url = f"/v2/{repo}/blobs/{blob.digest}"
    with client.stream("GET", url, follow_redirects=True) as response:
        assert response.status_code == 200
        assert all(hop.status_code == 307 for hop in response.history)
        data = b"".join(response.iter_bytes())
    assert matches_digest(data, blob.digest)


def test_unknown_blob_is_blob_unknown(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, random_blob(10))
    missing = random_blob(10).digest
    assert_error(client.get(f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    assert_error(client.head(f"/v2/{repo}/blobs/{missing}"), 404)


def test_blob_in_unknown_repository_is_404(client: httpx.Client) -> None:
    response = client.get(f"/v2/{new_repo()}/blobs/{random_blob(10).digest}")
    assert_error(response, 404, "BLOB_UNKNOWN", "NAME_UNKNOWN")


def test_blob_is_unknown_in_another_repository(client: httpx.Client) -> None:
    repo_a, repo_b = new_repo(), new_repo()
    blob = random_blob(200)
    push_blob(client, repo_a, blob)
    push_blob(client, repo_b, random_blob(20))  # repo B exists, without that blob
    assert_error(client.get(f"/v2/{repo_b}/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
    assert_error(client.head(f"/v2/{repo_b}/blobs/{blob.digest}"), 404)
    assert_blob_served(client, repo_a, blob)


class TestRange:
    @pytest.fixture
    def stored(self, client: httpx.Client, repo: str) -> tuple[str, bytes]:
        blob = random_blob(1000)
        push_blob(client, repo, blob)
        return f"/v2/{repo}/blobs/{blob.digest}", blob.data

    def test_first_bytes(self, client: httpx.Client, stored: tuple[str, bytes]) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=0-9"})
        assert response.status_code == 206
        assert response.content == data[:10]
        assert response.headers["content-range"] == "bytes 0-9/1000"
        assert response.headers["content-length"] == "10"

    def test_middle_bytes(self, client: httpx.Client, stored: tuple[str, bytes]) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=100-199"})
        assert response.status_code == 206
        assert response.content == data[100:200]
        assert response.headers["content-range"] == "bytes 100-199/1000"

    def test_open_ended(self, client: httpx.Client, stored: tuple[str, bytes]) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=990-"})
        assert response.status_code == 206
        assert response.content == data[990:]
        assert response.headers["content-range"] == "bytes 990-999/1000"

    def test_suffix(self, client: httpx.Client, stored: tuple[str, bytes]) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=-5"})
        assert response.status_code == 206
        assert response.content == data[-5:]
        assert response.headers["content-range"] == "bytes 995-999/1000"

    def test_end_past_size_is_clamped(
        self, client: httpx.Client, stored: tuple[str, bytes]
    ) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=900-5000"})
        assert response.status_code == 206
        assert response.content == data[900:]
        assert response.headers["content-range"] == "bytes 900-999/1000"

    @pytest.mark.dockyard_only("its 416 announces the whole blob as Content-Length, sends less")
    def test_start_past_size_is_416(self, client: httpx.Client, stored: tuple[str, bytes]) -> None:
        url, _ = stored
        response = client.get(url, headers={"Range": "bytes=1000-"})
        assert response.status_code == 416
        assert response.headers.get("content-range") == "bytes */1000"

    @pytest.mark.dockyard_only("its 416 announces the whole blob as Content-Length, sends less")
    def test_reversed_range_is_ignored_or_416(
        self, client: httpx.Client, stored: tuple[str, bytes]
    ) -> None:
        url, data = stored
        response = client.get(url, headers={"Range": "bytes=50-10"})
        assert response.status_code in (200, 416)
        if response.status_code == 200:
            assert response.content == data


class TestDelete:
    def test_delete_blob(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(300)
        push_blob(client, repo, blob)
        response = client.delete(f"/v2/{repo}/blobs/{blob.digest}")
        assert response.status_code == 202
        assert_error(client.get(f"/v2/{repo}/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
        assert not blob_exists(client, repo, blob.digest)

    def test_delete_twice_is_404(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(300)
        push_blob(client, repo, blob)
        assert client.delete(f"/v2/{repo}/blobs/{blob.digest}").status_code == 202
        assert_error(client.delete(f"/v2/{repo}/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")

    def test_delete_unknown_blob_is_404(self, client: httpx.Client, repo: str) -> None:
        push_blob(client, repo, random_blob(10))
        response = client.delete(f"/v2/{repo}/blobs/{random_blob(10).digest}")
        assert_error(response, 404, "BLOB_UNKNOWN")

    def test_delete_leaves_other_repositories_alone(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        blob = random_blob(300)
        push_blob(client, repo_a, blob)
        push_blob(client, repo_b, blob)
        assert client.delete(f"/v2/{repo_a}/blobs/{blob.digest}").status_code == 202
        assert not blob_exists(client, repo_a, blob.digest)
        assert_blob_served(client, repo_b, blob)

    def test_blob_can_be_pushed_again_after_delete(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(300)
        push_blob(client, repo, blob)
        assert client.delete(f"/v2/{repo}/blobs/{blob.digest}").status_code == 202
        push_blob(client, repo, blob)
        assert_blob_served(client, repo, blob)


@pytest.mark.parametrize("digest", ["sha256:zz", "sha256:" + "a" * 63, "md5:" + "a" * 32])
def test_invalid_digest_in_blob_url(client: httpx.Client, repo: str, digest: str) -> None:
    push_blob(client, repo, random_blob(10))
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")
