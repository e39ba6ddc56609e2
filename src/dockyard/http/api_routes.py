"""The management API's route table and everything derived from it: path matching, the
checks on JSON bodies and query parameters, and the OpenAPI 3.1 document.

One table (``api.ENDPOINTS``) drives both the routing and the document, so they cannot
drift apart: an endpoint exists exactly when it is documented.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dockyard.auth.administration import GLOB_PATTERN
from dockyard.auth.identities import ACTIONS, Identity
from dockyard.auth.policy import ROLES
from dockyard.http.lifecycle_schemas import LIFECYCLE_SCHEMAS
from dockyard.http.messages import DRAIN_LIMIT, Request, Response, json_response
from dockyard.oci.names import MAX_NAME_LENGTH
from dockyard.oci.names import NAME_PATTERN as REPOSITORY_NAME_PATTERN

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An answer other than success: ``{"error": code, "message": message}``."""

    CODES = {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        429: "too_many_requests",
        500: "internal_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or self.CODES.get(status, "error")
        self.headers = headers or {}

    def response(self) -> Response:
        return json_response(
            self.status, {"error": self.code, "message": self.message}, list(self.headers.items())
        )


@dataclass
class Call:
    """One request to an endpoint: who, the path parameters, the checked body and query."""

    request: Request
    identity: Identity
    params: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        value = self.body.get(name, self.query.get(name))
        return value if isinstance(value, str) else None

    def flag(self, name: str) -> bool | None:
        value = self.body.get(name)
        return value if isinstance(value, bool) else None

    def number(self, name: str) -> float | None:
        value = self.body.get(name, self.query.get(name))
        return float(value) if isinstance(value, int | float) else None

    def integer(self, name: str) -> int | None:
        value = self.query.get(name)
        return value if isinstance(value, int) else None


Handler = Callable[[Any, Call], Awaitable[Response]]


# -- request bodies -----------------------------------------------------------------------


@dataclass(frozen=True)
class BodyField:
    """A field of a JSON request body: its documented schema and its type check (the
    rules on the value itself live in ``auth``, which says what is wrong in words)."""

    name: str
    schema: dict[str, Any]
    accepts: Callable[[Any], bool]
    expected: str
    required: bool = False
    description: str = ""


def _is_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode()  # JSON may smuggle in lone surrogates ("\ud800"), which UTF-8 refuses
    except UnicodeEncodeError:
        return False
    return True


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_integer(value: Any) -> bool:
    # JSON has one kind of number: 3.0 is the whole number 3 (JSON Schema agrees)
    return _is_number(value) and float(value).is_integer()


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_text(item) for item in value)


def text(name: str, description: str, required: bool = False, **schema: Any) -> BodyField:
    return BodyField(
        name,
        {"type": "string", **schema},
        _is_text,
        "a string (of Unicode text)",
        required,
        description,
    )


def flag(name: str, description: str, required: bool = False) -> BodyField:
    return BodyField(name, {"type": "boolean"}, _is_flag, "true or false", required, description)


def number(name: str, description: str, required: bool = False, **schema: Any) -> BodyField:
    return BodyField(
        name, {"type": "number", **schema}, _is_number, "a number", required, description
    )


def integer(name: str, description: str, required: bool = False, **schema: Any) -> BodyField:
    """A whole number (the handler takes ``int()`` of it)."""
    return BodyField(
        name, {"type": "integer", **schema}, _is_integer, "a whole number", required, description
    )


def text_list(name: str, description: str, required: bool = False, **schema: Any) -> BodyField:
    """A list of strings; ``schema`` applies to each."""
    return BodyField(
        name,
        {"type": "array", "maxItems": 50, "items": {"type": "string", **schema}},
        _is_text_list,
        "a list of strings",
        required,
        description,
    )


def choice(name: str, values: Sequence[str], description: str, required: bool = False) -> BodyField:
    listed = ", ".join(repr(v) for v in values)
    return BodyField(
        name,
        {"type": "string", "enum": list(values)},
        lambda v: isinstance(v, str) and v in values,
        f"one of {listed}",
        required,
        description,
    )


