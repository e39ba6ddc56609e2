"""Uploads through the data port: signed upload links, bodies taken with splice(2)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from dockyard.http.sendfile import BlobLinks
from tests.support.processes import Server, running_dockyard

SECRET = "dataport-test-secret-0123456789"
MIB = 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the defaults (the data port at the listen port + 1), with a secret the tests know
    env = {"DOCKYARD_SENDFILE_SECRET": SECRET, "DOCKYARD_WORKERS": "2"}
    with running_dockyard(tmp_path_factory.mktemp("dataport") / "data", env=env) as srv:
        yield srv


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def start(server: Server, name: str, **headers: str) -> str:
    response = httpx.post(f"{server.url}/v2/{name}/blobs/uploads/", headers=headers)
    assert response.status_code == 202, response.text
    return response.headers["location"]


def links(server: Server) -> BlobLinks:
    return BlobLinks(SECRET.encode(), port_of(server) + 1, listen_port=port_of(server))


def upload_id(location: str) -> str:
    return urlsplit(location).path.rsplit("/", 1)[1]


def raw_request(port: int, head: str, body: bytes = b"", until: bytes | None = None) -> bytes:
    """Send bytes on a fresh connection; read until ``until`` has come or the server
    closes the connection. Without ``until``, close at once (mid-body, say)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while until is not None and until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_an_upload_goes_to_a_signed_link_on_the_data_port(server: Server) -> None:
    location = start(server, "dp/basic")
    port = port_of(server)
    parts = urlsplit(location)
    assert (parts.scheme, parts.hostname, parts.port) == ("http", "127.0.0.1", port + 1)
    assert parts.path.startswith("/v2/dp/basic/blobs/uploads/")
    assert "expires=" in parts.query and "signature=" in parts.query

    data = os.urandom(3 * MIB + 5)
    with httpx.Client(timeout=30) as client:
        first = client.patch(
            location, content=data[: 2 * MIB], headers={"Content-Range": f"0-{2 * MIB - 1}"}
        )
        assert first.status_code == 202, first.text
        assert first.headers["range"] == f"0-{2 * MIB - 1}"
        assert "server" not in first.headers  # answered by the splice path, not by aiohttp
        status = client.get(first.headers["location"])
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{2 * MIB - 1}"
        final = client.put(
            first.headers["location"] + f"&digest={digest_of(data)}", content=data[2 * MIB :]
        )
        assert final.status_code == 201, final.text
        assert "server" not in final.headers
    assert final.headers["docker-content-digest"] == digest_of(data)
    # the blob lives on the registry port: the Location says so
    assert final.headers["location"] == (
        f"http://127.0.0.1:{port}/v2/dp/basic/blobs/{digest_of(data)}"
    )
    blob = httpx.get(final.headers["location"], follow_redirects=True)
    assert blob.content == data
    entries = server.access_log("dataport-upload", "dp/basic")
    assert [(e["method"], e["status"]) for e in entries] == [
        ("PATCH", 202),
        ("GET", 204),
        ("PUT", 201),
    ]
    assert sum(e["bytes_in"] for e in entries) == len(data)


def test_a_chunked_patch_is_taken_too(server: Server) -> None:
    """docker and buildah stream a layer in one PATCH without Content-Length: aiohttp
    reads that body, through the same upload handlers."""
    data = os.urandom(MIB + 11)
    location = start(server, "dp/chunked")

    def pieces() -> Iterator[bytes]:
        for offset in range(0, len(data), 100_000):
            yield data[offset : offset + 100_000]

    patched = httpx.patch(location, content=pieces())
    assert patched.status_code == 202, patched.text
    assert "aiohttp" in patched.headers["server"]
    assert patched.headers["range"] == f"0-{len(data) - 1}"
    final = httpx.put(patched.headers["location"] + f"&digest={digest_of(data)}")
    assert final.status_code == 201, final.text
    assert httpx.get(f"{server.url}/v2/dp/chunked/blobs/{digest_of(data)}").content == data


