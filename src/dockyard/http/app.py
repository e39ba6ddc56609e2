"""The RSGI application granian serves: routing, errors, headers, access log, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from dockyard.auth.external import ExternalAuthService, NoTokenEndpoint
from dockyard.auth.policy import Rules
from dockyard.auth.service import AuthService, AuthSettings, Caller
from dockyard.config import SENDFILE_AUTO, Settings, host_port, parse_listen
from dockyard.db.schema import uploads
from dockyard.http import dataport, metrics
from dockyard.http.access import authorize
from dockyard.http.api import ManagementAPI
from dockyard.http.messages import (
    API_VERSION_HEADER,
    DRAIN_LIMIT,
    CountingBody,
    Request,
    Response,
    error_response,
    json_response,
)
from dockyard.http.routes import Router
from dockyard.http.sendfile import BlobLinks
from dockyard.http.token import RefreshTokens, TokenEndpoint
from dockyard.http.v2_blobs import BlobEndpoints
from dockyard.http.v2_manifests import ListingEndpoints, ManifestEndpoints
from dockyard.http.v2_proxy import ProxyEndpoints, build_proxy, metric_families
from dockyard.mirror import stats as mirror_stats
from dockyard.oci.errors import MethodNotAllowed, NotFound, RegistryError, Unavailable
from dockyard.registry.availability import backend_unavailable
from dockyard.registry.cache import ReadCache
from dockyard.registry.gc import GcPolicy
from dockyard.registry.service import Registry
from dockyard.registry.usage import usage

log = logging.getLogger("dockyard")

SETTINGS_ENV = "DOCKYARD_SERVE_SETTINGS"
SERVER_PID_ENV = "DOCKYARD_SERVE_PID"

_NAME = r"(?P<name>[^?#]+?)"
_SEGMENT = r"[^/]+"
# A digest may hide slashes after its algorithm ("sha256:../../x"): match it whole, so that it
# is refused as a bad digest rather than as an unknown path.
_DIGEST = r"[^/:]+:.*|[^/]+"


def sendfile_links(settings: Settings) -> BlobLinks | None:
    """The signed-link maker of the sendfile port, when it is on."""
    if settings.sendfile_listen in (None, SENDFILE_AUTO):
        return None  # `auto` is settled by `dockyard serve` before workers start
    if settings.sendfile_secret is None:
        raise RuntimeError("sendfile_secret must be set before workers start (serve sets it)")
    return BlobLinks(
        secret=settings.sendfile_secret.encode(),
        port=parse_listen(settings.sendfile_listen)[1],
        ttl_seconds=settings.sendfile_link_seconds,
        base_url=settings.sendfile_url,
        scheme="https" if settings.tls_cert else "http",
        listen_port=settings.port,
    )


def build_router(
    registry: Registry, links: BlobLinks | None = None, redirect_min_bytes: int = 0
) -> Router:
    blobs = BlobEndpoints(registry, links, redirect_min_bytes)
    manifests = ManifestEndpoints(registry)
    listings = ListingEndpoints(registry)
    router = Router()
    # the most frequent first; "uploads" before "blob", which would also match
    # /v2/<name>/blobs/uploads
    router.add(
        "manifest",
        rf"/v2/{_NAME}/manifests/(?P<reference>{_DIGEST})",
        GET=manifests.get,
        PUT=manifests.put,
        DELETE=manifests.delete,
    )
    router.add("uploads", rf"/v2/{_NAME}/blobs/uploads/?", POST=blobs.start)
    router.add(
        "upload",
        rf"/v2/{_NAME}/blobs/uploads/(?P<upload>{_SEGMENT})",
        GET=blobs.status,
        PATCH=blobs.patch,
        PUT=blobs.put,
        DELETE=blobs.cancel,
    )
    router.add(
        "blob",
        rf"/v2/{_NAME}/blobs/(?P<digest>{_DIGEST})",
        GET=blobs.get,
        DELETE=blobs.delete,
    )
    router.add("tags", rf"/v2/{_NAME}/tags/list", GET=listings.tags)
    router.add(
        "referrers",
        rf"/v2/{_NAME}/referrers/(?P<digest>{_DIGEST})",
        GET=listings.referrers,
    )
    router.add("base", r"/v2/?", GET=listings.base)
    router.add("catalog", r"/v2/_catalog", GET=listings.catalog)
    router.add("discover", r"/v2/_oci/ext/discover", GET=listings.discover)
    return router


class App:
    """One instance per worker process; the registry is opened in ``__rsgi_init__``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry: Registry | None = None
        self.cache: ReadCache
        self.auth: AuthService | None = None
        self.token_endpoint: TokenEndpoint | NoTokenEndpoint | None = None
        self.api: ManagementAPI | None = None
        self.router: Router | None = None
        self.proxy: ProxyEndpoints | None = None  # the registry mirror, with upstreams
        self.access_log = settings.access_log
        self.links: BlobLinks | None = None
        self.sendfile: web.AppRunner | None = None  # the sendfile port, when on

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.registry = Registry.from_settings(self.settings)
        self.links = sendfile_links(self.settings)
        self.router = build_router(self.registry, self.links, self.settings.sendfile_min_bytes)
        self.cache = self.registry.ctx.cache
        self.proxy = build_proxy(self.settings, self.registry, self.router)
        if self.settings.auth:
            settings = self.settings
            auth_settings = AuthSettings(
                service=settings.token_service,
                issuer=settings.token_issuer,
                token_ttl_seconds=settings.token_ttl_seconds,
                realm=settings.token_realm,
                rules=Rules(
                    settings.anonymous_pull,
                    settings.anonymous_push,
                    self.proxy.service.access_alias if self.proxy is not None else None,
                ),
                requests_per_second=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
            )
            if settings.token_issuer_mode == "external":
                external = ExternalAuthService(
                    self.registry.ctx,
                    auth_settings,
                    settings.resolved_keys_dir,
                    settings.trust_store(),
                )
                self.auth = external
                self.token_endpoint = NoTokenEndpoint(external)
            else:
                self.auth = AuthService(
                    self.registry.ctx, auth_settings, settings.resolved_keys_dir
                )
                self.token_endpoint = TokenEndpoint(self.auth, RefreshTokens(self.auth))
        self.api = ManagementAPI(
            self.registry,
            self.auth,
            GcPolicy(self.settings.gc_grace_seconds, self.settings.gc_delete_untagged),
        )
        if self.proxy is not None:
            self.api.proxy_service = self.proxy.service
        self._tasks = [
            loop.create_task(self.housekeeping()),
            loop.create_task(self.flush_metrics()),
        ]
        if self.links is not None:
            self._tasks.append(loop.create_task(self.serve_sendfile_port(self.links)))

    async def serve_sendfile_port(self, links: BlobLinks) -> None:
        assert self.registry is not None and self.settings.sendfile_listen is not None
        host, port = parse_listen(self.settings.sendfile_listen)
        context = None
        if self.settings.tls_cert and self.settings.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        blobs = BlobEndpoints(self.registry, links, self.settings.sendfile_min_bytes)
        try:
            self.sendfile, serving = await dataport.start(
                links, self.registry.ctx.store, blobs, self.record, host, port, context
            )
            if serving is not None:
                self._tasks.append(serving)
        except Exception:
            # blob GETs then keep redirecting to a port nobody serves: make it loud
            log.exception("the data port %s could not be served", host_port(host, port))

    async def housekeeping(self) -> None:
        """Purge stale uploads now and then (every worker may; the purge is idempotent)."""
        assert self.registry is not None
        max_age = self.settings.upload_purge_after_seconds
        while True:
            try:
                purged = await self.registry.uploads.purge_stale(max_age)
                if purged:
                    log.info("purged %d stale uploads", purged)
            except Exception:
                log.exception("purging stale uploads failed")
            await asyncio.sleep(min(3600.0, max_age / 4))

    async def flush_metrics(self) -> None:
        """Once a second: share this process's metric totals with the others, write the
        pull times gathered since the last second, and stop if
        the serving process that started this worker is gone (killed with -9, say), so no
        orphan keeps answering on the port."""
        # the serving process's pid, as it set it before starting workers: a worker whose
        # master died before this loop first ran must stop too
        parent = int(os.environ.get(SERVER_PID_ENV) or os.getppid())
        while True:
            await asyncio.sleep(1.0)
            try:
                metrics.flush()
                mirror_stats.flush()
            except OSError:
                log.exception("writing metrics failed")
            try:
                if self.registry is not None:
                    await self.registry.pulls.flush()
            except Exception:
                log.exception("recording pull times failed")
            if os.getppid() != parent:
                log.warning("the dockyard server process is gone; this worker stops")
                os.kill(os.getpid(), signal.SIGKILL)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        for task in self._tasks:
            task.cancel()
        metrics.flush()
        mirror_stats.flush()
        if self.registry is not None:
            self.registry.close()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        started = time.perf_counter()
        method = scope.method
        key = None
        if method in ("GET", "HEAD"):
            # Repeated manifest and blob GETs are answered from the per-process read cache,
            # which serves an entry only while the database is unchanged since it was built
            # (registry/cache.py): exactly what the full path below would answer.
            headers = scope.headers
            if "range" not in headers and "if-none-match" not in headers:
                key = (scope.path, scope.query_string, tuple(headers.get_all("accept")))
                # with authentication on, the request is authorised first (in ``handle``)
                hit = self.cache.get(key) if self.auth is None else None
                if hit is not None:
                    response, route_name = hit
                    sent = self.send(proto, method, response)
                    self.record(scope, route_name, response.status, 0, sent, started)
                    return
        token = self.cache.token() if key is not None else None
        body = CountingBody(proto)
        request = Request(
            method=method,
            path=scope.path,
            query_string=scope.query_string,
            headers=scope.headers,
            body=body,
            client=scope.client,
            scheme=scope.scheme,
        )
        route_name = "other"
        try:
            response, route_name = await self.handle(request, key)
        except RegistryError as error:
            response = error_response(error)
        except Exception as exc:
            if backend_unavailable(exc):
                log.warning("backend unavailable on %s %s: %r", method, request.path[:200], exc)
                response = error_response(
                    Unavailable("the database or the blob storage is unreachable; try again")
                )
            else:
                log.exception("unhandled error on %s %s", method, request.path[:200])
                response = json_response(
                    500,
                    {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]},
                )
        if key is not None and response.cacheable:
            self.cache.put(key, (response, route_name), token)
        if response.stream is not None and method != "HEAD":
            sent = await self.send_stream(proto, response)
        else:
            sent = self.send(proto, method, response)
        self.record(scope, route_name, response.status, body.count, sent, started)

    def record(
        self, scope: Any, route: str, status: int, bytes_in: int, bytes_out: int, started: float
    ) -> None:
        """Metrics and the access-log line for one answered request."""
        elapsed = time.perf_counter() - started
        metrics.observe(route, scope.method, status, elapsed, bytes_in, bytes_out)
        if self.access_log:
            _write_access_log(scope, status, bytes_in, bytes_out, elapsed, route)

    async def handle(self, request: Request, key: Any = None) -> tuple[Response, str]:
        path = request.path
        if path == "/auth/token" and self.token_endpoint is not None:
            if request.method == "POST":
                return await self.token_endpoint.post(request), "token"
            if request.method in ("GET", "HEAD"):
                return await self.token_endpoint.get(request), "token"
            raise MethodNotAllowed("the token endpoint takes GET and POST")
        if path.startswith("/api/"):
            assert self.api is not None
            return await self.api.handle(request), "api"
        if not path.startswith("/v2"):
            return await self.operations(request), path.strip("/") or "root"
        assert self.router is not None
        route_name = "other"
        try:
            route, handler, params = self.router.match(request)
            route_name = route.name
            checked = params
            if self.proxy is not None:  # a proxied repository? (the registry mirror)
                proxied = await self.proxy.route(request, route_name, params)
                if proxied is not None:
                    handler, checked = proxied
                    key = None  # not from the read cache: tags are revalidated
            caller = None
            if self.auth is not None:
                try:
                    caller = await authorize(self.auth, request, route_name, checked)
                except RegistryError:
                    # read what the client is still sending, so that it gets the 401/403
                    # rather than a reset connection
                    await request.drain()
                    raise
                if key is not None:
                    hit = self.cache.get(key)
                    if hit is not None:
                        return hit  # type: ignore[no-any-return]
            response = await handler(request, **params)
            if caller is not None and response.status in (201, 202):
                await self.audit_change(request, route_name, params, caller)
            return response, route_name
        except RegistryError as error:
            if isinstance(request.body, CountingBody) and request.body.count == 0:
                # refused before reading a body of a sane size (413 on Content-Length, say):
                # read it, so the client gets the answer rather than a reset connection
                with contextlib.suppress(RegistryError):
                    declared = request.content_length()
                    if declared is not None and 0 < declared <= DRAIN_LIMIT:
                        await request.drain()
            return error_response(error), route_name

    async def audit_change(
        self, request: Request, route: str, params: dict[str, str], caller: Caller
    ) -> None:
        """Pushes and deletes go to the audit log (uploads and chunks do not)."""
        assert self.auth is not None
        action = {
            ("manifest", "PUT"): "manifest.push",
            ("manifest", "DELETE"): "manifest.delete",
            ("blob", "DELETE"): "blob.delete",
        }.get((route, request.method))
        if action is not None:
            await self.auth.audit(
                caller.identity.subject or "anonymous",
                action,
                params.get("name"),
                request.client,
                {"reference": params.get("reference") or params.get("digest")},
            )

    async def operations(self, request: Request) -> Response:
        """Health, readiness and metrics; nothing else lives outside /v2 yet."""
        assert self.registry is not None
        if request.path == "/healthz":
            return json_response(200, {"status": "ok"})
        if request.path == "/readyz":
            try:
                await self.registry.ctx.read(lambda conn: conn.execute(select(1)).scalar())
            except Exception as exc:
                log.warning("not ready: %s", exc)
                return json_response(503, {"status": "unavailable"})
            return json_response(200, {"status": "ready"})
        if request.path == "/metrics":
            registry = self.registry
            body, content_type = await registry.ctx.run(
                lambda: metrics.render(
                    lambda: _registry_gauges(registry) + metric_families(self.proxy)
                )
            )
            return Response(200, [("Content-Type", content_type)], body)
        return error_response_for_unknown(request)

    def send(self, proto: Any, method: str, response: Response) -> int:
        if response.pulled is not None and method == "GET" and self.registry is not None:
            self.registry.pulls.note(*response.pulled)
        headers = [API_VERSION_HEADER, *response.headers]
        if method == "HEAD":
            if response.content_length is not None:
                headers.append(("Content-Length", str(response.content_length)))
            proto.response_empty(response.status, headers)
            return 0
        if response.file is not None and response.file_range is not None:
            start, end = response.file_range
            headers.append(("Content-Length", str(end - start)))  # else granian chunks it
            if response.status == 206:
                proto.response_file_range(response.status, headers, response.file, start, end)
            else:
                proto.response_file(response.status, headers, response.file)
            return end - start
        proto.response_bytes(response.status, headers, response.body)
        return len(response.body)

    async def send_stream(self, proto: Any, response: Response) -> int:
        """A body sent as it is read (a blob from a store without local files)."""
        assert response.stream is not None
        headers = [API_VERSION_HEADER, *response.headers]
        if response.content_length is not None:
            headers.append(("Content-Length", str(response.content_length)))
        transport = proto.response_stream(response.status, headers)
        sent = 0
        try:
            async for chunk in response.stream:
                await transport.send_bytes(chunk)
                sent += len(chunk)
        except Exception as exc:
            # the headers are out: all that is left is to cut the body short, which the
            # client sees (fewer bytes than Content-Length)
            log.warning("streamed body cut after %d bytes: %r", sent, exc)
            # the traceback holds this frame, hence the transport: an exception someone
            # else keeps (a task's) would keep the connection open until garbage collection
            exc.__traceback__ = None
        finally:
            close = getattr(response.stream, "aclose", None)
            if close is not None:
                await close()
        return sent


def error_response_for_unknown(request: Request) -> Response:
    return error_response(NotFound(f"no such endpoint: {request.path[:100]}"))


def _registry_gauges(registry: Registry) -> list[Any]:
    with registry.ctx.db.reader.connect() as conn:
        in_progress = int(conn.execute(select(func.count()).select_from(uploads)).scalar() or 0)
        return metrics.registry_gauges(in_progress, usage(conn))


def _write_access_log(
    scope: Any, status: int, bytes_in: int, bytes_out: int, seconds: float, route: str
) -> None:
    line = json.dumps(
        {
            "ts": round(time.time(), 3),
            "client": scope.client,
            "method": scope.method,
            "path": scope.path,
            "route": route,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "ms": round(seconds * 1000, 3),
            "ua": scope.headers.get("user-agent"),
        },
        separators=(",", ":"),
    )
    sys.stdout.write(line + "\n")


def make_app() -> App:
    """Granian's factory: settings come from the serving process through the environment."""
    settings = Settings.model_validate(json.loads(os.environ[SETTINGS_ENV]))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format='{"ts":%(created).3f,"level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}',
    )
    return App(settings)
