"""The Docker token service's JWTs: issuing and verifying access tokens.

Claims: ``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti`` and ``access`` (a list
of ``{"type", "name", "actions"}``), signed ES256 or RS256 with a ``kid`` header.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from dockyard.auth.scopes import Scope

ALGORITHMS = ["ES256", "RS256"]
LEEWAY_SECONDS = 30
EXTRA_CLAIM = "dockyard"


class VerificationKeys(Protocol):
    def verification_key(self, kid: str) -> Any: ...


class InvalidToken(Exception):
    """The token is malformed, forged, expired or not meant for this registry."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    subject: str
    access: tuple[Scope, ...]
    jti: str
    expires_at: float
    extra: dict[str, Any] | None = None  # Dockyard's own claim: what kind of subject

    def allows(self, resource_type: str, name: str, action: str) -> bool:
        return any(
            scope.type == resource_type
            and scope.name == name
            and (action in scope.actions or "*" in scope.actions)
            for scope in self.access
        )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: float


def issue(
    keys: Any,
    *,
    issuer: str,
    audience: str,
    subject: str,
    access: list[Scope],
    ttl_seconds: int,
    extra: dict[str, Any] | None = None,
) -> IssuedToken:
    key = keys.signing_key()
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": now + ttl_seconds,
        "nbf": now - 1,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "access": [scope.to_claim() for scope in access],
    }
    if extra:
        claims[EXTRA_CLAIM] = extra
    token = jwt.encode(
        claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"}
    )
    return IssuedToken(token, ttl_seconds, now)


def verify(token: str, keys: VerificationKeys, *, issuer: str, audience: str) -> AccessToken:
    """Check signature, algorithm, key, issuer, audience and time; return the grant."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise InvalidToken(f"token algorithm {str(algorithm)[:20]!r} is not accepted")
    kid = header.get("kid")
    key = keys.verification_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken("token signed by an unknown key")
    if getattr(key, "algorithm", algorithm) != algorithm:
        raise InvalidToken("token algorithm does not match its key")
    try:
        claims = jwt.decode(
            token,
            getattr(key, "public", key),
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"token rejected: {exc}") from None
    return AccessToken(
        subject=str(claims["sub"]),
        access=tuple(_access(claims.get("access"))),
        jti=str(claims["jti"]),
        expires_at=float(claims["exp"]),
        extra=claims[EXTRA_CLAIM] if isinstance(claims.get(EXTRA_CLAIM), dict) else None,
    )


def _access(value: Any) -> list[Scope]:
    if not isinstance(value, list):
        return []
    scopes = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        actions = entry.get("actions")
        if (
            isinstance(entry.get("type"), str)
            and isinstance(entry.get("name"), str)
            and isinstance(actions, list)
            and all(isinstance(a, str) for a in actions)
        ):
            scopes.append(Scope(entry["type"], entry["name"], frozenset(actions)))
    return scopes
