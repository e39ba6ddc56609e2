"""The management API under /api/v1 (users, organizations, members, robots, tokens,
repository visibility, audit log; the storage lifecycle in ``api_lifecycle``) and its
OpenAPI document.

Handlers are thin: the route table below says what each endpoint takes; a handler calls
``auth.administration`` (which decides who may do what, inside one transaction), writes
the audit entry and shapes the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dockyard import __version__
from dockyard.auth import administration as adm
from dockyard.auth.identities import ANONYMOUS, Identity
from dockyard.auth.management import ManagementError, parse_permissions
from dockyard.auth.policy import ROLES, Rules
from dockyard.auth.service import AuthService
from dockyard.http import api_routes as r
from dockyard.http.api_lifecycle import LIFECYCLE_ENDPOINTS
from dockyard.http.api_mirror import MIRROR_ENDPOINTS
from dockyard.http.api_routes import ApiError, Call, Endpoint
from dockyard.http.messages import Request, Response, json_response
from dockyard.mirror.service import ProxyService
from dockyard.oci.errors import RegistryError
from dockyard.registry.gc import GcPolicy
from dockyard.registry.service import Registry

log = logging.getLogger("dockyard.api")

T = TypeVar("T")

NEEDS_AUTH = (
    "the management API needs authentication: start the server with `dockyard serve --auth`"
)


class ManagementAPI:
    def __init__(
        self, registry: Registry, auth: AuthService | None, gc_policy: GcPolicy | None = None
    ) -> None:
        self.registry = registry
        self.auth = auth
        self.gc_policy = gc_policy or GcPolicy()  # what POST /api/v1/gc runs by default
        self._document: bytes | None = None
        self.proxy_service: ProxyService | None = None  # the registry mirror, when it is on

    async def handle(self, request: Request) -> Response:
        try:
            endpoint, params = r.match(ENDPOINTS, request.method, request.path)
            if not endpoint.authenticated:
                return await endpoint.handler(self, Call(request, ANONYMOUS, params))
            if self.auth is None:
                raise ApiError(404, NEEDS_AUTH, "management_disabled")
            call = Call(request, await self._identify(request), params)
            call.query = r.parse_query(request, endpoint.query)
            if endpoint.body is not None:
                raw = await r.read_body(request)
                call.body = r.parse_body(raw, endpoint.body)
            return await endpoint.handler(self, call)
        except ApiError as error:
            return error.response()
        except ManagementError as error:
            return ApiError(error.status, str(error)).response()
        except RegistryError as error:
            return self._from_registry_error(error).response()
        except IntegrityError:
            # two requests creating the same name at once: the second loses
            return ApiError(409, "that conflicts with a change made at the same time").response()
        except Exception:
            log.exception("management API: %s %s", request.method, request.path[:200])
            return ApiError(500, "internal server error").response()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _auth(self) -> AuthService:
        assert self.auth is not None
        return self.auth

    def _challenge(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Basic realm="{self._auth.settings.service}"'}

    def _from_registry_error(self, error: RegistryError) -> ApiError:
        headers = self._challenge() if error.status == 401 else dict(error.headers)
        return ApiError(error.status, error.message, headers=headers)

    async def _identify(self, request: Request) -> Identity:
        """The caller as they stand now; 401 without (valid) credentials, 429 when throttled."""
        auth = self._auth
        caller = await auth.identify(request.header("authorization"), request.client)
        auth.throttle(caller, request.client)
        if caller.identity.anonymous and caller.token is None:
            raise ApiError(
                401,
                "authentication required: send Basic credentials (user and password, robot "
                "and secret, or user and access token) or a Bearer token from /auth/token",
                headers=self._challenge(),
            )
        identity = await auth.current(caller)
        if identity is None or identity.anonymous:
            raise ApiError(
                401,
                "the token names no current local user, robot or access token (it was "
                "revoked, disabled or deleted since, or comes from an external issuer)",
                headers=self._challenge(),
            )
        return identity

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self.registry.ctx.read(fn)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        return await self.registry.ctx.write(fn)

    async def _audit(
        self, call: Call, action: str, resource: str, detail: dict[str, Any] | None = None
    ) -> None:
        await self._auth.audit(call.identity.subject, action, resource, call.request.client, detail)

    @staticmethod
    def _param(call: Call, name: str) -> str:
        return call.params[name]

    @property
    def _rules(self) -> Rules:
        return self._auth.settings.rules

    # -- the document -----------------------------------------------------------------------

    async def openapi(self, call: Call) -> Response:
        if self._document is None:
            document = r.openapi_document(ENDPOINTS, __version__)
            self._document = json.dumps(document, indent=1).encode()
        return Response(
            200,
            [("Content-Type", "application/json"), ("Cache-Control", "max-age=60")],
            self._document,
        )

    # -- users ------------------------------------------------------------------------------

    async def whoami(self, call: Call) -> Response:
        return json_response(200, await self._read(lambda c: adm.whoami(c, call.identity)))

    async def list_users(self, call: Call) -> Response:
        return json_response(200, await self._read(lambda c: adm.list_users(c, call.identity)))

    async def create_user(self, call: Call) -> Response:
        name, password = call.text("name") or "", call.text("password") or ""
        admin = bool(call.flag("admin"))
        view = await self._write(lambda c: adm.create_user(c, call.identity, name, password, admin))
        await self._audit(call, "user.create", adm.user_resource(name), {"admin": admin})
        return _created(view, f"/api/v1/users/{name}")

    async def get_user(self, call: Call) -> Response:
        name = self._param(call, "name")
        return json_response(200, await self._read(lambda c: adm.get_user(c, call.identity, name)))

    async def update_user(self, call: Call) -> Response:
        name = self._param(call, "name")
        password, admin, disabled = call.text("password"), call.flag("admin"), call.flag("disabled")
        view = await self._write(
            lambda c: adm.update_user(
                c, call.identity, name, password=password, admin=admin, disabled=disabled
            )
        )
        detail: dict[str, Any] = {
            k: v for k, v in (("admin", admin), ("disabled", disabled)) if v is not None
        }
        if password is not None:
            detail["password_changed"] = True
        await self._audit(call, "user.update", adm.user_resource(name), detail)
        return json_response(200, view)

    async def delete_user(self, call: Call) -> Response:
        name = self._param(call, "name")
        outcome = await self._write(lambda c: adm.delete_user(c, call.identity, name))
        await self._audit(call, "user.delete", adm.user_resource(name), outcome)
        return Response(204)

    # -- organizations ----------------------------------------------------------------------

    async def list_orgs(self, call: Call) -> Response:
        return json_response(200, await self._read(lambda c: adm.list_orgs(c, call.identity)))

    async def create_org(self, call: Call) -> Response:
        name, public = call.text("name") or "", bool(call.flag("public"))
        view = await self._write(lambda c: adm.create_org(c, call.identity, name, public))
        await self._audit(call, "org.create", adm.org_resource(name), {"public": public})
        return _created(view, f"/api/v1/orgs/{name}")

    async def get_org(self, call: Call) -> Response:
        org = self._param(call, "org")
        return json_response(200, await self._read(lambda c: adm.get_org(c, call.identity, org)))

    async def update_org(self, call: Call) -> Response:
        org, public = self._param(call, "org"), bool(call.flag("public"))
        view = await self._write(lambda c: adm.set_org_public(c, call.identity, org, public))
        await self._audit(call, "org.update", adm.org_resource(org), {"public": public})
        return json_response(200, view)

    async def delete_org(self, call: Call) -> Response:
        org = self._param(call, "org")
        outcome = await self._write(lambda c: adm.delete_org(c, call.identity, org))
        await self._audit(call, "org.delete", adm.org_resource(org), outcome)
        return Response(204)

    async def list_members(self, call: Call) -> Response:
        org = self._param(call, "org")
        members = await self._read(lambda c: adm.list_members(c, call.identity, org))
        return json_response(200, members)

    async def set_member(self, call: Call) -> Response:
        org, user, role = self._param(call, "org"), self._param(call, "user"), call.text("role")
        assert role is not None
        member = await self._write(lambda c: adm.set_member(c, call.identity, org, user, role))
        await self._audit(
            call, "org.member.set", adm.org_resource(org), {"user": user, "role": role}
        )
        return json_response(200, member)

    async def remove_member(self, call: Call) -> Response:
        org, user = self._param(call, "org"), self._param(call, "user")
        await self._write(lambda c: adm.remove_member(c, call.identity, org, user))
        await self._audit(call, "org.member.remove", adm.org_resource(org), {"user": user})
        return Response(204)

    # -- robots -----------------------------------------------------------------------------

    async def list_robots(self, call: Call) -> Response:
        ns = self._param(call, "ns")
        return json_response(200, await self._read(lambda c: adm.list_robots(c, call.identity, ns)))

    async def create_robot(self, call: Call) -> Response:
        ns, name = self._param(call, "ns"), call.text("name") or ""
        grants = parse_permissions(call.body.get("permissions"))
        days = call.number("expires_in_days")
        new = await self._write(
            lambda c: adm.create_robot(c, call.identity, ns, name, grants, days)
        )
        await self._audit(
            call,
            "robot.create",
            adm.robot_resource(ns, name),
            {"permissions": new.view["permissions"], "expires_at": new.view["expires_at"]},
        )
        return _created(
            {**new.view, "username": new.view["name"], "secret": new.secret},
            f"/api/v1/namespaces/{ns}/robots/{name}",
        )

    async def revoke_robot(self, call: Call) -> Response:
        ns, name = self._param(call, "ns"), self._param(call, "robot")
        view = await self._write(lambda c: adm.revoke_robot(c, call.identity, ns, name))
        await self._audit(call, "robot.revoke", view["name"], {"id": view["id"]})
        return Response(204)

    # -- personal access tokens -------------------------------------------------------------

    async def list_tokens(self, call: Call) -> Response:
        return json_response(200, await self._read(lambda c: adm.list_tokens(c, call.identity)))

    async def create_token(self, call: Call) -> Response:
        name = call.text("name") or ""
        raw = call.body.get("permissions")
        grants = None if raw is None else parse_permissions(raw)
        days = call.number("expires_in_days")
        new = await self._write(lambda c: adm.create_token(c, call.identity, name, grants, days))
        await self._audit(
            call,
            "token.create",
            adm.token_resource(new.view["id"]),
            {"name": name, "permissions": new.view["permissions"]},
        )
        return _created(
            {**new.view, "username": call.identity.name, "secret": new.secret},
            f"/api/v1/user/tokens/{new.view['id']}",
        )

    async def revoke_token(self, call: Call) -> Response:
        token_id = self._param(call, "token_id")
        view = await self._write(lambda c: adm.revoke_token(c, call.identity, token_id))
        await self._audit(call, "token.revoke", adm.token_resource(view["id"]))
        return Response(204)

    # -- repositories -----------------------------------------------------------------------

    async def list_repositories(self, call: Call) -> Response:
        limit = call.integer("n") or 100
        last = call.text("last")
        rules = self._rules
        items, more = await self._read(
            lambda c: adm.list_repositories(c, call.identity, rules, last, limit)
        )
        return json_response(
            200, {"repositories": items, "next": items[-1]["name"] if more and items else None}
        )

    async def get_repository(self, call: Call) -> Response:
        name, rules = self._param(call, "repository"), self._rules
        view = await self._read(lambda c: adm.get_repository(c, call.identity, name, rules))
        return json_response(200, view)

    async def update_repository(self, call: Call) -> Response:
        name, rules = self._param(call, "repository"), self._rules
        public = call.text("visibility") == "public"
        view = await self._write(
            lambda c: adm.set_visibility(c, call.identity, name, public, rules)
        )
        await self._audit(call, "repository.visibility", name, {"visibility": view["visibility"]})
        return json_response(200, view)

    # -- audit log --------------------------------------------------------------------------

    async def audit(self, call: Call) -> Response:
        limit = call.integer("limit") or 100
        query = call.query

        def read(conn: Connection) -> list[dict[str, Any]]:
            return adm.audit_entries(
                conn,
                call.identity,
                actor_name=query.get("actor"),
                action=query.get("action"),
                resource=query.get("resource"),
                since=query.get("since"),
                limit=limit,
                before_id=query.get("before"),
            )

        entries = await self._read(read)
        for entry in entries:
            entry["time"] = datetime.fromtimestamp(entry["ts"], UTC).isoformat()
        more = len(entries) == limit
        return json_response(
            200, {"entries": entries, "next": entries[-1]["id"] if more and entries else None}
        )


def _created(view: dict[str, Any], location: str) -> Response:
    return json_response(201, view, [("Location", quote(location))])


# -- the route table: routing and the OpenAPI document both come from it -----------------

_API = ManagementAPI
_ADMIN = "site administrators"
_MANAGERS = "owners and admins of the namespace, site administrators"
_NAME = r.text(
    "name",
    "2-64 lowercase letters, digits and . _ - (not at either end)",
    required=True,
    minLength=2,
    maxLength=64,
    pattern=adm.NAME_PATTERN,
)
_EXPIRES = r.number(
    "expires_in_days", "days until it expires [never]", exclusiveMinimum=0, maximum=3650
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/api/v1/openapi.json",
        _API.openapi,
        "This document (OpenAPI 3.1)",
        "meta",
        "anyone",
        response={"type": "object"},
        errors=(),
        authenticated=False,
    ),
    Endpoint(
        "GET",
        "/api/v1/user",
        _API.whoami,
        "Who am I: the caller's user, robot or token",
        "users",
        "any authenticated caller",
        response=r.schema("Me"),
        errors=(),
    ),
    Endpoint(
        "GET",
        "/api/v1/users",
        _API.list_users,
        "List users",
        "users",
        _ADMIN,
        response=r.list_of("User"),
    ),
    Endpoint(
        "POST",
        "/api/v1/users",
        _API.create_user,
        "Create a user",
        "users",
        _ADMIN,
        status=201,
        response=r.schema("User"),
        body=(
            _NAME,
            r.text(
                "password",
                "at least 8 characters",
                required=True,
                minLength=8,
                maxLength=1024,
                writeOnly=True,
            ),
            r.flag("admin", "a site administrator [false]"),
        ),
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        "/api/v1/users/{name}",
        _API.get_user,
        "Read a user",
        "users",
        f"{_ADMIN}; a user reads themselves",
        response=r.schema("User"),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/users/{name}",
        _API.update_user,
        "Change a user's password, admin flag or disabled flag",
        "users",
        f"{_ADMIN}; a user changes their own password",
        response=r.schema("User"),
        body=(
            r.text("password", "a new password", minLength=8, maxLength=1024, writeOnly=True),
            r.flag("admin", "make a site administrator, or not"),
            r.flag(
                "disabled",
                "disable the account: its password, access tokens and sessions stop working",
            ),
        ),
        errors=(403, 409),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/users/{name}",
        _API.delete_user,
        "Delete a user (refused while their namespace holds repositories)",
        "users",
        _ADMIN,
        status=204,
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        "/api/v1/orgs",
        _API.list_orgs,
        "List organizations visible to the caller",
        "organizations",
        "any authenticated caller (site administrators see all)",
        response=r.list_of("Organization"),
        errors=(),
    ),
    Endpoint(
        "POST",
        "/api/v1/orgs",
        _API.create_org,
        "Create an organization; the caller becomes its owner",
        "organizations",
        "any user signed in with a password",
        status=201,
        response=r.schema("Organization"),
        body=(_NAME, r.flag("public", "repositories are public unless set otherwise [false]")),
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        "/api/v1/orgs/{org}",
        _API.get_org,
        "Read an organization",
        "organizations",
        "members, site administrators; anyone for a public one",
        response=r.schema("Organization"),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/orgs/{org}",
        _API.update_org,
        "Make an organization public or private",
        "organizations",
        _MANAGERS,
        response=r.schema("Organization"),
        body=(r.flag("public", "repositories are public unless set otherwise", required=True),),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/orgs/{org}",
        _API.delete_org,
        "Delete an organization (refused while it holds repositories)",
        "organizations",
        _MANAGERS,
        status=204,
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        "/api/v1/orgs/{org}/members",
        _API.list_members,
        "List members",
        "organizations",
        "members, site administrators",
        response=r.list_of("Member"),
    ),
    Endpoint(
        "PUT",
        "/api/v1/orgs/{org}/members/{user}",
        _API.set_member,
        "Add a member or change their role",
        "organizations",
        _MANAGERS,
        response=r.schema("Member"),
        body=(r.choice("role", list(ROLES), "the member's role", required=True),),
        errors=(403, 409),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/orgs/{org}/members/{user}",
        _API.remove_member,
        "Remove a member",
        "organizations",
        f"{_MANAGERS}; a member leaves",
        status=204,
        errors=(403, 409),
    ),
    Endpoint(
        "GET",
        "/api/v1/namespaces/{ns}/robots",
        _API.list_robots,
        "List the robot accounts of a namespace",
        "robots",
        _MANAGERS,
        response=r.list_of("Credential"),
    ),
    Endpoint(
        "POST",
        "/api/v1/namespaces/{ns}/robots",
        _API.create_robot,
        "Create a robot account; its secret is in this answer only",
        "robots",
        _MANAGERS,
        status=201,
        response=r.schema("NewCredential"),
        body=(
            r.text(
                "name",
                "1-48 lowercase letters, digits and . _ -; it logs in as robot$NS+NAME",
                required=True,
                minLength=1,
                maxLength=adm.MAX_ROBOT_NAME,
                pattern=adm.ROBOT_NAME_PATTERN,
            ),
            r.permissions("permissions", "repositories under NS/ and actions", required=True),
            _EXPIRES,
        ),
        errors=(403, 409),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/namespaces/{ns}/robots/{robot}",
        _API.revoke_robot,
        "Revoke a robot account",
        "robots",
        _MANAGERS,
        status=204,
    ),
    Endpoint(
        "GET",
        "/api/v1/user/tokens",
        _API.list_tokens,
        "List the caller's personal access tokens",
        "tokens",
        "users",
        response=r.list_of("Credential"),
    ),
    Endpoint(
        "POST",
        "/api/v1/user/tokens",
        _API.create_token,
        "Create a personal access token; it is in this answer only",
        "tokens",
        "users signed in with a password (not with a token)",
        status=201,
        response=r.schema("NewCredential"),
        body=(
            r.text(
                "name",
                "what it is for: 1-40 letters, digits, spaces and . _ @ / + -",
                required=True,
                minLength=1,
                maxLength=40,
                pattern=adm.TOKEN_NAME_PATTERN,
            ),
            r.permissions("permissions", "narrow the user's rights [all of them]"),
            _EXPIRES,
        ),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/user/tokens/{token_id}",
        _API.revoke_token,
        "Revoke one of the caller's personal access tokens",
        "tokens",
        "users signed in with a password",
        status=204,
    ),
    Endpoint(
        "GET",
        "/api/v1/repositories",
        _API.list_repositories,
        "List the repositories the caller may pull",
        "repositories",
        "any authenticated caller",
        response=r.schema("RepositoryPage"),
        query=(
            r.int_param("n", 1, 1000, "page size [100]"),
            r.text_param("last", "the `next` of the previous page"),
        ),
        errors=(),
    ),
    Endpoint(
        "GET",
        "/api/v1/repositories/{repository:path}",
        _API.get_repository,
        "Read a repository's visibility and the caller's rights on it",
        "repositories",
        "whoever may pull it",
        response=r.schema("Repository"),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/repositories/{repository:path}",
        _API.update_repository,
        "Make a repository public or private (also before its first push)",
        "repositories",
        _MANAGERS,
        response=r.schema("Repository"),
        body=(r.choice("visibility", ["public", "private"], "who may pull", required=True),),
    ),
    Endpoint(
        "GET",
        "/api/v1/audit",
        _API.audit,
        "Read the audit log, newest first",
        "audit",
        "site administrators (everything); users (the namespaces they manage)",
        response=r.schema("AuditPage"),
        query=(
            r.text_param("actor", "who: a user name, robot$NS+NAME, anonymous"),
            r.text_param("action", "user.create, org.member.set, manifest.push, ..."),
            r.text_param("resource", "a repository name, user:NAME, org:NAME, ..."),
            r.moment_param("since", "seconds since the epoch, or an ISO 8601 time (UTC)"),
            r.int_param("limit", 1, 1000, "entries per page [100]"),
            r.int_param("before", 1, 2**62, "the `next` of the previous page"),
        ),
    ),
)

ENDPOINTS += LIFECYCLE_ENDPOINTS  # quotas, immutability, retention, usage, gc
ENDPOINTS += MIRROR_ENDPOINTS  # the registry mirror's upstreams