def permissions(name: str, description: str, required: bool = False) -> BodyField:
    return BodyField(
        name,
        {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Permission"}},
        _is_list,
        'a list of {"repository": GLOB, "actions": [...]}',
        required,
        description,
    )


def body_schema(fields: Sequence[BodyField]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            f.name: {**f.schema, "description": f.description} if f.description else f.schema
            for f in fields
        },
    }
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    elif fields:
        schema["minProperties"] = 1
    return schema


async def read_body(request: Request) -> bytes:
    """The body, up to ``MAX_BODY_BYTES``. A larger one is read on a little (whatever its
    Content-Length says) so that a client still sending gets the 413, not a reset."""
    declared = request.content_length()
    parts: list[bytes] = []
    size = 0
    async for chunk in request.chunks():
        size += len(chunk)
        if size > MAX_BODY_BYTES + DRAIN_LIMIT:
            break
        if size <= MAX_BODY_BYTES:
            parts.append(chunk)
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    if declared is not None and size != declared:
        raise ApiError(400, f"received {size} bytes but Content-Length said {declared}")
    return b"".join(parts)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes, fields: Sequence[BodyField]) -> dict[str, Any]:
    """The body as a JSON object with known fields of the right types (``null`` for an
    optional field means absent)."""
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON object as its body")
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    known = {f.name for f in fields}
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        raise ApiError(
            400,
            f"unknown field{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k[:40]) for k in unknown[:5])}; "
            f"known: {', '.join(sorted(known)) or 'none'}",
        )
    if not value and fields and not any(f.required for f in fields):
        raise ApiError(
            400, f"nothing to change: give at least one of {', '.join(f.name for f in fields)}"
        )
    checked: dict[str, Any] = {}
    for f in fields:
        if f.name not in value:
            if f.required:
                raise ApiError(400, f"missing field {f.name!r}")
            continue
        item = value[f.name]
        if not f.accepts(item):
            raise ApiError(400, f"{f.name!r} must be {f.expected}")
        checked[f.name] = item
    return checked


# -- query parameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]  # raises ValueError with a message for the caller
    description: str
    empty_is_absent: bool = False  # ``?actor=`` filters nothing


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or len(value) > 20 or not low <= int(value) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(value)

    return parse


def _short_text(value: str) -> str:
    if len(value) > 255:
        raise ValueError("must be at most 255 characters")
    return value


_SECONDS_RE = re.compile(r"^\d{1,12}(?:\.\d{1,9})?$")


