"""The token service and the checks every request goes through.

``identify`` turns an ``Authorization`` header into an identity (Basic credentials or a
Bearer token); ``grant`` intersects requested scopes with what policy allows;
``check`` decides one request. Everything here is transport-free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from dockyard.auth import tokens
from dockyard.auth.identities import (
    ANONYMOUS,
    Identity,
    LoginFailed,
    authenticate,
    resolve,
)
from dockyard.auth.keys import KeyRing
from dockyard.auth.policy import Rules, repository_actions
from dockyard.auth.redis_throttle import rate_buckets
from dockyard.auth.scopes import Scope
from dockyard.auth.throttle import LoginBrake
from dockyard.db import identities as id_db
from dockyard.oci.errors import Denied, TooManyRequests, Unauthorized
from dockyard.registry.context import Context


@dataclass(frozen=True)
class AuthSettings:
    service: str = "dockyard"
    issuer: str = "dockyard"
    token_ttl_seconds: int = 300
    realm: str | None = None  # absolute token endpoint URL; default: from the request
    rules: Rules = field(default_factory=Rules)
    requests_per_second: float = 0.0  # per identity and per address; 0 = unlimited
    burst: int = 200


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity behind a request and, when it came with a token, the token's grant."""

    identity: Identity
    token: tokens.AccessToken | None = None


