"""The token endpoint (Docker token authentication and its OAuth2 form)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from dockyard.auth.identities import ANONYMOUS, Identity, LoginFailed
from dockyard.auth.scopes import parse_scopes
from dockyard.auth.service import AuthService, decode_basic
from dockyard.http.messages import Request, Response, json_response
from dockyard.oci.errors import RegistryError, Unauthorized

MAX_FORM_BYTES = 64 * 1024


class TokenEndpoint:
    def __init__(self, auth: AuthService, refresh: RefreshTokens) -> None:
        self.auth = auth
        self.refresh = refresh

    async def get(self, request: Request) -> Response:
        """``GET /auth/token?service=&scope=...&offline_token=`` with Basic or no credentials."""
        identity = ANONYMOUS
        authorization = request.header("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise self._bad_login("the token endpoint takes Basic credentials")
            username, secret = decode_basic(value)
            identity = await self._login(username, secret, request)
        self._check_service(request.arg("service"))
        offline = (request.arg("offline_token") or "").lower() == "true"
        return await self._answer(request, identity, request.query.get("scope", []), offline)

    async def post(self, request: Request) -> Response:
        """OAuth2: ``grant_type=password`` or ``refresh_token``, form encoded."""
        body = await request.read(MAX_FORM_BYTES, _oauth_error(400, "invalid_request", "too big"))
        try:
            form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise _oauth_error(400, "invalid_request", "form is not UTF-8") from None
        self._check_service(form.get("service"))
        grant_type = form.get("grant_type")
        if grant_type == "password":
            identity = await self._login(
                form.get("username", ""), form.get("password", ""), request
            )
        elif grant_type == "refresh_token":
            found = await self.refresh.identity(form.get("refresh_token", ""))
            if found is None:
                raise _oauth_error(401, "invalid_grant", "refresh token is invalid or revoked")
            identity = found
        else:
            raise _oauth_error(400, "unsupported_grant_type", "use password or refresh_token")
        offline = form.get("access_type") == "offline" and grant_type == "password"
        scopes = [form["scope"]] if form.get("scope") else []
        response = await self._answer(request, identity, scopes, offline, oauth=True)
        return response

    async def _login(self, username: str, secret: str, request: Request) -> Identity:
        try:
            return await self.auth.login(username, secret, request.client)
        except Unauthorized:
            raise self._bad_login("invalid username or password") from None

    def _bad_login(self, message: str) -> Unauthorized:
        return Unauthorized(
            message, headers={"WWW-Authenticate": f'Basic realm="{self.auth.settings.service}"'}
        )

    def _check_service(self, service: str | None) -> None:
        if service and service != self.auth.settings.service:
            raise _oauth_error(
                400, "invalid_request", f"this token service is {self.auth.settings.service!r}"
            )

    async def _answer(
        self,
        request: Request,
        identity: Identity,
        scope_values: list[str],
        offline: bool,
        oauth: bool = False,
    ) -> Response:
        granted = await self.auth.grant(identity, parse_scopes(scope_values))
        issued = self.auth.issue(identity, granted)
        issued_at = datetime.fromtimestamp(issued.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        payload: dict[str, object] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued_at,
        }
        if oauth:
            payload["scope"] = " ".join(str(s) for s in granted if s.actions)
        if offline and not identity.anonymous:
            payload["refresh_token"] = await self.refresh.create(identity)
        await self.auth.audit(
            identity.subject or "anonymous",
            "token.grant",
            None,
            request.client,
            {"scopes": [str(s) for s in granted if s.actions]},
        )
        return json_response(200, payload, [("Cache-Control", "no-store")])


class RefreshTokens:
    """Long-lived opaque tokens (``offline_token``): stored hashed, revocable, 30 days."""

    TTL_SECONDS = 30 * 86400

    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    async def create(self, identity: Identity) -> str:
        from dockyard.auth.management import create_refresh_token

        return await self.auth.ctx.write(
            lambda conn: create_refresh_token(conn, identity, time.time() + self.TTL_SECONDS)
        )

    async def identity(self, token: str) -> Identity | None:
        from dockyard.auth.management import identity_of_refresh_token

        if not token or len(token) > 512:
            return None
        try:
            return await self.auth.ctx.read(lambda conn: identity_of_refresh_token(conn, token))
        except LoginFailed:
            return None


class OAuthError(RegistryError):
    """An OAuth2 error answer: ``{"error", "error_description"}``."""

    status = 400

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error

    def to_json(self) -> dict[str, object]:
        return {"error": self.error, "error_description": self.message}


class OAuthUnauthorized(OAuthError):
    status = 401


def _oauth_error(status: int, error: str, description: str) -> OAuthError:
    return (OAuthUnauthorized if status == 401 else OAuthError)(error, description)
