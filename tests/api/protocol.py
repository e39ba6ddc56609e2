"""Talking to the registry under test the way clients do: an httpx client that checks the
rules every response keeps, push helpers, error assertions, and raw HTTP for requests
httpx refuses to send (paths it would normalize, bodies shorter than their Content-Length).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from tests.api.content import MANIFEST_TYPES, Blob, Image, Manifest, digest_of

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"
ERROR_CODE_RE = re.compile(r"^[A-Z_]+$")
UPLOAD_RANGE_RE = re.compile(r"^0-(\d+)$")


def new_repo(prefix: str = "api") -> str:
    """A repository name no other test uses."""
    return f"{prefix}/{uuid.uuid4().hex[:20]}"


class ServerRuleViolation(AssertionError):
    """A response broke a rule every response keeps (no 5xx, the API version header)."""


def _check_every_response(response: httpx.Response) -> None:
    request = response.request
    if response.status_code >= 500:
        response.read()
        raise ServerRuleViolation(
            f"{request.method} {request.url} answered {response.status_code}: "
            f"{response.content[:2000]!r}"
        )
    if response.headers.get(API_VERSION_HEADER) != API_VERSION:
        raise ServerRuleViolation(
            f"{request.method} {request.url} answered {response.status_code} without "
            f"'{API_VERSION_HEADER}: {API_VERSION}' (headers: {dict(response.headers)})"
        )


def registry_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """An httpx client for the registry that fails any request answered with a 5xx or
    without the API version header. ``identity`` encoding keeps Content-Length meaningful.
    (The registries under test are local; skipping certificate loading saves ~80 ms a test.)"""
    headers = {"Accept-Encoding": "identity", **kwargs.pop("headers", {})}
    return httpx.Client(
        base_url=base_url,
        timeout=60,
        verify=False,
        headers=headers,
        event_hooks={"response": [_check_every_response]},
        **kwargs,
    )


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` appended, keeping any query the registry put in it."""
    return url + ("&" if "?" in url else "?") + urlencode(params)


def follow(client: httpx.Client, location: str) -> str:
    """An absolute URL for a Location header (which may be absolute or relative)."""
    assert location, "empty Location header"
    return urljoin(str(client.base_url), location)


def assert_error(response: httpx.Response, status: int | Sequence[int], *codes: str) -> None:
    """The response has one of the ``status`` values and a spec error body whose codes include
    one of ``codes`` (any well-formed code when none are given)."""
    statuses = (status,) if isinstance(status, int) else tuple(status)
    request = response.request
    where = f"{request.method} {request.url}"
    assert response.status_code in statuses, (
        f"{where}: expected {statuses}, got {response.status_code}: {response.content[:500]!r}"
    )
    assert b"Traceback" not in response.content, f"{where}: traceback in body"
    if request.method == "HEAD":
        assert response.content == b""
        return
    assert response.headers.get("content-type", "").startswith("application/json"), (
        f"{where}: error body is not JSON: {response.headers.get('content-type')}"
    )
    document = response.json()
    assert isinstance(document, dict) and isinstance(document.get("errors"), list), document
    assert document["errors"], f"{where}: empty errors list"
    for entry in document["errors"]:
        assert isinstance(entry, dict), entry
        assert isinstance(entry.get("code"), str) and ERROR_CODE_RE.match(entry["code"]), entry
        if "message" in entry:
            assert isinstance(entry["message"], str), entry
    found = [entry["code"] for entry in document["errors"]]
    if codes:
        assert set(found) & set(codes), f"{where}: expected one of {codes}, got {document}"


def error_messages(response: httpx.Response) -> str:
    return " ".join(str(entry.get("message", "")) for entry in response.json()["errors"])


# -- uploads -------------------------------------------------------------------------------


def start_upload(client: httpx.Client, repo: str, **params: str) -> httpx.Response:
    """POST an upload session; asserts 202 and returns the response."""
    url = f"/v2/{repo}/blobs/uploads/"
    response = client.post(with_query(url, **params) if params else url)
    assert response.status_code == 202, (response.status_code, response.content)
    assert response.headers.get("location"), "upload session without Location"
    return response


def upload_location(client: httpx.Client, repo: str) -> str:
    return follow(client, start_upload(client, repo).headers["location"])


def upload_range_end(response: httpx.Response) -> int:
    """The last byte an upload response says the registry holds (``Range: 0-<end>``)."""
    value = response.headers.get("range", "")
    match = UPLOAD_RANGE_RE.match(value)
    assert match, f"upload Range header {value!r} is not '0-<end>'"
    return int(match.group(1))