class AuthService:
    def __init__(
        self,
        ctx: Context,
        settings: AuthSettings,
        keys_dir: Path,
        verifier: tokens.HeaderKeys | None = None,
        policy: tokens.Policy = tokens.INTERNAL,
    ) -> None:
        """``keys_dir`` holds the keys that sign (and verify) our own tokens; ``verifier``
        and ``policy`` replace them for verifying when tokens come from elsewhere."""
        self.ctx = ctx
        self.settings = settings
        self.keys = KeyRing(keys_dir)
        self.verifier: tokens.HeaderKeys = verifier if verifier is not None else self.keys
        self.policy = policy
        self._key_generation: int | None = None
        self.brake = LoginBrake(ctx)
        self.limits = rate_buckets(
            getattr(ctx, "redis", None), settings.requests_per_second, settings.burst
        )
        self._verified: dict[str, tokens.AccessToken] = {}
        self._passwords: dict[str, tuple[int | None, Identity]] = {}

    # who is calling

    async def identify(self, authorization: str | None, client: str) -> Caller:
        """The caller, or ``Unauthorized`` for bad credentials (never for none)."""
        if not authorization:
            return Caller(ANONYMOUS)
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            grant = self.verify(value.strip())
            return Caller(self._identity_of_grant(grant), grant)
        if scheme == "basic":
            username, secret = decode_basic(value)
            return Caller(await self.login(username, secret, client))
        raise Unauthorized("unsupported authorization scheme")

    def verify(self, token: str) -> tokens.AccessToken:
        generation = self.verifier.generation()
        if generation != self._key_generation:  # a key went (or came): verify afresh
            self._verified.clear()
            self._key_generation = generation
        grant = self._verified.get(token)
        if grant is not None and grant.expires_at > time.time():
            return grant
        try:
            grant = tokens.verify(
                token,
                self.verifier,
                issuer=self.settings.issuer,
                audience=self.settings.service,
                policy=self.policy,
            )
        except tokens.InvalidToken as exc:
            raise Unauthorized("invalid token", detail={"reason": str(exc)[:200]}) from None
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[token] = grant
        return grant

    def _identity_of_grant(self, grant: tokens.AccessToken) -> Identity:
        """The subject as the token names it (for logs and limits; decisions that need
        more resolve it with ``current``)."""
        if not grant.subject:
            return ANONYMOUS
        kind = (grant.extra or {}).get("kind")
        return Identity(kind if kind in ("user", "robot", "token") else "user", grant.subject)

    async def login(self, username: str, secret: str, client: str) -> Identity:
        """Check credentials, with a brake on repeated failures per name and per address."""
        # The brake first, even for credentials that passed before: otherwise a guess that
        # happens to be right would be confirmed while the brake holds.
        keys = (f"user:{username}", f"addr:{_address(client)}")
        for key in keys:
            wait = await self.brake.wait(key)
            if wait > 0:
                raise TooManyRequests(
                    "too many failed logins; try again later",
                    headers={"Retry-After": str(int(wait) + 1)},
                )
        cache_key = hashlib.sha256(f"{username}\0{secret}".encode()).hexdigest()
        cached = self._passwords.get(cache_key)
        generation = self.ctx.changes.token()
        if cached is not None and generation is not None and cached[0] == generation:
            return cached[1]  # these exact credentials passed, and nothing changed since
        try:
            identity = await self.ctx.run(lambda: self._authenticate(username, secret))
        except LoginFailed:
            for key in keys:
                await self.brake.failed(key)
            await self.audit((username or "-")[:128], "login.failed", None, client)
            raise Unauthorized("invalid username or password") from None
        await self.brake.succeeded(keys[0])
        if len(self._passwords) > 10_000:
            self._passwords.clear()
        self._passwords[cache_key] = (generation, identity)
        return identity

    def _authenticate(self, username: str, secret: str) -> Identity:
        with self.ctx.db.reader.connect() as conn:
            return authenticate(conn, username, secret)

    # what the caller may do

    async def actions(self, identity: Identity, repository: str) -> frozenset[str]:
        rules = self.settings.rules

        def decide(conn: Connection) -> frozenset[str]:
            return repository_actions(conn, identity, repository, rules)

        return await self.ctx.cached_read(("actions", identity, repository), decide)

    async def current(self, caller: Caller) -> Identity | None:
        """The identity a token stands for, looked up again (None when it is gone)."""
        if caller.token is None:
            return caller.identity
        grant = caller.token
        return await self.ctx.read(lambda conn: resolve(conn, grant.subject, grant.extra))

    async def grant(self, identity: Identity, requested: list[Scope]) -> list[Scope]:
        """The intersection of what was asked for and what is allowed (never an error)."""
        granted = []
        for scope in requested:
            if scope.type == "repository":
                allowed = await self.actions(identity, scope.name)
                wanted = ALL_ACTIONS if "*" in scope.actions else scope.actions
                actions = frozenset(wanted) & allowed
            elif scope.type == "registry" and scope.name == "catalog":
                actions = scope.actions & {"*"} if identity.is_admin else frozenset()
            else:
                actions = frozenset()
            granted.append(Scope(scope.type, scope.name, actions))
        return granted

    def issue(self, identity: Identity, granted: list[Scope]) -> tokens.IssuedToken:
        return tokens.issue(
            self.keys,
            issuer=self.settings.issuer,
            audience=self.settings.service,
            subject=identity.subject,
            access=[s for s in granted if s.actions],
            ttl_seconds=self.settings.token_ttl_seconds,
            extra=identity.claim(),
        )

    async def check(
        self, caller: Caller, repository: str, needed: frozenset[str], realm: str
    ) -> None:
        """Allow the request, or raise 401 (with a challenge) or 403."""
        scope = Scope("repository", repository, needed)
        if caller.token is not None:
            if all(caller.token.allows("repository", repository, a) for a in needed):
                return
            identity = await self.current(caller)
            if identity is None:
                raise self.challenge(realm, scope, "invalid_token", "token subject is gone")
            if needed <= await self.actions(identity, repository):
                raise self.challenge(realm, scope, "insufficient_scope", "token lacks scope")
            if identity.anonymous:  # logging in may help: challenge, as without a token
                raise self.challenge(realm, scope)
            raise Denied(detail={"repository": repository, "actions": sorted(needed)})
        if needed <= await self.actions(caller.identity, repository):
            return
        if caller.identity.anonymous:
            raise self.challenge(realm, scope)
        raise Denied(detail={"repository": repository, "actions": sorted(needed)})

    def challenge(
        self,
        realm: str,
        scope: Scope | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> Unauthorized:
        parts = [f'realm="{self.settings.realm or realm}"', f'service="{self.settings.service}"']
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        detail = None
        if scope is not None:
            detail = [
                {"Type": scope.type, "Name": scope.name, "Action": action}
                for action in sorted(scope.actions)
            ]
        return Unauthorized(
            message or "authentication required",
            detail=detail,
            headers={"WWW-Authenticate": "Bearer " + ",".join(parts)},
        )

    def throttle(self, caller: Caller, client: str) -> None:
        if self.limits.rate <= 0:
            return
        keys = [f"addr:{_address(client)}"]
        if not caller.identity.anonymous:
            keys.append(f"id:{caller.identity.subject}")
        for key in keys:
            wait = self.limits.take(key)
            if wait > 0:
                raise TooManyRequests(
                    "rate limit exceeded", headers={"Retry-After": str(int(wait) + 1)}
                )

    async def audit(
        self,
        actor: str,
        action: str,
        resource: str | None,
        client: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self.ctx.write(
            lambda conn: id_db.record_audit(
                conn, actor, action, resource, _address(client or ""), detail
            ),
            announce=False,  # no cached read depends on the audit log
        )


ALL_ACTIONS = frozenset({"pull", "push", "delete"})


def decode_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthorized("malformed Basic credentials") from None
    username, sep, secret = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials")
    return username, secret


def _address(client: str) -> str:
    """``127.0.0.1:5555`` -> ``127.0.0.1``; ``[::1]:5555`` -> ``::1``."""
    host, sep, _ = client.rpartition(":")
    return (host if sep else client).strip("[]")
