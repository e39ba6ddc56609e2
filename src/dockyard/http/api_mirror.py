"""The registry mirror's part of the management API: the upstreams (their configuration,
secrets left out) with their cache statistics, summed over every worker process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dockyard.auth.administration import require_site_admin
from dockyard.http.api_routes import Call, Endpoint
from dockyard.http.messages import Response, json_response
from dockyard.mirror import stats

if TYPE_CHECKING:
    from dockyard.http.api import ManagementAPI

_COUNTERS = {
    name: {"type": "integer", "description": text} for name, text in stats.COUNTERS.items()
}

UPSTREAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "url", "prefix", "public", "tag_ttl_seconds", "stats"],
    "properties": {
        "name": {"type": "string"},
        "url": {"type": "string"},
        "prefix": {"type": "string", "description": "the local namespace: <prefix>/<repository>"},
        "public": {"type": "boolean", "description": "anyone may pull its cached content"},
        "mirror": {"type": "boolean", "description": "served for plain names (mirror_upstream)"},
        "tag_ttl_seconds": {"type": "integer"},
        "hosts": {"type": "array", "items": {"type": "string"}, "description": "for ?ns="},
        "username": {"type": ["string", "null"]},
        "password_set": {"type": "boolean"},
        "ca_file": {"type": ["string", "null"]},
        "insecure_skip_verify": {"type": "boolean"},
        "stats": {"type": "object", "required": list(_COUNTERS), "properties": _COUNTERS},
    },
}


async def list_upstreams(api: ManagementAPI, call: Call) -> Response:
    require_site_admin(call.identity, "read the mirror's upstreams")
    summed = stats.totals()
    mirror = api.proxy_service.upstreams.mirror if api.proxy_service is not None else None
    upstreams = api.proxy_service.upstreams.all if api.proxy_service is not None else []
    view = [
        {
            **upstream.describe(),
            "mirror": mirror is not None and mirror.name == upstream.name,
            "stats": {**dict.fromkeys(stats.COUNTERS, 0), **summed.get(upstream.name, {})},
        }
        for upstream in upstreams
    ]
    return json_response(200, view)


MIRROR_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/api/v1/upstreams",
        list_upstreams,
        "The registry mirror's upstreams (no secrets) with their cache statistics",
        "mirror",
        "site administrators",
        response={"type": "array", "items": UPSTREAM_SCHEMA},
    ),
)
