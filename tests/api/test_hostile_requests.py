"""Malformed requests: garbage paths, garbage and huge headers, broken HTTP. None may get a 5xx
or a traceback, and the content pushed before must still be served intact afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import OCI_MANIFEST, make_image
from tests.api.protocol import (
    API_VERSION,
    API_VERSION_HEADER,
    Sentinel,
    assert_error,
    assert_manifest_served,
    client_hello,
    manifest_exists,
    push_blob,
    push_blobs,
    raw_exchange,
    raw_request,
    raw_status,
    request_head,
)
from tests.api.server_limits import TOO_MANY_HEADERS_ANSWERED_BY_GRANIAN
from tests.support.processes import Server

REDIRECTED = "redirects unclean paths (301) or answers without the API version header"
GARBAGE_PATHS = [
    "/v2/_catalog/extra",
    "/v2/foo/manifests/",
    "/v2/foo/blobs/",
    "/v2/foo/tags/list/extra",
    "/v2/foo/tags",
    "/v2/foo/manifests/%ff%fe",
    "/v2/foo/manifests/" + "a" * 5000,
    "/v2/foo/manifests/latest?" + "&".join(["tag=x"] * 500),
    "/v2/foo/manifests/latest?%zz=%zz",
    "/v2/\\..\\..\\windows",
    "/v2/foo/referrers/",
    "/v2/foo/referrers/sha256:" + "a" * 64 + "/extra",
    *(
        pytest.param(path, marks=pytest.mark.dockyard_only(REDIRECTED))
        for path in (
            "/v2//",
            "/v2/%",
            "/v2/%zz/tags/list",
            "/v2/" + "a/" * 2000 + "tags/list",
            "/../../etc/passwd",
            "/v2/../../../../etc/passwd",
            "/v2/foo/blobs/sha256:" + "../" * 10 + "etc/passwd",
            "/v2/foo/blobs/sha256%3A..%2F..%2F..%2Fetc%2Fpasswd",
            "/v2/foo/blobs/uploads/..%2f..%2f..%2fetc%2fpasswd",
            "/v2/foo/blobs/uploads/../../../../etc/passwd",
            "/v2/_oci/ext/discover/../../../x",
        )
    ),
]

# Odd, but a registry may answer these with a success: only a 5xx would be wrong.
ODD_PATHS = [
    "//v2/",
    "/v2/foo/blobs/uploads",
    "/v2/foo/blobs/uploads/?digest=" + "a" * 10000,
    "/v2/foo/blobs/uploads/?digest=sha256:zz&mount=sha256:zz&from=..",
    "/v2/foo/blobs/uploads/?mount=%00&from=%00",
    "/v2/_catalog?n=1&last=" + "%ff" * 100,
    "/v2/_catalog?n=1&n=2&last=&last=a",
    "/v1/search?q=busybox",
    "/",
    "/favicon.ico",
    "/v2/?" + "x=y&" * 1000,
]


@pytest.mark.parametrize("path", GARBAGE_PATHS, ids=lambda p: p[:50])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "POST"])
def test_garbage_path(
    registry: Server, client: httpx.Client, sentinel: Sentinel, method: str, path: str
) -> None:
    body = b"{}" if method in ("PUT", "PATCH", "POST") else None
    response = raw_request(registry.url, method, path, [], body)
    assert 400 <= response.status < 500, (method, path, response.status, response.body[:300])
    assert b"Traceback" not in response.body
    if len(path) < 4096:
        assert response.header(API_VERSION_HEADER) == API_VERSION
    sentinel.assert_intact(client)


@pytest.mark.parametrize("path", ODD_PATHS, ids=lambda p: p[:50])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "POST"])
def test_odd_path(
    registry: Server, client: httpx.Client, sentinel: Sentinel, method: str, path: str
) -> None:
    body = b"{}" if method in ("PUT", "PATCH", "POST") else None
    response = raw_request(registry.url, method, path, [], body)
    assert response.status < 500, (method, path, response.status, response.body[:300])
    assert b"Traceback" not in response.body
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "value",
    [
        "bytes=-0",
        "bytes=0-0,5-6,9-",
        "bytes=" + ",".join(["0-1"] * 2000),
        *(
            pytest.param(
                value,
                marks=pytest.mark.dockyard_only(
                    "its 416 announces the whole blob as Content-Length, sends less"
                ),
            )
            for value in (
                "bytes=abc",
                "bytes=99999999999999999999999-",
                "bytes=--1",
                "items=0-5",
                "bytes 0-5",
                "=",
                "bytes=5-2",
            )
        ),
    ],
    ids=lambda v: str(v)[:30],
)
def test_garbage_range_header(client: httpx.Client, sentinel: Sentinel, value: str) -> None:
    blob = sentinel.image.layers[0]
    response = client.get(f"/v2/{sentinel.repo}/blobs/{blob.digest}", headers={"Range": value})
    assert response.status_code in (200, 206, 416), response.status_code
    if response.status_code == 200:
        assert response.content == blob.data
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "accept",
    [
        "a/b/c/d",
        ";;;;",
        ",,,,",
        "*/*;q=abc",
        "application/vnd.oci.image.manifest.v1+json;q=2",
        "x" * 8000,
    ],
    ids=lambda v: v[:30],
)
def test_garbage_accept_header(client: httpx.Client, sentinel: Sentinel, accept: str) -> None:
    response = client.get(
        f"/v2/{sentinel.repo}/manifests/{sentinel.tag}", headers={"Accept": accept}
    )
    assert response.status_code in (200, 400, 404, 406, 431), response.status_code
    if response.status_code == 200:
        assert response.content == sentinel.image.manifest.body
    sentinel.assert_intact(client)


@TOO_MANY_HEADERS_ANSWERED_BY_GRANIAN
def test_a_thousand_accept_lines(client: httpx.Client, sentinel: Sentinel) -> None:
    headers = [("Accept", f"application/x-junk-{i}") for i in range(1000)]
    headers.append(("Accept", OCI_MANIFEST))
    response = client.get(f"/v2/{sentinel.repo}/manifests/{sentinel.tag}", headers=headers)
    assert response.status_code in (200, 400, 431), response.status_code
    if response.status_code == 200:
        assert response.content == sentinel.image.manifest.body


@pytest.mark.parametrize(
    "value", ["*", 'W/"x"', '""', "garbage", '"' + "x" * 5000 + '"'], ids=lambda v: v[:20]
)
def test_garbage_if_none_match(client: httpx.Client, sentinel: Sentinel, value: str) -> None:
    response = client.get(
        f"/v2/{sentinel.repo}/manifests/{sentinel.tag}",
        headers={"Accept": OCI_MANIFEST, "If-None-Match": value},
    )
    assert response.status_code in (200, 304)
    if value != "*":
        assert response.status_code == 200
        assert response.content == sentinel.image.manifest.body


@pytest.mark.parametrize(
    "value", ["Bearer", "Basic !!!!", "Basic " + "A" * 10000, "Digest"], ids=lambda v: v[:20]
)
def test_garbage_authorization(client: httpx.Client, value: str) -> None:
    response = client.get("/v2/", headers={"Authorization": value})
    assert response.status_code in (200, 400, 401, 431)


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_huge_header(registry: Server, client: httpx.Client, sentinel: Sentinel, size: int) -> None:
    head = request_head("GET", "/v2/", registry.host, [("X-Huge", "h" * size)])
    reply = raw_exchange(registry.url, head, half_close=False, timeout=20)
    status = raw_status(reply)
    assert status is None or status in (200, 400, 413, 431), reply[:200]
    sentinel.assert_intact(client)


def test_many_headers(registry: Server, client: httpx.Client, sentinel: Sentinel) -> None:
    headers = [(f"X-Header-{i}", "v") for i in range(10_000)]
    head = request_head("GET", "/v2/", registry.host, headers)
    reply = raw_exchange(registry.url, head, half_close=False, timeout=20)
    status = raw_status(reply)
    assert status is None or status in (200, 400, 413, 431), reply[:200]
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"PUT /v2/x/manifests/y HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"PUT /v2/x/manifests/y HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999"
        b"\r\n\r\n",
    ],
    ids=lambda d: repr(d[:24]),
)
def test_broken_http(
    registry: Server, client: httpx.Client, sentinel: Sentinel, data: bytes
) -> None:
    reply = raw_exchange(registry.url, data, half_close=False, timeout=20)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500 or status == 505, reply[:200]
    sentinel.assert_intact(client)


def test_tls_client_hello_on_plain_port(registry: Server) -> None:
    # docker tries https first and falls back to http when the plain port answers the TLS
    # ClientHello with an HTTP 400 (it waits for that answer without closing its side)
    reply = raw_exchange(registry.url, client_hello(), half_close=False, timeout=20)
    assert reply.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), reply[:200]


def test_http_1_0_without_host(registry: Server) -> None:
    reply = raw_exchange(registry.url, b"GET /v2/ HTTP/1.0\r\n\r\n", half_close=False, timeout=20)
    assert raw_status(reply) in (200, 400), reply[:200]


def test_content_length_and_transfer_encoding_together(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
) -> None:
    """RFC 9112: the server may refuse the request or read it as chunked (ignoring the
    Content-Length); it must not read 5 bytes and take the rest for another request."""
    image = make_image()
    push_blobs(client, repo, image.blobs)
    manifest = image.manifest
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/smuggled",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
    )
    body = f"{len(manifest.body):x}\r\n".encode() + manifest.body + b"\r\n0\r\n\r\n"
    reply = raw_exchange(registry.url, head + body, half_close=False, timeout=20)
    status = raw_status(reply)
    if status == 201:
        assert_manifest_served(client, repo, "smuggled", manifest)
    else:
        assert status is None or 400 <= status < 500, reply[:300]
        assert not manifest_exists(client, repo, "smuggled")
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "content_type",
    ["", "garbage", f"{OCI_MANIFEST}; ;;=", "x" * 5000, "application/octet-stream"],
    ids=lambda v: v[:20],
)
def test_garbage_content_type_on_manifest_push(
    client: httpx.Client, sentinel: Sentinel, repo: str, content_type: str
) -> None:
    image = make_image()
    push_blob(client, repo, image.config)
    for layer in image.layers:
        push_blob(client, repo, layer)
    response = client.put(
        f"/v2/{repo}/manifests/ct",
        content=image.manifest.body,
        headers={"Content-Type": content_type},
    )
    if response.status_code == 201:
        pulled = client.get(f"/v2/{repo}/manifests/ct", headers={"Accept": OCI_MANIFEST})
        assert pulled.content == image.manifest.body
    else:
        assert_error(response, (400, 415), "MANIFEST_INVALID", "UNSUPPORTED")
        assert not manifest_exists(client, repo, "ct")
    sentinel.assert_intact(client)
