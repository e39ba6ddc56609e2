"""Manifest, tag, catalog and referrers endpoints of the distribution API."""

from __future__ import annotations

from urllib.parse import urlencode

from dockyard.http.messages import Request, Response, json_response
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import is_digest
from dockyard.oci.errors import ManifestTooLarge
from dockyard.oci.names import validate_name
from dockyard.registry.listings import Page, parse_page_size
from dockyard.registry.service import Registry


class ManifestEndpoints:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def get(self, request: Request, name: str, reference: str) -> Response:
        validate_name(name)
        manifest = await self.registry.manifests.get(name, reference, request.accept)
        etag = f'"{manifest.digest}"'
        headers = [
            ("Content-Type", manifest.media_type),
            ("Docker-Content-Digest", manifest.digest),
            ("ETag", etag),
        ]
        if etag in (request.header("if-none-match") or ""):
            return Response(304, headers)
        pulled = None if is_digest(reference) else (name, reference)
        return Response(
            200,
            headers,
            manifest.content,
            content_length=len(manifest.content),
            cacheable=True,
            pulled=pulled,
        )

    async def put(self, request: Request, name: str, reference: str) -> Response:
        validate_name(name)
        limit = self.registry.ctx.limits.max_manifest_bytes
        body = await request.read(
            limit, ManifestTooLarge(f"manifest is larger than the limit of {limit} bytes")
        )
        pushed = await self.registry.manifests.put(
            name, reference, body, request.header("content-type"), request.query.get("tag")
        )
        headers = [
            ("Location", f"/v2/{name}/manifests/{pushed.digest}"),
            ("Docker-Content-Digest", pushed.digest),
            ("Content-Length", "0"),
        ]
        if pushed.subject:
            headers.append(("OCI-Subject", pushed.subject))
        if request.query.get("tag"):
            headers += [("OCI-Tag", tag) for tag in pushed.tags]
        return Response(201, headers)

    async def delete(self, request: Request, name: str, reference: str) -> Response:
        validate_name(name)
        await self.registry.manifests.delete(name, reference)
        return Response(202, [("Content-Length", "0")])


class ListingEndpoints:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def tags(self, request: Request, name: str) -> Response:
        validate_name(name)
        n = parse_page_size(request.arg("n"), self.registry.ctx.limits.max_page_size)
        page = await self.registry.listings.tags(name, n, request.arg("last"))
        return _paged({"name": name, "tags": page.items}, page, f"/v2/{name}/tags/list", n)

    async def catalog(self, request: Request) -> Response:
        n = parse_page_size(request.arg("n"), self.registry.ctx.limits.max_page_size)
        last = request.arg("last")
        page = await self.registry.listings.catalog(n, last)
        if request.visible is None:
            return _paged({"repositories": page.items}, page, "/v2/_catalog", n)
        # Only what the caller may see, and a Link that names nothing else: read on until
        # n visible names (or the end) are found.
        visible = await request.visible(page.items)
        while n is not None and len(visible) < n and page.more and page.items:
            page = await self.registry.listings.catalog(n, page.items[-1])
            visible += await request.visible(page.items)
        more = page.more or (n is not None and len(visible) > n)
        items = visible[:n] if n is not None else visible
        return _paged({"repositories": items}, Page(items, more and bool(items)), "/v2/_catalog", n)

    async def referrers(self, request: Request, name: str, digest: str) -> Response:
        validate_name(name)
        artifact_type = request.arg("artifactType")
        page = await self.registry.referrers.list(name, digest, artifact_type, request.arg("last"))
        headers = [("Content-Type", mt.OCI_INDEX)]
        if artifact_type is not None:
            headers.append(("OCI-Filters-Applied", "artifactType"))
        if page.next_last is not None:
            query = {"last": page.next_last}
            if artifact_type is not None:
                query["artifactType"] = artifact_type
            headers.append(
                ("Link", f'</v2/{name}/referrers/{digest}?{urlencode(query)}>; rel="next"')
            )
        return Response(200, headers, page.body)

    async def discover(self, request: Request) -> Response:
        return json_response(200, {"extensions": []})

    async def base(self, request: Request) -> Response:
        return json_response(200, {})


def _paged(payload: dict[str, object], page: Page, path: str, n: int | None) -> Response:
    """The page as JSON with its ``Link`` to the next, after the page's last item."""
    headers = []
    if page.more and page.items:
        query = urlencode({"n": n, "last": page.items[-1]})
        headers.append(("Link", f'<{path}?{query}>; rel="next"'))
    return json_response(200, payload, headers)