def _moment(value: str) -> float:
    """Seconds since the epoch, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    if _SECONDS_RE.match(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be seconds since the epoch or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def int_param(name: str, low: int, high: int, description: str) -> QueryParam:
    return QueryParam(
        name,
        {"type": "integer", "minimum": low, "maximum": high},
        _bounded_int(low, high),
        description,
    )


def text_param(name: str, description: str) -> QueryParam:
    return QueryParam(
        name, {"type": "string", "maxLength": 255}, _short_text, description, empty_is_absent=True
    )


def moment_param(name: str, description: str) -> QueryParam:
    schema = {
        "anyOf": [
            {"type": "string", "pattern": _SECONDS_RE.pattern},
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
        ]
    }
    return QueryParam(name, schema, _moment, description)


def parse_query(request: Request, params: Sequence[QueryParam]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for param in params:
        value = request.arg(param.name)
        if value is None or (value == "" and param.empty_is_absent):
            continue
        try:
            parsed[param.name] = param.parse(value)
        except ValueError as exc:
            raise ApiError(400, f"query parameter {param.name!r} {exc}") from None
    return parsed


# -- endpoints ----------------------------------------------------------------------------

PATH_PARAMS: dict[str, str] = {
    "name": "a user name",
    "org": "an organization name",
    "user": "a user name",
    "ns": "a namespace: a user or organization name",
    "robot": "a robot's name within the namespace (ci), or its login name (robot$team+ci)",
    "token_id": "the id of a personal access token",
    "repository": (
        "a repository name; it contains slashes (team/app), which may be sent as they are "
        "or percent-encoded"
    ),
    "rule_id": "the id of an immutability rule of the namespace",
    "policy_id": "the id of a retention policy of the namespace",
}


PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "repository": {
        "type": "string",
        "pattern": f"^{REPOSITORY_NAME_PATTERN}$",
        "maxLength": MAX_NAME_LENGTH,
    },
    "rule_id": {"type": "integer", "minimum": 1, "maximum": 2**62},
    "policy_id": {"type": "integer", "minimum": 1, "maximum": 2**62},
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # /api/v1/users/{name}; {name:path} matches slashes too
    handler: Handler
    summary: str
    tag: str
    who: str  # who may call it, in words
    status: int = 200
    response: dict[str, Any] | None = None  # schema of the success body; None: no body
    body: tuple[BodyField, ...] | None = None
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = (403,)
    authenticated: bool = True
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(
            r"\{(\w+)(:path)?\}",
            lambda m: f"(?P<{m[1]}>{'.+' if m[2] else '[^/]+'})",
            self.path,
        )
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def document_path(self) -> str:
        return re.sub(r"\{(\w+):path\}", r"{\1}", self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)", self.path)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def match(endpoints: Sequence[Endpoint], method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
    wanted = "GET" if method == "HEAD" else method
    allowed: list[str] = []
    for endpoint in endpoints:
        found = endpoint.pattern.match(path)
        if found is None:
            continue
        if endpoint.method == wanted:
            return endpoint, found.groupdict()
        allowed.append(endpoint.method)
    if allowed:
        raise ApiError(
            405,
            f"{method[:10]} is not allowed here; use {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed + (["HEAD"] if "GET" in allowed else []))},
        )
    raise ApiError(404, f"no such API endpoint: {path[:100]}")


# -- the OpenAPI document -----------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def schema(name: str) -> dict[str, Any]:
    return _ref(name)


_ACTION_ENUM = {"type": "string", "enum": list(ACTIONS)}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {
                "type": "string",
                "description": "a stable code: " + ", ".join(sorted(set(ApiError.CODES.values()))),
            },
            "message": {"type": "string", "description": "what went wrong, for people"},
        },
    },
    "Membership": {
        "type": "object",
        "required": ["name", "role"],
        "properties": {"name": {"type": "string"}, "role": {"enum": list(ROLES)}},
    },
    "User": {
        "type": "object",
        "required": ["name", "admin", "disabled", "created_at"],
        "properties": {
            "name": {"type": "string"},
            "admin": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "created_at": {"type": "number", "description": "seconds since the epoch"},
            "organizations": {
                **list_of("Membership"),
                "description": "when reading one user, not in the list of users",
            },
        },
    },
    "Me": {
        "type": "object",
        "required": ["name", "kind", "admin"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["user", "token", "robot"]},
            "admin": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "created_at": {"type": "number"},
            "organizations": list_of("Membership"),
            "namespace": {"type": "string", "description": "a robot's namespace"},
            "permissions": list_of("Permission"),
            "credential_id": {"type": "string"},
        },
    },
    "Member": {
        "type": "object",
        "required": ["user", "role"],
        "properties": {"user": {"type": "string"}, "role": {"enum": list(ROLES)}},
    },
    "Organization": {
        "type": "object",
        "required": ["name", "public", "created_at", "role"],
        "properties": {
            "name": {"type": "string"},
            "public": {"type": "boolean"},
            "created_at": {"type": "number"},
            "role": {
                "enum": [*ROLES, None],
                "description": "the caller's role, null when not a member",
            },
            "members": {
                **list_of("Member"),
                "description": "present for members and site administrators",
            },
        },
    },
    "Permission": {
        "type": "object",
        "required": ["repository", "actions"],
        "properties": {
            "repository": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": GLOB_PATTERN,
                "description": "a repository name or glob (team/*); * also matches /",
            },
            "actions": {"type": "array", "minItems": 1, "items": _ACTION_ENUM},
        },
    },
    "Credential": {
        "type": "object",
        "required": [
            "id",
            "kind",
            "name",
            "namespace",
            "permissions",
            "created_at",
            "expires_at",
            "revoked",
        ],
        "properties": {
            "id": {"type": "string"},
            "kind": {"enum": ["robot", "token"]},
            "name": {"type": "string", "description": "a robot's login name, a token's name"},
            "namespace": _nullable("string"),
            "permissions": list_of("Permission"),
            "created_at": {"type": "number"},
            "expires_at": _nullable("number"),
            "revoked": {"type": "boolean"},
        },
    },
    "NewCredential": {
        "allOf": [
            _ref("Credential"),
            {
                "type": "object",
                "required": ["username", "secret"],
                "properties": {
                    "username": {
                        "type": "string",
                        "description": "the name to log in with (docker login -u)",
                    },
                    "secret": {
                        "type": "string",
                        "description": "the password to log in with; shown this once only",
                    },
                },
            },
        ]
    },
    "Repository": {
        "type": "object",
        "required": ["name", "visibility", "visibility_source", "actions"],
        "properties": {
            "name": {"type": "string"},
            "visibility": {"enum": ["public", "private"]},
            "visibility_source": {
                "enum": ["repository", "organization", "default"],
                "description": "the repository's own setting, its organization's, or private",
            },
            "actions": {
                "type": "array",
                "items": _ACTION_ENUM,
                "description": "what the caller may do",
            },
        },
    },
    "RepositoryPage": {
        "type": "object",
        "required": ["repositories", "next"],
        "properties": {
            "repositories": list_of("Repository"),
            "next": {**_nullable("string"), "description": "pass as `last` for the next page"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "ts", "time", "actor", "action", "resource", "client", "detail"],
        "properties": {
            "id": {"type": "integer"},
            "ts": {"type": "number", "description": "seconds since the epoch"},
            "time": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "action": {"type": "string", "description": "user.create, manifest.push, ..."},
            "resource": {
                **_nullable("string"),
                "description": "a repository name, user:NAME, org:NAME, robot$NS+NAME, token:ID",
            },
            "client": _nullable("string"),
            "detail": _nullable("object"),
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["entries", "next"],
        "properties": {
            "entries": list_of("AuditEntry"),
            "next": {
                **_nullable("integer"),
                "description": "pass as `before` for older entries",
            },
        },
    },
    **LIFECYCLE_SCHEMAS,
}

_ERROR_TEXT = {
    400: "bad input: the message says what",
    401: "no or bad credentials",
    403: "the caller may not do this",
    404: "no such user, organization, robot, token, repository, quota, rule or policy",
    409: "a conflict with what exists: a taken name, the last owner or administrator, "
    "an existing rule",
    413: "the body is larger than 64 KiB",
    429: "too many requests or failed logins; see Retry-After",
}


def _error_responses() -> dict[str, Any]:
    content = {"application/json": {"schema": _ref("Error")}}
    responses: dict[str, Any] = {}
    for status, description in _ERROR_TEXT.items():
        entry: dict[str, Any] = {"description": description, "content": content}
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": 'Basic realm="dockyard"',
                }
            }
        if status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        responses[str(status)] = entry
    return responses


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": PATH_SCHEMAS.get(name, {"type": "string", "minLength": 1}),
        }
        for name in endpoint.path_params
    ]
    parameters += [
        {"name": q.name, "in": "query", "description": q.description, "schema": q.schema}
        for q in endpoint.query
    ]
    success: dict[str, Any] = {"description": endpoint.summary}
    if endpoint.response is not None:
        success["content"] = {"application/json": {"schema": endpoint.response}}
    if endpoint.status == 201:
        success["headers"] = {"Location": {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(endpoint.status): success}
    statuses = set(endpoint.errors)
    if endpoint.authenticated:
        statuses |= {401, 429}
    if endpoint.body is not None:
        statuses |= {400, 413}
    if endpoint.query or endpoint.path_params:
        statuses.add(400)
    if endpoint.path_params:
        statuses.add(404)
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "description": f"Who may call: {endpoint.who}.",
        "tags": [endpoint.tag],
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema(endpoint.body)}},
        }
    if not endpoint.authenticated:
        operation["security"] = []
    return operation


def openapi_document(endpoints: Sequence[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.document_path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dockyard management API",
            "version": version,
            "description": (
                "Users, organizations and members, robot accounts, personal access tokens, "
                "repository visibility, the audit log, quotas, tag immutability rules, "
                "retention policies, storage usage and garbage collection of a Dockyard "
                "registry. JSON in, "
                'JSON out; errors are {"error": code, "message": text}. Authenticate with '
                "Basic credentials (a user's password, a robot's secret, or a user name "
                "with a personal access token) or a Bearer token from /auth/token. Only a "
                "user signed in with a password changes anything. Needs `dockyard serve "
                "--auth`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": t}
            for t in dict.fromkeys(e.tag for e in endpoints)  # first-seen order
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {f"E{k}": v for k, v in _error_responses().items()},
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
        "security": [{"basic": []}, {"bearer": []}],
    }
