"""Zero-copy blob downloads: signed links to a second port that answers with sendfile(2).

The main server (granian) cannot send a file without copying it through user space, which
costs about three times the CPU of the kernel's sendfile and caps a single download well
below what the disk and network can do. With ``sendfile_listen`` set, every worker also
serves that port with aiohttp, whose file responses use sendfile, and a blob GET on the
registry port (after authentication and authorization, as always) answers ``307`` with a
link to it — the same pattern as Distribution's redirects to S3 or a CDN. A link names one
digest, expires after ``sendfile_link_seconds`` and carries an HMAC-SHA256 signature over
both, made with a secret every worker (and every node, when ``sendfile_secret`` is set)
shares; the side port serves nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from aiohttp import web

from dockyard.oci.digest import parse_digest
from dockyard.storage.base import BlobStore

log = logging.getLogger("dockyard.sendfile")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")
# an upload link outlives a download link: a client may take a while between chunks
UPLOAD_LINK_SECONDS = 3600

# a request carrying any of these came through a proxy, which may not pass the side port
PROXY_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
)


@dataclass(frozen=True)
class BlobLinks:
    """Makes and checks the signed links of one registry."""

    secret: bytes
    port: int
    ttl_seconds: int = 60
    base_url: str | None = None
    scheme: str = "http"
    listen_port: int | None = None  # the registry port, when known

    def reaches_side_port(self, host_header: str | None, proxied: bool) -> bool:
        """Whether the client can be expected to reach the side port. Always with
        ``base_url`` (the operator said where it is). Otherwise a link keeps the client's
        hostname and changes only the port, which works for a client that talks to this
        server directly: no proxy headers, and the port in its Host header is the port we
        listen on (not one that a proxy, NAT or a container's port mapping translates)."""
        if self.base_url:
            return True
        if proxied:
            return False
        if self.listen_port is None:
            return True
        try:
            port = urlsplit(f"//{host_header or ''}").port
        except ValueError:
            return False
        if port is None:
            port = 443 if self.scheme == "https" else 80
        return port == self.listen_port

    def _signature(self, subject: str, expires: int) -> str:
        message = f"{subject}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _signed(
        self, path: str, subject: str, ttl: int, host_header: str | None, now: float | None
    ) -> str:
        expires = int(now if now is not None else time.time()) + ttl
        query = f"expires={expires}&signature={self._signature(subject, expires)}"
        return self._side_url(host_header) + f"{path}?{query}"

    def _side_url(self, host_header: str | None) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"{self.scheme}://{_hostname(host_header)}:{self.port}"

    def url(self, digest: str, host_header: str | None, now: float | None = None) -> str:
        """The link a client follows for ``digest``; ``host_header`` is the Host the client
        used for the registry (its hostname is kept, the port becomes the side port)."""
        path = f"/blobs/{quote(digest, safe=':')}"
        return self._signed(path, digest, self.ttl_seconds, host_header, now)

    def upload_url(
        self, name: str, upload_id: str, host_header: str | None, now: float | None = None
    ) -> str:
        """Where the client sends the rest of upload ``upload_id`` of repository ``name``:
        the data port, with a link that is the authorisation (the client does not send
        its registry credentials to another port)."""
        path = f"/v2/{name}/blobs/uploads/{upload_id}"
        subject = _upload_subject(name, upload_id)
        return self._signed(path, subject, UPLOAD_LINK_SECONDS, host_header, now)

    def registry_url(self, host_header: str | None) -> str | None:
        """The registry port's address for a client of the data port (None when the data
        port's address is the operator's ``sendfile_url`` and the registry's unknown)."""
        if self.base_url or self.listen_port is None:
            return None
        return f"{self.scheme}://{_hostname(host_header)}:{self.listen_port}"

    def verify(self, digest: str, expires: str, signature: str, now: float | None = None) -> bool:
        if not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) < (now if now is not None else time.time()):
            return False
        expected = self._signature(digest, int(expires))
        return hmac.compare_digest(expected, signature)

    def verify_upload(self, name: str, upload_id: str, expires: str, signature: str) -> bool:
        return self.verify(_upload_subject(name, upload_id), expires, signature)


def _upload_subject(name: str, upload_id: str) -> str:
    # three lines: never the same message as a download link's digest
    return f"upload\n{name}\n{upload_id}"


def _hostname(host_header: str | None) -> str:
    """The hostname of a Host header (the client's name for this server), for a URL."""
    try:
        hostname = urlsplit(f"//{host_header or '127.0.0.1'}").hostname or "127.0.0.1"
    except ValueError:
        hostname = "127.0.0.1"
    return f"[{hostname}]" if ":" in hostname else hostname  # an IPv6 literal


def _error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return web.Response(
        status=status, text=body, content_type="application/json", headers=[API_VERSION]
    )


def make_application(
    links: BlobLinks, store: BlobStore, uploads: Handler | None = None
) -> web.Application:
    async def blob(request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        try:
            parse_digest(digest)
        except Exception:
            return _error(400, "DIGEST_INVALID", "not a digest")
        expires = request.query.get("expires", "")
        signature = request.query.get("signature", "")
        if not links.verify(digest, expires, signature):
            return _error(403, "DENIED", "this download link is not valid or has expired")
        path = store.blob_path(digest)
        if path is None or store.stat_blob(digest) is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        response = web.FileResponse(
            path,
            headers={
                "Docker-Content-Digest": digest,
                "Content-Type": "application/octet-stream",
                "Cache-Control": "max-age=31536000",
                API_VERSION[0]: API_VERSION[1],
            },
        )
        return response

    async def not_found(request: web.Request) -> web.Response:
        return _error(404, "NOT_FOUND", "this port only serves signed blob links")

    app = web.Application()
    app.router.add_get("/blobs/{digest}", blob)  # and HEAD
    if uploads is not None:  # signed upload links (http/dataport.py)
        app.router.add_route("*", "/v2/{tail:.*}", uploads)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