def push_blob(client: httpx.Client, repo: str, blob: Blob) -> httpx.Response:
    """POST then PUT with the whole body (the most widely supported way); asserts 201."""
    location = upload_location(client, repo)
    response = client.put(
        with_query(location, digest=blob.digest),
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, (response.status_code, response.content)
    return response


def push_blobs(client: httpx.Client, repo: str, blobs: Iterable[Blob]) -> None:
    for blob in blobs:
        push_blob(client, repo, blob)


def blob_exists(client: httpx.Client, repo: str, digest: str) -> bool:
    response = client.head(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code in (200, 404), response.status_code
    return response.status_code == 200


# -- manifests ----------------------------------------------------------------------------


def put_manifest(
    client: httpx.Client, repo: str, reference: str, manifest: Manifest, **params: str
) -> httpx.Response:
    url = f"/v2/{repo}/manifests/{reference}"
    return client.put(
        with_query(url, **params) if params else url,
        content=manifest.body,
        headers={"Content-Type": manifest.media_type},
    )


def push_manifest(
    client: httpx.Client, repo: str, reference: str, manifest: Manifest
) -> httpx.Response:
    response = put_manifest(client, repo, reference, manifest)
    assert response.status_code == 201, (response.status_code, response.content)
    return response


def push_image(client: httpx.Client, repo: str, image: Image, reference: str) -> httpx.Response:
    push_blobs(client, repo, image.blobs)
    return push_manifest(client, repo, reference, image.manifest)


def get_manifest(
    client: httpx.Client,
    repo: str,
    reference: str,
    accept: Sequence[str] | None = None,
    method: str = "GET",
) -> httpx.Response:
    """Fetch a manifest sending one ``Accept`` line per type (as containers/image does)."""
    types = MANIFEST_TYPES if accept is None else accept
    headers = [("Accept", media_type) for media_type in types]
    return client.request(method, f"/v2/{repo}/manifests/{reference}", headers=headers)


def manifest_exists(client: httpx.Client, repo: str, reference: str) -> bool:
    response = get_manifest(client, repo, reference, method="HEAD")
    assert response.status_code in (200, 404), response.status_code
    return response.status_code == 200


def assert_manifest_served(
    client: httpx.Client, repo: str, reference: str, manifest: Manifest
) -> None:
    """GET returns the exact bytes with the pushed type, its digest and its length."""
    response = get_manifest(client, repo, reference)
    assert response.status_code == 200, (reference, response.status_code, response.content)
    assert response.content == manifest.body
    assert response.headers["content-type"] == manifest.media_type
    assert response.headers["docker-content-digest"] == manifest.digest
    assert int(response.headers["content-length"]) == manifest.size


def assert_blob_served(client: httpx.Client, repo: str, blob: Blob) -> None:
    response = client.get(f"/v2/{repo}/blobs/{blob.digest}")
    assert response.status_code == 200, (blob.digest, response.status_code, response.content)
    assert response.content == blob.data
    assert digest_of(response.content, blob.algorithm) == blob.digest


@dataclass(frozen=True)
class Sentinel:
    """Content pushed before the hostile tests; it must survive every one of them."""

    repo: str
    tag: str
    image: Image

    def assert_intact(self, client: httpx.Client) -> None:
        for blob in self.image.blobs:
            assert_blob_served(client, self.repo, blob)
        assert_manifest_served(client, self.repo, self.tag, self.image.manifest)
        assert_manifest_served(client, self.repo, self.image.manifest.digest, self.image.manifest)
        tags = client.get(f"/v2/{self.repo}/tags/list")
        assert tags.status_code == 200
        assert tags.json()["tags"] == [self.tag]


# -- raw HTTP -------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    base_url: str,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> RawResponse:
    """Send ``path`` exactly as given (no normalization of ``..`` or ``//``)."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None and not any(n.lower() == "content-length" for n, _ in headers):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        payload = b"" if method == "HEAD" else response.read()
        return RawResponse(response.status, response.getheaders(), payload)
    finally:
        connection.close()


def raw_exchange(
    base_url: str, data: bytes, *, half_close: bool = True, timeout: float = 60
) -> bytes:
    """Write ``data`` on a fresh connection and read until the server closes (or, without
    ``half_close``, until it has sent a status line and headers). With ``half_close`` our
    sending side is closed after ``data``, so a body shorter than its Content-Length ends
    there; servers may then hang up without answering. Returns whatever the server wrote
    (possibly nothing)."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may hang up before we are done
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not half_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def client_hello(server_name: str = "localhost") -> bytes:
    """The first bytes a TLS client sends (a real ClientHello, from Python's ssl)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        connection.do_handshake()
    return outgoing.read()


def raw_status(reply: bytes) -> int | None:
    """The status of the first response in ``reply`` (None when the server sent nothing)."""
    if not reply:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    assert match, f"not an HTTP response: {reply[:200]!r}"
    return int(match.group(1))


def request_head(method: str, path: str, host: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
