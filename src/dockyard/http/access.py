"""Authentication and authorisation of /v2 requests: which scope each endpoint needs, the
401 challenge and the 403 denial."""

from __future__ import annotations

from dockyard.auth.scopes import Scope
from dockyard.auth.service import AuthService, Caller
from dockyard.http.messages import Request
from dockyard.oci.errors import NameInvalid, Unauthorized
from dockyard.oci.names import validate_name

PULL = frozenset({"pull"})
PUSH = frozenset({"pull", "push"})
DELETE = frozenset({"delete"})

# route -> method -> actions needed on the route's repository
NEEDED: dict[str, dict[str, frozenset[str]]] = {
    "tags": {"GET": PULL, "HEAD": PULL},
    "manifest": {"GET": PULL, "HEAD": PULL, "PUT": PUSH, "DELETE": DELETE},
    "blob": {"GET": PULL, "HEAD": PULL, "DELETE": DELETE},
    "uploads": {"POST": PUSH},
    "upload": {"GET": PUSH, "PATCH": PUSH, "PUT": PUSH, "DELETE": PUSH},
    "referrers": {"GET": PULL, "HEAD": PULL},
}


def realm_of(request: Request) -> str:
    host = request.header("host") or "localhost"
    return f"{request.scheme}://{host}/auth/token"


async def authorize(
    auth: AuthService, request: Request, route: str, params: dict[str, str]
) -> Caller:
    """Raise 401/403/429 unless the request may go on; return the caller."""
    realm = realm_of(request)
    authorization = request.header("authorization")
    try:
        caller = await auth.identify(authorization, request.client)
    except Unauthorized as exc:
        needed = NEEDED.get(route, {}).get(request.method)
        name = params.get("name")
        scope = Scope("repository", name, needed) if needed and name else None
        bearer = (authorization or "").lower().startswith("bearer ")
        raise auth.challenge(
            realm, scope, "invalid_token" if bearer else None, exc.message
        ) from None
    auth.throttle(caller, request.client)
    if route in ("base", "catalog"):
        if caller.identity.anonymous and caller.token is None:
            raise auth.challenge(realm)
        if route == "catalog":

            async def filter_visible(names: list[str]) -> list[str]:
                return await visible(auth, caller, names)

            request.visible = filter_visible
        return caller
    needed = NEEDED.get(route, {}).get(request.method)
    if needed is None:  # discover, and methods the route does not have
        return caller
    name = params.get("name", "")
    try:
        validate_name(name)
    except NameInvalid:
        return caller  # the handler answers NAME_INVALID; there is nothing to protect
    await auth.check(caller, name, needed, realm)

    async def may_pull(source: str) -> bool:
        try:
            await auth.check(caller, source, PULL, realm)
        except Exception:
            return False
        return True

    request.may_pull = may_pull
    return caller


async def visible(auth: AuthService, caller: Caller, names: list[str]) -> list[str]:
    """The repositories of a catalog page the caller may pull."""
    if caller.token is not None and caller.token.allows("registry", "catalog", "*"):
        return names
    identity = await auth.current(caller)
    if identity is None:
        return []
    if identity.is_admin:
        return names
    return [n for n in names if "pull" in await auth.actions(identity, n)]
