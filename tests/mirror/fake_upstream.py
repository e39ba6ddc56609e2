"""A small, real HTTP registry for the mirror's fault tests: it serves the blobs and
manifests it is given over the distribution API, counts every request, and misbehaves on
demand (wrong bytes, a connection cut in the middle of a blob, 429 Too Many Requests, a
blob held back until the test lets it go, or paused half-way)."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeUpstream:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    wrong: set[str] = field(default_factory=set)  # digests answered with other bytes
    cut: set[str] = field(default_factory=set)  # digests cut off after half their bytes
    wrong_digest_header: set[str] = field(default_factory=set)  # manifest tags: lie
    rate_limited: bool = False  # answer 429 with Retry-After to everything
    retry_after: int = 60
    hold: threading.Event | None = None  # blob GETs wait for it
    pause: threading.Event | None = None  # blob GETs send half, then wait for it
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        digest = digest_of(body)
        self.manifests[(repository, tag)] = (body, media_type)
        self.manifests[(repository, digest)] = (body, media_type)
        return digest

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.requests[(method, path)]

    def start(self) -> FakeUpstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def send_head(self, status: int, length: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()

            def send_body(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_head(status, len(body), headers)
                if self.command != "HEAD":
                    self.wfile.write(body)

            def send_first_half(self, data: bytes, headers: dict[str, str]) -> None:
                """A 200 announcing all of ``data``, and only its first half, flushed."""
                self.send_head(200, len(data), headers)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()

            def answer(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with upstream._lock:
                    upstream.requests[(self.command, path)] += 1
                if upstream.rate_limited:
                    self.send_body(
                        429,
                        b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                        {"Retry-After": str(upstream.retry_after)},
                    )
                    return
                if path in ("/v2", "/v2/"):
                    self.send_body(200, b"{}", {"Content-Type": "application/json"})
                    return
                repository, kind, reference = _split(path)
                if kind == "blobs" and reference in upstream.blobs:
                    self.blob(reference)
                    return
                if kind == "manifests" and (repository, reference) in upstream.manifests:
                    body, media_type = upstream.manifests[(repository, reference)]
                    digest = digest_of(body)
                    if reference in upstream.wrong_digest_header:
                        digest = digest_of(body + b" ")
                    self.send_body(
                        200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest}
                    )
                    return
                self.send_body(404, b'{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}', {})

            def blob(self, digest: str) -> None:
                data = upstream.blobs[digest]
                if digest in upstream.wrong:
                    data = bytes(b ^ 0xFF for b in data)  # same length, other bytes
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Docker-Content-Digest": digest,
                }
                if self.command == "HEAD":
                    self.send_body(200, data, headers)
                    return
                if upstream.hold is not None:
                    upstream.hold.wait(timeout=60)
                if digest in upstream.cut:
                    self.send_first_half(data, headers)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if upstream.pause is not None:
                    self.send_first_half(data, headers)
                    upstream.pause.wait(timeout=60)
                    self.wfile.write(data[len(data) // 2 :])
                    return
                self.send_body(200, data, headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _split(path: str) -> tuple[str, str, str]:
    """``/v2/<repo>/blobs/<digest>`` -> (repo, "blobs", digest)."""
    for kind in ("blobs", "manifests"):
        marker = f"/{kind}/"
        if marker in path:
            repository, _, reference = path[len("/v2/") :].rpartition(marker)
            return repository, kind, reference
    return "", "", ""