def test_single_put_and_mixed_requests_on_one_connection(server: Server) -> None:
    """A download link and then an upload on one kept-alive connection: aiohttp has the
    connection after the download, and serves the upload too."""
    big = os.urandom(9 * MIB)
    digest = digest_of(big)
    location = start(server, "dp/mixed")
    with httpx.Client(timeout=30) as client:
        put = client.put(location + f"&digest={digest}", content=big)
        assert put.status_code == 201, put.text
        redirect = client.get(f"{server.url}/v2/dp/mixed/blobs/{digest}")
        assert redirect.status_code == 307
        assert client.get(redirect.headers["location"]).content == big
        small = b"after a download"
        again = client.put(start(server, "dp/mixed") + f"&digest={digest_of(small)}", content=small)
        assert again.status_code == 201, again.text
        assert "aiohttp" in again.headers["server"]
    assert httpx.get(f"{server.url}/v2/dp/mixed/blobs/{digest_of(small)}").content == small


def test_chunks_on_new_connections_land_in_both_workers(server: Server) -> None:
    data = os.urandom(4 * MIB)
    location = start(server, "dp/workers")
    step = 256 * 1024
    for offset in range(0, len(data), step):
        with httpx.Client(timeout=30) as client:  # a new connection: either worker
            response = client.patch(
                location,
                content=data[offset : offset + step],
                headers={"Content-Range": f"{offset}-{offset + step - 1}"},
            )
        assert response.status_code == 202, response.text
        location = response.headers["location"]
    final = httpx.put(location + f"&digest={digest_of(data)}")
    assert final.status_code == 201, final.text
    assert httpx.get(f"{server.url}/v2/dp/workers/blobs/{digest_of(data)}").content == data


