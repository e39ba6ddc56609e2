"""The distribution API for proxied repositories (the registry mirror, docs/mirror.md).

``ProxyEndpoints.route`` decides, after routing and before authorization, whether a /v2
request is for a proxied repository; if so it returns the handler that serves it from the
pull-through cache, and the parameters access is checked on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

from dockyard.config import Settings
from dockyard.http.messages import Request, Response
from dockyard.http.routes import Router
from dockyard.mirror import stats
from dockyard.mirror.service import BlobHead, BlobStream, ProxyService
from dockyard.mirror.upstreams import ProxyTarget, Upstreams, build_upstreams
from dockyard.oci.digest import is_digest
from dockyard.oci.errors import Denied
from dockyard.redis_locks import make_locks
from dockyard.registry.service import Registry

Handler = Callable[..., Awaitable[Response]]
_READS = ("GET", "HEAD")


class ProxyEndpoints:
    def __init__(
        self, service: ProxyService, local_blob: Handler, local_tags: Handler, referrers: Handler
    ) -> None:
        self.service = service
        self._local_blob = local_blob
        self._local_tags = local_tags
        self._referrers = referrers

    async def route(
        self, request: Request, route: str, params: dict[str, str]
    ) -> tuple[Handler, dict[str, str]] | None:
        """The handler and the parameters to authorize for a proxied repository, or None
        when the request is for a local one. Writes into a proxy namespace are refused."""
        name = params.get("name")
        if name is None:
            return None
        reading = request.method in _READS
        if not reading:
            try:
                self.service.refuse_write(name)
            except Denied:
                await request.drain()
                raise
            return None
        target = await self.service.route(name, request.arg("ns"), reading)
        if target is None:
            return None
        handler: Handler
        if route == "manifest":
            handler = partial(self.manifest, target=target)
        elif route == "blob":
            handler = partial(self.blob, target=target)
        elif route == "tags":
            handler = partial(self.tags, target=target)
        elif route == "referrers":
            handler = partial(self.referrers, target=target)
        else:
            return None
        # access is decided on the name the client asked for (tokens name it), except with
        # ?ns=, where that name may be a local repository's: then on the proxied one
        checked = (
            params
            if target.local == name or not request.arg("ns")
            else {
                **params,
                "name": target.local,
            }
        )
        return handler, checked

    async def manifest(
        self, request: Request, name: str, reference: str, target: ProxyTarget
    ) -> Response:
        manifest = await self.service.manifest(
            target, reference, request.accept, count=request.method == "GET"
        )
        etag = f'"{manifest.digest}"'
        headers = [
            ("Content-Type", manifest.media_type),
            ("Docker-Content-Digest", manifest.digest),
            ("ETag", etag),
        ]
        if etag in (request.header("if-none-match") or ""):
            return Response(304, headers)
        return Response(
            200,
            headers,
            manifest.content,
            content_length=len(manifest.content),
            pulled=None if is_digest(reference) else (target.local, reference),
        )

    async def blob(self, request: Request, name: str, digest: str, target: ProxyTarget) -> Response:
        head = request.method == "HEAD"
        found = await self.service.blob(target, digest, head=head)
        headers = [("Docker-Content-Digest", digest), ("ETag", f'"{digest}"')]
        if isinstance(found, BlobHead):
            headers.append(("Content-Type", "application/octet-stream"))
            return Response(200, headers, content_length=found.size)
        if isinstance(found, BlobStream):
            headers.append(("Content-Type", "application/octet-stream"))
            return Response(200, headers, stream=found.chunks, content_length=found.size)
        # cached: served as any local blob is (ranges, redirects, stores without files), but
        # not from the read cache, which would bypass the statistics
        response: Response = await self._local_blob(request, name=target.local, digest=found.digest)
        response.cacheable = False
        return response

    async def tags(self, request: Request, name: str, target: ProxyTarget) -> Response:
        body = await self.service.tags(target, _upstream_query(request))
        if body is None:  # the upstream cannot answer: the tags cached here
            response = await self._local_tags(request, name=target.local)
        else:
            try:
                document = json.loads(body)
                document["name"] = name
                body = json.dumps(document, separators=(",", ":")).encode()
            except (ValueError, TypeError):
                pass
            response = Response(200, [("Content-Type", "application/json")], body)
        return response

    async def referrers(
        self, request: Request, name: str, digest: str, target: ProxyTarget
    ) -> Response:
        return await self._referrers(request, name=target.local, digest=digest)


def _upstream_query(request: Request) -> str:
    """The paging parameters of a tag list, for the upstream (not ``ns``)."""
    return urlencode({k: v[0] for k, v in request.query.items() if k in ("n", "last")})


def build_proxy(settings: Settings, registry: Registry, router: Router) -> ProxyEndpoints | None:
    """The mirror's endpoints, when upstreams are configured."""
    upstreams = Upstreams(
        build_upstreams(settings.upstreams, settings.mirror_upstream), settings.mirror_upstream
    )
    if not upstreams:
        return None
    # several nodes (redis_url): the single-flight locks are Redis's, shared by every node
    service = ProxyService(
        registry,
        upstreams,
        settings.data_dir.resolve(),
        settings.mirror_cache_max_bytes,
        locks=make_locks(settings, registry.ctx.redis),
    )
    local = {route.name: route.methods for route in router.routes}
    return ProxyEndpoints(
        service, local["blob"]["GET"], local["tags"]["GET"], local["referrers"]["GET"]
    )


def metric_families(proxy: ProxyEndpoints | None) -> list[Any]:
    """The mirror's counters for /metrics (none without upstreams)."""
    if proxy is None:
        return []
    return list(stats.families([u.name for u in proxy.service.upstreams.all]))
