"""The data port: zero-copy blob downloads and uploads beside the registry port.

Downloads: a blob GET on the registry port answers ``307`` with a signed link here, and
aiohttp sends the file with ``sendfile(2)`` (http/sendfile.py).

Uploads: an upload's ``Location`` (from ``POST /v2/<name>/blobs/uploads/``) is a signed
link here when the client can reach this port, so its PATCHes and final PUT come here.
A PATCH or PUT whose body has a ``Content-Length`` (and an upload's GET or DELETE) is
answered by this module itself: it reads the request head without taking anything else off
the socket (``MSG_PEEK``; h11 parses it), and the body goes from the socket to the
upload's file with ``splice(2)`` while another thread hashes it (storage/splice.py): no
copy through user space, two cores instead of one. Every other request (downloads, chunked
bodies, anything unusual, and a connection for good once it had one of those) is handed to
aiohttp, which serves the same upload links through the same handlers, with the body as
chunks. Either way the upload is
the registry's own: the same checks, errors and commit as on the registry port.

A link names the repository and the upload, expires after an hour and carries an
HMAC-SHA256 signature: it is the authorisation, as Distribution's upload state token is,
since clients do not send their registry credentials to another port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11
from aiohttp import web

from dockyard.http import sendfile
from dockyard.http.messages import (
    API_VERSION_HEADER,
    CountingBody,
    Request,
    Response,
    error_response,
)
from dockyard.http.sendfile import BlobLinks
from dockyard.http.v2_blobs import BlobEndpoints
from dockyard.oci.errors import Denied, MethodNotAllowed, NotFound, RegistryError, Unavailable
from dockyard.registry.availability import backend_unavailable
from dockyard.storage.base import BlobStore, SocketBody

log = logging.getLogger("dockyard.dataport")

UPLOAD_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[^/]+)$")
MAX_HEAD = 64 * 1024  # a longer request head goes to aiohttp (which refuses it)
IDLE_SECONDS = 75.0  # a kept-alive connection with no new request is closed after this
DRAIN_LIMIT = 16 * 1024 * 1024  # an unread body up to this is read, to answer, not reset
ROUTE = "dataport-upload"  # the route label of these requests in metrics and the access log
Recorder = Callable[[Request, str, int, int, int, float], None]


class HeaderList:
    """Request headers as the handlers read them (``get``, ``get_all``), any case."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = [(k.lower(), v) for k, v in pairs]

    def get(self, key: str, default: Any = None) -> Any:
        key = key.lower()
        for k, v in self._pairs:
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        key = key.lower()
        return [v for k, v in self._pairs if k == key]