def test_forged_expired_and_misdirected_links_are_refused(server: Server) -> None:
    location = start(server, "dp/hostile")
    other = start(server, "dp/hostile")
    body = b"x" * 1000
    forged = location.replace("signature=", "signature=0")
    swapped = location.replace(upload_id(location), upload_id(other))  # its signature
    maker = links(server)
    # a link that expired two hours ago
    expired = maker.upload_url(
        "dp/hostile", upload_id(location), "127.0.0.1", time.time() - 3 * 3600
    )
    for url in (forged, swapped, expired):
        for response in (
            httpx.patch(url, content=body),  # the splice path
            httpx.patch(url, content=iter([body])),  # aiohttp (chunked)
            httpx.put(url + f"&digest={digest_of(body)}", content=body),
        ):
            assert response.status_code == 403, (url, response.text)
            assert response.json()["errors"][0]["code"] == "DENIED"
    # a genuine link for another repository does not reach this repository's upload
    elsewhere = maker.upload_url("dp/elsewhere", upload_id(location), "127.0.0.1")
    response = httpx.patch(elsewhere, content=body)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    # a signed name is still checked as a name; dot segments never reach an upload
    tricky = maker.upload_url("dp/UPPER..case", upload_id(location), "127.0.0.1")
    response = httpx.patch(tricky, content=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "NAME_INVALID"
    dotted = maker.upload_url("dp/../../etc", upload_id(location), "127.0.0.1")
    response = httpx.patch(dotted, content=body)
    assert response.status_code == 404
    # nothing reached the upload
    assert httpx.get(location).headers["range"] == "0-0"
    # and the port serves nothing but links
    for path in ("/v2/", "/v2/dp/hostile/tags/list", "/metrics", "/../etc/passwd"):
        response = httpx.get(f"http://127.0.0.1:{port_of(server) + 1}{path}")
        assert response.status_code == 404, path


def test_truncated_and_wrong_bodies_leave_the_upload_as_it_was(server: Server) -> None:
    data = os.urandom(2 * MIB)
    location = start(server, "dp/truncated")
    parts = urlsplit(location)
    target = f"{parts.path}?{parts.query}"
    port = parts.port or 0
    head = (
        f"PATCH {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Length: {len(data)}\r\nContent-Range: 0-{len(data) - 1}\r\n\r\n"
    )
    # the client goes away halfway through the body
    raw_request(port, head, data[: MIB // 2])
    # a Content-Length far beyond what is sent
    huge = head.replace(f"Content-Length: {len(data)}", "Content-Length: 999999999999999")
    raw_request(port, huge, data[:1000])

    def size() -> str:
        deadline = time.monotonic() + 30
        while True:  # the server notices the closed connection on its own time
            response = httpx.get(location)
            assert response.status_code == 204
            if response.headers["range"] == "0-0" or time.monotonic() > deadline:
                return str(response.headers["range"])

    assert size() == "0-0"
    with httpx.Client(timeout=30) as client:
        # a chunk that does not start where the upload ends: 416, and the connection
        # (whose body the server read) carries on
        wrong = client.patch(location, content=data[:1000], headers={"Content-Range": "5-1004"})
        assert wrong.status_code == 416
        assert wrong.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        # Content-Range and Content-Length that disagree
        mismatch = client.patch(location, content=data[:1000], headers={"Content-Range": "0-9"})
        assert mismatch.status_code == 416
        good = client.patch(location, content=data, headers={"Content-Range": f"0-{MIB * 2 - 1}"})
        assert good.status_code == 202, good.text
        # a digest that does not match: nothing becomes visible
        bad = client.put(good.headers["location"] + "&digest=sha256:" + "0" * 64)
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
        ok = client.put(good.headers["location"] + f"&digest={digest_of(data)}")
        assert ok.status_code == 201, ok.text
    assert httpx.head(f"{server.url}/v2/dp/truncated/blobs/sha256:{'0' * 64}").status_code == 404
    assert httpx.get(f"{server.url}/v2/dp/truncated/blobs/{digest_of(data)}").content == data


def test_garbage_after_a_body_is_a_bad_request(server: Server) -> None:
    location = start(server, "dp/garbage")
    parts = urlsplit(location)
    body = b"0123456789"
    head = (
        f"PATCH {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    answer = raw_request(
        parts.port or 0, head, body + b"NOT HTTP AT ALL\r\n\r\n", until=b"Invalid method"
    )
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]
    assert b" 400 Bad Request\r\n" in answer.split(b"\r\n\r\n", 1)[1], answer
    assert httpx.get(location).headers["range"] == f"0-{len(body) - 1}"


def test_clients_behind_a_proxy_upload_through_the_registry_port(server: Server) -> None:
    for headers in ({"X-Forwarded-For": "192.0.2.7"}, {"Host": "registry.example.com"}):
        location = start(server, "dp/proxied", **headers)
        assert location.startswith("/v2/dp/proxied/blobs/uploads/"), headers


def test_no_data_port_no_upload_links(tmp_path: Path) -> None:
    with running_dockyard(tmp_path / "data", "--sendfile-listen", "off") as srv:
        location = start(srv, "dp/off")
        assert location.startswith("/v2/dp/off/blobs/uploads/")
        data = b"through the registry port"
        final = httpx.put(f"{srv.url}{location}?digest={digest_of(data)}", content=data)
        assert final.status_code == 201


def test_an_upload_link_outlives_a_restart(tmp_path: Path) -> None:
    """The key that signs links is made once and kept (0600) with the token keys: a push
    interrupted by a restart carries on at its link."""
    data = os.urandom(MIB)
    with running_dockyard(tmp_path / "data") as srv:
        port = port_of(srv)
        location = start(srv, "dp/restart")
        first = httpx.patch(location, content=data[:1000])
        assert first.status_code == 202, first.text
    key = tmp_path / "data" / "keys" / "link-secret"
    assert key.stat().st_mode & 0o777 == 0o600
    with running_dockyard(tmp_path / "data", port=port) as srv:
        rest = httpx.put(
            first.headers["location"] + f"&digest={digest_of(data)}", content=data[1000:]
        )
        assert rest.status_code == 201, rest.text
        assert httpx.get(f"{srv.url}/v2/dp/restart/blobs/{digest_of(data)}").content == data


def test_curl_waiting_for_100_continue(server: Server, tmp_path: Path) -> None:
    """curl asks ``Expect: 100-continue`` before a large body: aiohttp answers that."""
    data = os.urandom(2 * MIB)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    location = start(server, "dp/curl")
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
         "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{blob}",
         location + f"&digest={digest_of(data)}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == "201", done.stderr
    assert httpx.get(f"{server.url}/v2/dp/curl/blobs/{digest_of(data)}").content == data
