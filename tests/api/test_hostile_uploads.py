"""Uploads that lie: bodies cut short of their Content-Length, ranges that do not add up,
broken chunked encoding, several digests. Nothing half-written may become a blob."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.content import Blob, matches_digest, random_blob
from tests.api.protocol import (
    Sentinel,
    assert_error,
    blob_exists,
    follow,
    raw_exchange,
    raw_request,
    raw_status,
    request_head,
    start_upload,
    upload_location,
    upload_range_end,
    with_query,
)
from tests.api.server_limits import CHUNKED_BODY_ERRORS_INVISIBLE
from tests.support.processes import Server


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def upload_progress(client: httpx.Client, location: str) -> int | None:
    """Bytes the registry says it holds for an upload, or None when the upload is gone.
    (``Range: 0-0`` is read as empty: the tests never leave exactly one byte.)"""
    response = client.get(location)
    if response.status_code == 404:
        assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")
        return None
    assert response.status_code == 204, response.status_code
    if response.headers.get("range", "0-0") == "0-0":
        return 0
    return upload_range_end(response) + 1


class TestTruncatedBodies:
    def test_monolithic_put(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(2000)
        sent = blob.data[:1000]
        location = upload_location(client, repo)
        digest_of_sent = Blob(sent).digest
        head = request_head(
            "PUT",
            path_of(with_query(location, digest=digest_of_sent)),
            registry.host,
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(blob.size))],
        )
        reply = raw_exchange(registry.url, head + sent)
        status = raw_status(reply)
        assert status is None or 400 <= status < 500, reply[:300]
        assert not blob_exists(client, repo, digest_of_sent)
        assert not blob_exists(client, repo, blob.digest)
        sentinel.assert_intact(client)

    def test_single_post(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(2000)
        sent = Blob(blob.data[:1500])
        head = request_head(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={sent.digest}",
            registry.host,
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(blob.size))],
        )
        reply = raw_exchange(registry.url, head + sent.data)
        status = raw_status(reply)
        assert status is None or 400 <= status < 500 or status == 202, reply[:300]
        assert not blob_exists(client, repo, sent.digest)
        assert not blob_exists(client, repo, blob.digest)
        sentinel.assert_intact(client)

    def test_patch_then_resume(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        """A PATCH cut short may keep what arrived (resumable push) or nothing, but what the
        registry then reports must be the truth: resuming from there gives the right blob."""
        blob = random_blob(4000)
        location = upload_location(client, repo)
        head = request_head(
            "PATCH",
            path_of(location),
            registry.host,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", "3000"),
                ("Content-Range", "0-2999"),
            ],
        )
        reply = raw_exchange(registry.url, head + blob.data[:1200])
        status = raw_status(reply)
        assert status is None or 400 <= status < 500, reply[:300]
        progress = upload_progress(client, location)
        if progress is None:
            location = upload_location(client, repo)
            progress = 0
        assert progress <= 1200
        rest = blob.data[progress:]
        response = client.patch(
            location,
            content=rest,
            headers={"Content-Range": f"{progress}-{blob.size - 1}"},
        )
        assert response.status_code == 202, response.content
        location = follow(client, response.headers["location"])
        done = client.put(with_query(location, digest=blob.digest))
        assert done.status_code == 201, done.content
        pulled = client.get(f"/v2/{repo}/blobs/{blob.digest}")
        assert pulled.content == blob.data
        sentinel.assert_intact(client)

    @CHUNKED_BODY_ERRORS_INVISIBLE
    def test_chunked_put_cut_short(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        """Transfer-Encoding: chunked, and the connection ends before the last (empty) chunk:
        the body is incomplete, even though the digest matches the part that arrived."""
        blob = random_blob(2000)
        sent = Blob(blob.data[:1000])
        location = upload_location(client, repo)
        head = request_head(
            "PUT",
            path_of(with_query(location, digest=sent.digest)),
            registry.host,
            [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")],
        )
        reply = raw_exchange(registry.url, head + b"3e8\r\n" + sent.data + b"\r\n")
        status = raw_status(reply)
        assert status is None or 400 <= status < 500, reply[:300]
        assert not blob_exists(client, repo, sent.digest)
        sentinel.assert_intact(client)

    @CHUNKED_BODY_ERRORS_INVISIBLE
    @pytest.mark.dockyard_only("answers 500 to a malformed chunk size")
    def test_broken_chunked_put(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        sent = random_blob(100)
        location = upload_location(client, repo)
        head = request_head(
            "PUT",
            path_of(with_query(location, digest=sent.digest)),
            registry.host,
            [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")],
        )
        body = b"64\r\n" + sent.data + b"\r\nnot-hex\r\nxx\r\n0\r\n\r\n"
        reply = raw_exchange(registry.url, head + body)
        status = raw_status(reply)
        assert status is None or 400 <= status < 500, reply[:300]
        assert not blob_exists(client, repo, sent.digest)
        sentinel.assert_intact(client)

    @CHUNKED_BODY_ERRORS_INVISIBLE
    @pytest.mark.dockyard_only("answers 500 to a malformed chunk size")
    def test_broken_chunked_patch(
        self, registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(100)
        location = upload_location(client, repo)
        head = request_head(
            "PATCH", path_of(location), registry.host, [("Transfer-Encoding", "chunked")]
        )
        body = b"64\r\n" + blob.data + b"\r\nnot-hex\r\nxx\r\n"
        reply = raw_exchange(registry.url, head + body)
        status = raw_status(reply)
        assert status is None or 400 <= status < 500, reply[:300]
        progress = upload_progress(client, location)
        assert progress in (None, 0, 100)
        if progress is not None:
            done = client.put(with_query(location, digest=random_blob(5).digest))
            assert_error(done, 400, "DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "SIZE_INVALID")
        sentinel.assert_intact(client)


@pytest.mark.dockyard_only("does not check Content-Range on PATCH")
class TestRangesThatDoNotAddUp:
    @pytest.mark.parametrize(
        "content_range",
        [
            "abc",
            "-1-3",
            "0-99999999999999999999999",
            "5-2",
            "0-",
            "-",
            "0-1-2",
            "18446744073709551615-18446744073709551616",
            "1-5",
        ],
    )
    def test_bad_content_range(
        self, client: httpx.Client, sentinel: Sentinel, repo: str, content_range: str
    ) -> None:
        blob = random_blob(5)
        location = upload_location(client, repo)
        response = client.patch(
            location, content=blob.data, headers={"Content-Range": content_range}
        )
        assert response.status_code in (400, 416), (response.status_code, response.content)
        if response.status_code == 400:
            assert_error(response, 400, "BLOB_UPLOAD_INVALID", "SIZE_INVALID", "RANGE_INVALID")
        assert upload_progress(client, location) in (None, 0)
        assert not blob_exists(client, repo, blob.digest)
        sentinel.assert_intact(client)

    def test_range_longer_than_body(
        self, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(500)
        location = upload_location(client, repo)
        response = client.patch(location, content=blob.data, headers={"Content-Range": "0-1023"})
        assert response.status_code in (400, 416), response.status_code
        assert upload_progress(client, location) in (None, 0)
        sentinel.assert_intact(client)

    def test_range_shorter_than_body(
        self, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(500)
        location = upload_location(client, repo)
        response = client.patch(location, content=blob.data, headers={"Content-Range": "0-99"})
        assert response.status_code in (400, 416), response.status_code
        assert upload_progress(client, location) in (None, 0)
        done = client.put(with_query(location, digest=blob.digest))
        assert done.status_code in (400, 404, 416)
        assert not blob_exists(client, repo, blob.digest)
        sentinel.assert_intact(client)

    def test_final_put_range_longer_than_body(
        self, client: httpx.Client, sentinel: Sentinel, repo: str
    ) -> None:
        blob = random_blob(500)
        location = upload_location(client, repo)
        response = client.put(
            with_query(location, digest=blob.digest),
            content=blob.data,
            headers={"Content-Range": "0-999"},
        )
        assert response.status_code in (400, 416), response.status_code
        assert not blob_exists(client, repo, blob.digest)
        sentinel.assert_intact(client)


def test_several_digest_parameters(client: httpx.Client, sentinel: Sentinel, repo: str) -> None:
    """Docker's API allows several digests; the registry verifies none or all of them, and
    must refuse the content when one it checks is wrong. A wrong one never names a blob."""
    blob = random_blob(300)
    wrong = random_blob(300).digest
    location = upload_location(client, repo)
    url = with_query(with_query(location, digest=blob.digest), digest=wrong)
    response = client.put(url, content=blob.data)
    assert response.status_code in (201, 400), response.status_code
    if response.status_code == 400:
        assert_error(response, 400, "DIGEST_INVALID")
        assert not blob_exists(client, repo, blob.digest)
    else:
        assert matches_digest(blob.data, response.headers["docker-content-digest"])
    assert not blob_exists(client, repo, wrong)
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "upload_path",
    [
        "%00",
        "a%2Fb",
        "*",
        "~root",
        *(
            pytest.param(path, marks=pytest.mark.dockyard_only("redirects '..' paths (301)"))
            for path in (
                "..%2F..%2F..%2Fetc%2Fpasswd",
                "../../../../etc/passwd",
                "%2e%2e",
                "..",
                ".",
            )
        ),
    ],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_hostile_upload_ids(
    registry: Server,
    client: httpx.Client,
    sentinel: Sentinel,
    repo: str,
    method: str,
    upload_path: str,
) -> None:
    start_upload(client, repo)
    blob = random_blob(10)
    path = f"/v2/{repo}/blobs/uploads/{upload_path}"
    if method == "PUT":
        path += f"?digest={blob.digest}"
    body = blob.data if method in ("PATCH", "PUT") else None
    response = raw_request(registry.url, method, path, [], body)
    assert 400 <= response.status < 500, (response.status, response.body[:300])
    assert b"Traceback" not in response.body
    assert not blob_exists(client, repo, blob.digest)
    sentinel.assert_intact(client)


def test_patch_after_completion(client: httpx.Client, sentinel: Sentinel, repo: str) -> None:
    blob = random_blob(100)
    location = upload_location(client, repo)
    assert (
        client.put(with_query(location, digest=blob.digest), content=blob.data).status_code == 201
    )
    response = client.patch(location, content=b"more")
    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")
    assert client.get(f"/v2/{repo}/blobs/{blob.digest}").content == blob.data
    sentinel.assert_intact(client)


def test_put_same_upload_twice(client: httpx.Client, sentinel: Sentinel, repo: str) -> None:
    blob = random_blob(100)
    other = random_blob(100)
    location = upload_location(client, repo)
    assert (
        client.put(with_query(location, digest=blob.digest), content=blob.data).status_code == 201
    )
    response = client.put(with_query(location, digest=other.digest), content=other.data)
    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")
    assert not blob_exists(client, repo, other.digest)
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:zz",
        pytest.param(
            "sha256:" + "../" * 20,
            marks=pytest.mark.dockyard_only("redirects paths with '..' (301)"),
        ),
        "sha512:" + "0" * 127,
        "sha256:" + "a" * 10_000,
    ],
    ids=lambda d: d[:20],
)
def test_delete_blob_with_bad_digest(
    registry: Server, client: httpx.Client, sentinel: Sentinel, digest: str
) -> None:
    response = raw_request(registry.url, "DELETE", f"/v2/{sentinel.repo}/blobs/{digest}")
    assert response.status in (400, 404), (response.status, response.body[:300])
    codes = {entry["code"] for entry in response.json()["errors"]}
    assert codes & {"DIGEST_INVALID", "BLOB_UNKNOWN"}, codes
    sentinel.assert_intact(client)
