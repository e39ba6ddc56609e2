"""Blob and upload endpoints of the distribution API."""

from __future__ import annotations

from dockyard.http.messages import Request, Response
from dockyard.http.sendfile import PROXY_HEADERS, BlobLinks
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import DigestInvalid, RangeInvalid
from dockyard.oci.names import validate_name
from dockyard.registry.service import Registry
from dockyard.registry.uploads import UploadStatus, check_content_range


class BlobEndpoints:
    def __init__(
        self, registry: Registry, links: BlobLinks | None = None, redirect_min_bytes: int = 0
    ) -> None:
        self.registry = registry
        self.links = links  # zero-copy downloads through the sendfile port, when on
        self.redirect_min_bytes = redirect_min_bytes

    # GET/HEAD/DELETE /v2/<name>/blobs/<digest>

    async def get(self, request: Request, name: str, digest: str) -> Response:
        validate_name(name)
        blob = await self.registry.blobs.stat(name, digest)
        etag = f'"{blob.digest}"'
        headers = [
            ("Docker-Content-Digest", blob.digest),
            ("ETag", etag),
            ("Accept-Ranges", "bytes"),
            ("Cache-Control", "max-age=31536000"),
        ]
        if etag in (request.header("if-none-match") or ""):
            return Response(304, headers)
        # whether a GET may go to the sendfile port depends on how the client reached us
        # (its Host, proxy headers): such responses are never reused from the read cache
        large = blob.path is not None and blob.size >= self.redirect_min_bytes
        links = self.links if large else None
        reachable = self._data_port(request) if links is not None else None
        if reachable is not None and request.method == "GET":
            location = reachable.url(blob.digest, request.header("host"))
            return Response(
                307,
                [
                    ("Docker-Content-Digest", blob.digest),
                    ("Location", location),
                    ("Cache-Control", "no-store"),  # the link expires
                    ("Content-Length", "0"),
                ],
            )
        if blob.path is None:
            return await self._remote(request, blob.digest, blob.size, headers)
        headers.append(("Content-Type", "application/octet-stream"))
        byte_range = _parse_range(request.header("range"), blob.size)
        if byte_range is None:
            return Response(
                200,
                headers,
                file=blob.path,
                file_range=(0, blob.size),
                content_length=blob.size,
                cacheable=links is None,
            )
        start, end = byte_range
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{blob.size}"))
        return Response(
            206, headers, file=blob.path, file_range=(start, end), content_length=end - start
        )

    async def _remote(
        self, request: Request, digest: str, size: int, headers: list[tuple[str, str]]
    ) -> Response:
        """A blob in a store without local files (S3): a GET is redirected to the store
        when it gives URLs and redirects are on, else streamed through; HEAD never
        redirects. Not cacheable: the URL expires, and a stream is read once."""
        byte_range = _parse_range(request.header("range"), size)
        if request.method == "GET":
            location = await self.registry.blobs.url(digest)
            if location is not None:
                return Response(
                    307,
                    [
                        ("Docker-Content-Digest", digest),
                        ("Location", location),
                        ("Cache-Control", "no-store"),
                        ("Content-Length", "0"),
                    ],
                )
        headers.append(("Content-Type", "application/octet-stream"))
        start, end = (0, size) if byte_range is None else byte_range
        if byte_range is not None:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        stream = self.registry.blobs.read(digest, start, end) if request.method == "GET" else None
        return Response(
            200 if byte_range is None else 206,
            headers,
            content_length=end - start,
            stream=stream,
        )

    def _data_port(self, request: Request) -> BlobLinks | None:
        """The link maker of the data port, if this client can be sent there."""
        links = self.links
        if links is None:
            return None
        if request.data_port:
            return links
        proxied = any(request.header(h) for h in PROXY_HEADERS)
        return links if links.reaches_side_port(request.header("host"), proxied) else None

    def _created(self, request: Request, name: str, digest: str) -> Response:
        location = f"/v2/{name}/blobs/{digest}"
        if request.data_port and self.links is not None:
            # the blob is on the registry port, not on the data port this came through
            location = (self.links.registry_url(request.header("host")) or "") + location
        return Response(
            201,
            [("Location", location), ("Docker-Content-Digest", digest), ("Content-Length", "0")],
        )

    def _accepted(
        self, request: Request, name: str, status: UploadStatus, status_code: int = 202
    ) -> Response:
        last = status.size - 1 if status.size else 0
        links = self._data_port(request)
        if links is not None:  # the rest of the upload goes to the data port
            location = links.upload_url(name, status.id, request.header("host"))
        else:
            location = f"/v2/{name}/blobs/uploads/{status.id}"
        return Response(
            status_code,
            [
                ("Location", location),
                ("Docker-Upload-UUID", status.id),
                ("Range", f"0-{last}"),
                ("Content-Length", "0"),
            ],
        )

    async def delete(self, request: Request, name: str, digest: str) -> Response:
        validate_name(name)
        await self.registry.blobs.delete(name, digest)
        return Response(202, [("Docker-Content-Digest", digest), ("Content-Length", "0")])

    # POST /v2/<name>/blobs/uploads/

    async def start(self, request: Request, name: str) -> Response:
        validate_name(name)
        mount, source = request.arg("mount"), request.arg("from")
        if mount is not None:
            parse_digest(mount)
            if source is not None and source != name:
                validate_name(source)
                # Without pull on the source, the mount silently becomes an upload.
                readable = request.may_pull is None or await request.may_pull(source)
                if readable and await self.registry.blobs.mount(name, mount, source):
                    return self._created(request, name, mount)
        digest = request.arg("digest")
        if digest is not None:
            status = await self.registry.uploads.push(
                name, digest, request.upload_body(), request.content_length()
            )
            return self._created(request, name, digest)
        algorithm = request.arg("digest-algorithm") or "sha256"
        status = await self.registry.uploads.start(name, algorithm)
        return self._accepted(request, name, status)

    # GET/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<id>

    async def status(self, request: Request, name: str, upload: str) -> Response:
        validate_name(name)
        status = await self.registry.uploads.status(name, upload)
        return self._accepted(request, name, status, status_code=204)

    async def patch(self, request: Request, name: str, upload: str) -> Response:
        validate_name(name)
        start, length = _chunk_bounds(request)
        status = await self.registry.uploads.append(
            name, upload, request.upload_body(), start=start, length=length
        )
        return self._accepted(request, name, status)

    async def put(self, request: Request, name: str, upload: str) -> Response:
        validate_name(name)
        digest = request.arg("digest")
        if digest is None:
            raise DigestInvalid("the final PUT of an upload needs ?digest=<digest>")
        parse_digest(digest)
        start, length = _chunk_bounds(request)
        has_body = bool(length) or request.header("transfer-encoding") is not None
        await self.registry.uploads.finish(
            name,
            upload,
            digest,
            request.upload_body() if has_body else None,
            length=length,
            start=start,
        )
        return self._created(request, name, digest)

    async def cancel(self, request: Request, name: str, upload: str) -> Response:
        validate_name(name)
        await self.registry.uploads.cancel(name, upload)
        return Response(204, [("Content-Length", "0")])


def _chunk_bounds(request: Request) -> tuple[int | None, int | None]:
    """Where a chunk must start (from Content-Range) and how long it is."""
    length = request.content_length()
    bounds = check_content_range(request.header("content-range"))
    if bounds is None:
        return None, length
    start, end = bounds
    if length is not None and length != end - start + 1:
        raise RangeInvalid(
            f"Content-Range {start}-{end} is {end - start + 1} bytes but Content-Length is {length}"
        )
    return start, end - start + 1


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as [start, end), or None for the whole blob."""
    if not value:
        return None
    unsatisfiable = RangeInvalid(
        f"range {value[:60]!r} not satisfiable for a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    text = value.strip()
    if not text.startswith("bytes=") or "," in text:
        raise unsatisfiable
    first, sep, last = text[len("bytes=") :].strip().partition("-")
    if not sep or (first and not first.isdigit()) or (last and not last.isdigit()):
        raise unsatisfiable
    if not first:
        if not last or int(last) == 0:
            raise unsatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise unsatisfiable
    return start, end
