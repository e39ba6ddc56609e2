"""Routing: the distribution API's paths, matched by anchored regular expressions.

Repository names contain slashes, so a route is recognised from its end
(``.../manifests/<reference>``), as in Distribution's router.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dockyard.http.messages import Request, Response
from dockyard.oci.errors import MethodNotAllowed, NotFound

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, name: str, pattern: str, **methods: Handler) -> None:
        self.routes.append(Route(name, re.compile(f"^{pattern}$"), methods))

    def match(self, request: Request) -> tuple[Route, Handler, dict[str, str]]:
        for route in self.routes:
            found = route.pattern.match(request.path)
            if found is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            handler = route.methods.get(method)
            if handler is None:
                raise MethodNotAllowed(
                    f"{request.method} is not allowed on {route.name}",
                    headers={"Allow": ", ".join(_allowed(route))},
                )
            return route, handler, found.groupdict()
        raise NotFound(f"no such endpoint: {request.path[:100]}")


def _allowed(route: Route) -> list[str]:
    methods = list(route.methods)
    return [*methods, "HEAD"] if "GET" in methods else methods
