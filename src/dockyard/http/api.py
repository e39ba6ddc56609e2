"""The management API under /api/v1 (users, organizations, members, robots, tokens,
repository visibility, audit log) and its OpenAPI document."""

from __future__ import annotations

from dockyard.auth.service import AuthService
from dockyard.http.messages import Request, Response, json_response
from dockyard.registry.service import Registry


class ManagementAPI:
    def __init__(self, registry: Registry, auth: AuthService | None) -> None:
        self.registry = registry
        self.auth = auth

    async def handle(self, request: Request) -> Response:
        return json_response(404, {"error": "not_found", "message": "no such API endpoint"})