class UploadLinks:
    """Answers requests for signed upload links, whichever server received them."""

    def __init__(self, links: BlobLinks, blobs: BlobEndpoints, record: Recorder) -> None:
        self.links = links
        self.blobs = blobs
        self.record = record

    async def answer(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except RegistryError as error:
            return error_response(error)
        except Exception as exc:
            if backend_unavailable(exc):
                return error_response(
                    Unavailable("the database or the blob storage is unreachable; try again")
                )
            log.exception("unhandled error on %s %s", request.method, request.path[:200])
            return error_response(RegistryError("internal server error"))

    async def _dispatch(self, request: Request) -> Response:
        match = UPLOAD_PATH.match(request.path)
        if match is None:
            raise NotFound("this port only serves signed blob and upload links")
        name, upload = match["name"], match["upload"]
        if not self.links.verify_upload(
            name, upload, request.arg("expires") or "", request.arg("signature") or ""
        ):
            raise Denied("this upload link is not valid or has expired; start a new upload")
        if request.method == "PATCH":
            return await self.blobs.patch(request, name, upload)
        if request.method == "PUT":
            return await self.blobs.put(request, name, upload)
        if request.method in ("GET", "HEAD"):
            return await self.blobs.status(request, name, upload)
        if request.method == "DELETE":
            return await self.blobs.cancel(request, name, upload)
        raise MethodNotAllowed(f"{request.method[:20]} is not an upload method")


# --- the fast path: PATCH/PUT with a Content-Length, body by splice ---------------------------


class DataPort:
    """Accepts the data port's connections: upload bodies itself, the rest via aiohttp."""

    def __init__(self, uploads: UploadLinks, runner: web.AppRunner) -> None:
        self.uploads = uploads
        self.runner = runner
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                sock, address = await loop.sock_accept(listener)
                task = loop.create_task(self._connection(sock, address))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        finally:
            listener.close()

    async def _connection(self, sock: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else ""
        kept = False
        try:
            while True:
                head = await _peek_head(sock)
                if head is None:
                    return  # closed, or idle too long
                request = _fast_request(head, sock, client)
                if request is None:
                    server = self.runner.server
                    assert server is not None
                    await loop.connect_accepted_socket(server, sock)
                    kept = True  # aiohttp has it now
                    return
                sock.recv(len(head))  # the head only: it was all there
                if not await self._answer(sock, request):
                    return
        except (TimeoutError, OSError):
            return
        except Exception:
            log.exception("data port connection from %s failed", client)
        finally:
            if not kept:
                sock.close()

    async def _answer(self, sock: socket.socket, request: Request) -> bool:
        """Answer one upload request; whether the connection can take another."""
        started = time.perf_counter()
        body = request.body
        assert isinstance(body, SocketBody)
        response = await self.uploads.answer(request)
        if body.received == 0 and 0 < body.length <= DRAIN_LIMIT and response.status < 500:
            # refused before the body was read (416, 403, ...): read it, so that the client
            # gets the answer rather than a reset connection
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                async for _ in body:
                    pass
        keep = body.received == body.length and (
            (request.header("connection") or "").lower() != "close"
        )
        await asyncio.get_running_loop().sock_sendall(sock, _serialize(response, keep))
        self.uploads.record(
            request, ROUTE, response.status, body.received, len(response.body), started
        )
        return keep


async def start(
    links: BlobLinks,
    store: BlobStore,
    blobs: BlobEndpoints,
    record: Recorder,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, asyncio.Task[None] | None]:
    """Serve the data port from this worker (every worker binds it with SO_REUSEPORT, as
    granian does the registry port). With TLS, aiohttp serves all of it (a TLS socket
    cannot be peeked at, nor spliced from)."""
    uploads = UploadLinks(links, blobs, record)
    application = sendfile.make_application(links, store, aiohttp_handler(uploads))
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    if ssl_context is not None:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=True)
        await site.start()
        return runner, None
    try:
        listener = _listen(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    task = asyncio.get_running_loop().create_task(DataPort(uploads, runner).serve(listener))
    return runner, task


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket shared with the other workers (SO_REUSEPORT, as granian does)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(1024)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


async def _readable(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


async def _peek_head(sock: socket.socket) -> bytes | None:
    """The next request's head, left in the socket; ``b""`` when it is not all there (or
    too long): then aiohttp takes the connection. None when the client is gone or idle."""
    while True:
        if not await _readable(sock, IDLE_SECONDS):
            return None
        try:
            data = sock.recv(MAX_HEAD, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            return None
        end = data.find(b"\r\n\r\n")
        return data[: end + 4] if end >= 0 else b""


def _fast_request(head: bytes, sock: socket.socket, client: str) -> Request | None:
    """The request, if it is for an upload link: a PATCH or PUT with a plain Content-Length
    body, or a GET or DELETE without a body."""
    if not head.startswith((b"PATCH ", b"PUT ", b"GET ", b"DELETE ")):
        return None
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request) or event.http_version != b"1.1":
        return None
    headers = HeaderList([(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers])
    length = headers.get("content-length")
    if headers.get("transfer-encoding") or headers.get("expect"):
        return None
    if event.method in (b"PATCH", b"PUT") and length is None:
        return None
    if event.method in (b"GET", b"DELETE") and length not in (None, "0"):
        return None
    target = event.target.decode("latin-1")
    path, _, query = target.partition("?")
    if UPLOAD_PATH.match(path) is None:
        return None
    return Request(
        method=event.method.decode("ascii"),
        path=path,
        query_string=query,
        headers=headers,
        body=SocketBody(sock, int(length or 0)),
        client=client,
        data_port=True,
    )


def _serialize(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    headers = [*_headers(response), ("Content-Length", str(len(response.body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    head = f"HTTP/1.1 {response.status} {reason}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + response.body


def _headers(response: Response) -> list[tuple[str, str]]:
    """The response's headers with the API version, without Content-Length (each server
    writes that for the body it sends)."""
    kept = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    return [API_VERSION_HEADER, *kept]


# --- the same links through aiohttp (chunked bodies, connections it has taken) ---------------


def aiohttp_handler(uploads: UploadLinks) -> Callable[[web.Request], Any]:
    async def handle(aio: web.Request) -> web.Response:
        started = time.perf_counter()
        counted = CountingBody(aio.content.iter_any())
        request = Request(
            method=aio.method,
            path=aio.path,
            query_string=aio.query_string,
            headers=HeaderList(list(aio.headers.items())),
            body=counted,
            client=_peer(aio),
            data_port=True,
        )
        response = await uploads.answer(request)
        if response.status >= 400:  # a body already read to its end drains at once
            with contextlib.suppress(Exception):
                await request.drain()
        uploads.record(request, ROUTE, response.status, counted.count, len(response.body), started)
        return web.Response(status=response.status, body=response.body, headers=_headers(response))

    return handle


def _peer(aio: web.Request) -> str:
    peer = aio.transport.get_extra_info("peername") if aio.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (aio.remote or "")
