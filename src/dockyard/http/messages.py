"""Requests and responses as the handlers see them, independent of the server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from dockyard.oci.errors import RegistryError, SizeInvalid
from dockyard.storage.base import SocketBody

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")
DRAIN_LIMIT = 16 * 1024 * 1024


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def get_all(self, key: str) -> list[str]: ...


class Body(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...


class CountingBody:
    """A request body from a server's chunks, counting the bytes that pass."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks
        self.count = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.count += len(chunk)
            yield chunk


@dataclass
class Request:
    method: str
    path: str
    query_string: str
    headers: Headers
    body: Body
    client: str = ""
    scheme: str = "http"
    # May the caller read this other repository? (cross-repository mounts); set by the
    # access layer when authentication is on.
    may_pull: Callable[[str], Awaitable[bool]] | None = field(default=None, repr=False)
    # Which of these repositories may the caller see? (the catalog)
    visible: Callable[[list[str]], Awaitable[list[str]]] | None = field(default=None, repr=False)
    data_port: bool = False  # came through the data port (a signed upload link)
    _query: dict[str, list[str]] | None = field(default=None, repr=False)

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def content_length(self) -> int | None:
        value = self.header("content-length")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or len(value) > 18:
            raise SizeInvalid(f"invalid Content-Length {value[:40]!r}")
        return int(value)

    def accept(self) -> list[str]:
        """Every media type named by every ``Accept`` line, parameters dropped."""
        types: list[str] = []
        for line in self.headers.get_all("accept"):
            for part in str(line).split(","):
                media_type = part.split(";", 1)[0].strip().lower()
                if media_type:
                    types.append(media_type)
        return types

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.body:
            yield chunk

    def upload_body(self) -> AsyncIterable[bytes]:
        """The body for an upload: a body still in its socket as it is (the writer may take
        it from there itself), anything else as chunks."""
        return self.body if isinstance(self.body, SocketBody) else self.chunks()

    async def drain(self, limit: int = DRAIN_LIMIT) -> None:
        """Read and drop up to ``limit`` bytes of an unread body."""
        try:
            declared = self.content_length()
        except RegistryError:
            return
        if declared in (None, 0) and self.header("transfer-encoding") is None:
            return
        size = 0
        async for chunk in self.body:
            size += len(chunk)
            if size > limit:
                return

    async def read(self, limit: int, too_large: RegistryError) -> bytes:
        declared = self.content_length()
        if declared is not None and declared > limit:
            raise too_large
        parts: list[bytes] = []
        size = 0
        chunks = aiter(self.body)
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                # Read a little more before answering, so that a client still sending gets
                # the 413 instead of a reset connection; give up on anything much larger.
                async for extra in chunks:
                    size += len(extra)
                    if size > limit + DRAIN_LIMIT:
                        break
                raise too_large
            parts.append(chunk)
        if declared is not None and size != declared:
            raise SizeInvalid(
                f"received {size} bytes but Content-Length said {declared}",
                detail={"declared": declared, "received": size},
            )
        return b"".join(parts)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: str | None = None
    file_range: tuple[int, int] | None = None  # [start, end) of ``file``
    content_length: int | None = None  # for HEAD: the length a GET would send
    # a body sent as it comes (``content_length`` bytes; never for HEAD, never cached)
    stream: AsyncIterator[bytes] | None = field(default=None, repr=False)
    cacheable: bool = False  # the same request gets the same answer until the data changes
    pulled: tuple[str, str] | None = None  # (repository, tag) a GET of this pulled


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(
        status,
        [("Content-Type", "application/json"), *(headers or [])],
        body,
    )


def error_response(error: RegistryError) -> Response:
    return json_response(error.status, error.to_json(), list(error.headers.items()))
