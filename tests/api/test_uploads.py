"""Blob uploads: sessions, monolithic and chunked pushes, progress, completion, cancellation
and the checks that keep half-written or wrong content invisible."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.content import Blob, matches_digest, random_blob
from tests.api.protocol import (
    assert_blob_served,
    assert_error,
    blob_exists,
    follow,
    new_repo,
    push_blob,
    start_upload,
    upload_location,
    upload_range_end,
    with_query,
)


def patch_chunk(
    client: httpx.Client, location: str, data: bytes, content_range: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if content_range is not None:
        headers["Content-Range"] = content_range
    return client.patch(location, content=data, headers=headers)


def accepted_chunk(response: httpx.Response, client: httpx.Client, end: int) -> str:
    """Check a 202 chunk response and return the Location to use next."""
    assert response.status_code == 202, (response.status_code, response.content)
    assert upload_range_end(response) == end
    assert response.headers.get("docker-upload-uuid")
    return follow(client, response.headers["location"])


def finish(client: httpx.Client, location: str, digest: str, data: bytes = b"") -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"} if data else {}
    return client.put(with_query(location, digest=digest), content=data, headers=headers)


def assert_created(client: httpx.Client, response: httpx.Response, repo: str, blob: Blob) -> None:
    """A 201 completing an upload: Location leads to the blob, the digest matches it."""
    assert response.status_code == 201, (response.status_code, response.content)
    assert matches_digest(blob.data, response.headers["docker-content-digest"])
    pulled = client.get(follow(client, response.headers["location"]))
    assert pulled.status_code == 200
    assert pulled.content == blob.data
    assert_blob_served(client, repo, blob)


class TestSession:
    def test_post_starts_a_session(self, client: httpx.Client, repo: str) -> None:
        response = client.post(f"/v2/{repo}/blobs/uploads/")
        assert response.status_code == 202
        upload_id = response.headers["docker-upload-uuid"]
        assert upload_id
        assert upload_id in response.headers["location"]
        assert response.headers.get("range", "0-0") == "0-0"

    def test_sessions_are_distinct(self, client: httpx.Client, repo: str) -> None:
        first = start_upload(client, repo)
        second = start_upload(client, repo)
        assert first.headers["docker-upload-uuid"] != second.headers["docker-upload-uuid"]
        assert first.headers["location"] != second.headers["location"]

    def test_location_is_followable(self, client: httpx.Client, repo: str) -> None:
        response = start_upload(client, repo)
        location = follow(client, response.headers["location"])
        status = client.get(location)
        assert status.status_code == 204
        assert status.headers["docker-upload-uuid"] == response.headers["docker-upload-uuid"]

    def test_status_of_fresh_upload(self, client: httpx.Client, repo: str) -> None:
        location = upload_location(client, repo)
        response = client.get(location)
        assert response.status_code == 204
        assert response.headers.get("range", "0-0") == "0-0"
        assert response.headers.get("location")

    def test_status_reports_progress(self, client: httpx.Client, repo: str) -> None:
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, b"x" * 700), client, 699)
        response = client.get(location)
        assert response.status_code == 204
        assert response.content == b""
        assert upload_range_end(response) == 699
        assert response.headers.get("docker-upload-uuid")
        assert response.headers.get("location")

    def test_completed_upload_is_gone(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(100)
        location = upload_location(client, repo)
        assert finish(client, location, blob.digest, blob.data).status_code == 201
        assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


class TestMonolithic:
    def test_post_then_put(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(5000)
        location = upload_location(client, repo)
        response = finish(client, location, blob.digest, blob.data)
        assert_created(client, response, repo, blob)
        assert response.headers["docker-content-digest"] == blob.digest

    @pytest.mark.dockyard_only("answers 202 to a single POST ?digest= (allowed, not wanted)")
    def test_single_post(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3000)
        response = client.post(
            with_query(f"/v2/{repo}/blobs/uploads/", digest=blob.digest),
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert_created(client, response, repo, blob)

    @pytest.mark.dockyard_only("answers 202 to a single POST ?digest= (allowed, not wanted)")
    def test_single_post_with_wrong_digest(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3000)
        claimed = random_blob(3000).digest
        response = client.post(
            with_query(f"/v2/{repo}/blobs/uploads/", digest=claimed),
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert_error(response, 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, claimed)
        assert not blob_exists(client, repo, blob.digest)

    def test_single_post_is_201_or_a_usable_session(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3000)
        response = client.post(
            with_query(f"/v2/{repo}/blobs/uploads/", digest=blob.digest),
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code == 202:  # the spec's fallback: continue with PUT
            response = finish(
                client, follow(client, response.headers["location"]), blob.digest, blob.data
            )
        assert_created(client, response, repo, blob)

    def test_put_with_whole_body_and_no_content_type(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2000)
        location = upload_location(client, repo)
        response = client.put(with_query(location, digest=blob.digest), content=blob.data)
        assert_created(client, response, repo, blob)

    def test_same_blob_pushed_twice(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2000)
        push_blob(client, repo, blob)
        push_blob(client, repo, blob)
        assert_blob_served(client, repo, blob)

    def test_concurrent_pushes_of_one_blob(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(256 * 1024)
        locations = [upload_location(client, repo) for _ in range(4)]

        def put(location: str) -> int:
            return finish(client, location, blob.digest, blob.data).status_code

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(put, locations))
        assert statuses == [201] * 4
        assert_blob_served(client, repo, blob)


class TestChunked:
    def test_chunks_with_plain_content_range(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3000)
        location = upload_location(client, repo)
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[:1024], "0-1023"), client, 1023
        )
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[1024:2048], "1024-2047"), client, 2047
        )
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[2048:], "2048-2999"), client, 2999
        )
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    def test_chunks_with_bytes_equals_content_range(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2048)
        location = upload_location(client, repo)
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[:1024], "bytes=0-1023"), client, 1023
        )
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[1024:], "bytes=1024-2047"), client, 2047
        )
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    def test_single_patch_without_content_range(self, client: httpx.Client, repo: str) -> None:
        # skopeo / podman: POST, one PATCH with Content-Length, PUT ?digest with no body
        blob = random_blob(10_000)
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, blob.data), client, 9999)
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    def test_transfer_encoding_chunked_without_content_type(
        self, client: httpx.Client, repo: str
    ) -> None:
        # buildah / docker 20.10: the body streams with no Content-Length, no Content-Type
        blob = random_blob(300_000)

        def pieces() -> Iterator[bytes]:
            for start in range(0, blob.size, 65536):
                yield blob.data[start : start + 65536]

        location = upload_location(client, repo)
        response = client.patch(location, content=pieces())
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert "content-type" not in response.request.headers
        location = accepted_chunk(response, client, blob.size - 1)
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    def test_many_megabyte_chunks(self, client: httpx.Client, repo: str) -> None:
        # oras-py: several PATCHes with "Content-Range: <start>-<end>" (no "bytes=")
        blob = random_blob(5 * 1024 * 1024 + 77)
        chunk = 1024 * 1024
        location = upload_location(client, repo)
        for start in range(0, blob.size, chunk):
            piece = blob.data[start : start + chunk]
            end = start + len(piece) - 1
            response = patch_chunk(client, location, piece, f"{start}-{end}")
            location = accepted_chunk(response, client, end)
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    def test_final_chunk_in_put(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2048)
        location = upload_location(client, repo)
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[:1000], "0-999"), client, 999
        )
        response = client.put(
            with_query(location, digest=blob.digest),
            content=blob.data[1000:],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "1000-2047"},
        )
        assert_created(client, response, repo, blob)

    def test_final_chunk_in_put_without_content_range(
        self, client: httpx.Client, repo: str
    ) -> None:
        blob = random_blob(2048)
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, blob.data[:1000]), client, 999)
        assert_created(client, finish(client, location, blob.digest, blob.data[1000:]), repo, blob)

    def test_upload_uuid_is_stable(self, client: httpx.Client, repo: str) -> None:
        started = start_upload(client, repo)
        upload_id = started.headers["docker-upload-uuid"]
        location = follow(client, started.headers["location"])
        response = patch_chunk(client, location, b"abc")
        assert response.headers["docker-upload-uuid"] == upload_id
        status = client.get(follow(client, response.headers["location"]))
        assert status.headers["docker-upload-uuid"] == upload_id

    @pytest.mark.dockyard_only("ignores Content-Range: accepts out-of-order chunks")
    def test_out_of_order_chunk_is_416(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3072)
        location = upload_location(client, repo)
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[:1024], "0-1023"), client, 1023
        )
        response = patch_chunk(client, location, blob.data[2048:], "2048-3071")
        assert response.status_code == 416
        assert upload_range_end(response) == 1023
        status = client.get(location)
        assert status.status_code == 204
        assert upload_range_end(status) == 1023
        # the session goes on from where it really is
        location = follow(client, status.headers["location"])
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[1024:], "1024-3071"), client, 3071
        )
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    @pytest.mark.dockyard_only("ignores Content-Range: accepts a chunk sent twice")
    def test_repeated_chunk_is_416(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2048)
        location = upload_location(client, repo)
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[:1024], "0-1023"), client, 1023
        )
        response = patch_chunk(client, location, blob.data[:1024], "0-1023")
        assert response.status_code == 416
        assert upload_range_end(response) == 1023
        location = accepted_chunk(
            patch_chunk(client, location, blob.data[1024:], "1024-2047"), client, 2047
        )
        assert_created(client, finish(client, location, blob.digest), repo, blob)

    @pytest.mark.dockyard_only("ignores Content-Range on the closing PUT")
    def test_out_of_order_final_chunk_in_put_is_416(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2048)
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, blob.data[:1000]), client, 999)
        response = client.put(
            with_query(location, digest=blob.digest),
            content=blob.data[1500:],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "1500-2047"},
        )
        assert response.status_code == 416
        assert not blob_exists(client, repo, blob.digest)


class TestDigests:
    def test_mismatch_is_digest_invalid_and_invisible(
        self, client: httpx.Client, repo: str
    ) -> None:
        blob = random_blob(1000)
        claimed = random_blob(1000).digest
        location = upload_location(client, repo)
        assert_error(finish(client, location, claimed, blob.data), 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, claimed)
        assert not blob_exists(client, repo, blob.digest)

    def test_mismatch_after_chunks_is_invisible(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(2048)
        claimed = random_blob(2048).digest
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, blob.data), client, 2047)
        assert_error(finish(client, location, claimed), 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, claimed)
        assert not blob_exists(client, repo, blob.digest)

    def test_missing_digest_parameter(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(100)
        location = upload_location(client, repo)
        response = client.put(location, content=blob.data)
        assert_error(response, 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, blob.digest)

    @pytest.mark.parametrize(
        "digest",
        [
            "sha256:zz",
            "sha256:" + "0" * 63,
            "sha256:" + "A" * 64,
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            "",
        ],
    )
    def test_malformed_digest_is_400(self, client: httpx.Client, repo: str, digest: str) -> None:
        blob = random_blob(100)
        location = upload_location(client, repo)
        response = client.put(with_query(location, digest=digest), content=blob.data)
        assert_error(response, 400, "DIGEST_INVALID", "UNSUPPORTED")
        assert not blob_exists(client, repo, blob.digest)

    def test_sha512(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(4000, algorithm="sha512")
        assert blob.digest.startswith("sha512:")
        location = upload_location(client, repo)
        response = finish(client, location, blob.digest, blob.data)
        assert response.status_code == 201, response.content
        assert matches_digest(blob.data, response.headers["docker-content-digest"])
        pulled = client.get(f"/v2/{repo}/blobs/{blob.digest}")
        assert pulled.status_code == 200
        assert pulled.content == blob.data
        assert matches_digest(pulled.content, pulled.headers["docker-content-digest"])
        head = client.head(f"/v2/{repo}/blobs/{blob.digest}")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == blob.size

    def test_sha512_with_digest_algorithm_parameter(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(3000, algorithm="sha512")
        started = start_upload(client, repo, **{"digest-algorithm": "sha512"})
        location = follow(client, started.headers["location"])
        location = accepted_chunk(patch_chunk(client, location, blob.data, "0-2999"), client, 2999)
        response = finish(client, location, blob.digest)
        assert response.status_code == 201, response.content
        assert client.get(f"/v2/{repo}/blobs/{blob.digest}").content == blob.data

    def test_sha512_mismatch(self, client: httpx.Client, repo: str) -> None:
        blob = random_blob(100, algorithm="sha512")
        claimed = random_blob(100, algorithm="sha512").digest
        location = upload_location(client, repo)
        assert_error(finish(client, location, claimed, blob.data), 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, claimed)
        assert not blob_exists(client, repo, blob.digest)


class TestCancel:
    @pytest.fixture
    def cancelled(self, client: httpx.Client, repo: str) -> str:
        location = upload_location(client, repo)
        location = accepted_chunk(patch_chunk(client, location, b"abcdef"), client, 5)
        response = client.delete(location)
        assert response.status_code == 204
        return location

    def test_status_after_cancel(self, client: httpx.Client, cancelled: str) -> None:
        assert_error(client.get(cancelled), 404, "BLOB_UPLOAD_UNKNOWN")

    def test_patch_after_cancel(self, client: httpx.Client, cancelled: str) -> None:
        assert_error(patch_chunk(client, cancelled, b"ghi"), 404, "BLOB_UPLOAD_UNKNOWN")

    def test_put_after_cancel(self, client: httpx.Client, repo: str, cancelled: str) -> None:
        blob = Blob(b"abcdef")
        assert_error(finish(client, cancelled, blob.digest), 404, "BLOB_UPLOAD_UNKNOWN")
        assert not blob_exists(client, repo, blob.digest)

    def test_cancel_twice(self, client: httpx.Client, cancelled: str) -> None:
        assert_error(client.delete(cancelled), 404, "BLOB_UPLOAD_UNKNOWN")


class TestUnknownUpload:
    UNKNOWN = "/v2/{repo}/blobs/uploads/1b4e28ba-2fa1-11d2-883f-0016d3cca427"

    @pytest.fixture
    def url(self, client: httpx.Client, repo: str) -> str:
        push_blob(client, repo, random_blob(10))
        return self.UNKNOWN.format(repo=repo)

    @pytest.mark.dockyard_only("answers BLOB_UPLOAD_INVALID for an upload id it never issued")
    def test_get(self, client: httpx.Client, url: str) -> None:
        assert_error(client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")

    @pytest.mark.dockyard_only("answers BLOB_UPLOAD_INVALID for an upload id it never issued")
    def test_patch(self, client: httpx.Client, url: str) -> None:
        assert_error(patch_chunk(client, url, b"data"), 404, "BLOB_UPLOAD_UNKNOWN")

    @pytest.mark.dockyard_only("answers BLOB_UPLOAD_INVALID for an upload id it never issued")
    def test_put(self, client: httpx.Client, url: str) -> None:
        blob = random_blob(10)
        assert_error(finish(client, url, blob.digest, blob.data), 404, "BLOB_UPLOAD_UNKNOWN")

    @pytest.mark.dockyard_only("answers BLOB_UPLOAD_INVALID for an upload id it never issued")
    def test_delete(self, client: httpx.Client, url: str) -> None:
        assert_error(client.delete(url), 404, "BLOB_UPLOAD_UNKNOWN")

    @pytest.mark.parametrize("upload_id", ["not-a-uuid", "a" * 300, "0" * 32])
    def test_odd_ids(self, client: httpx.Client, repo: str, upload_id: str) -> None:
        push_blob(client, repo, random_blob(10))
        response = client.get(f"/v2/{repo}/blobs/uploads/{upload_id}")
        assert_error(response, (400, 404), "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")

    @pytest.mark.dockyard_only("answers BLOB_UPLOAD_INVALID for an upload id it never issued")
    def test_upload_is_bound_to_its_repository(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        push_blob(client, repo_b, random_blob(10))
        blob = random_blob(100)
        started = start_upload(client, repo_a)
        upload_id = started.headers["docker-upload-uuid"]
        elsewhere = f"/v2/{repo_b}/blobs/uploads/{upload_id}"
        assert_error(client.get(elsewhere), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(finish(client, elsewhere, blob.digest, blob.data), 404, "BLOB_UPLOAD_UNKNOWN")
        assert not blob_exists(client, repo_b, blob.digest)
        # the session still works where it was started
        location = follow(client, started.headers["location"])
        assert_created(client, finish(client, location, blob.digest, blob.data), repo_a, blob)
