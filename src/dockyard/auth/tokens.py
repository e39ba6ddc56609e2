"""The Docker token service's JWTs: issuing and verifying access tokens.

Claims: ``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti`` and ``access`` (a list
of ``{"type", "name", "actions"}``), signed ES256 or RS256 with a ``kid`` header (and an
``x5c`` header when the signing key has a certificate).

Tokens of an external issuer (auth/external.py) are verified by the same function under a
wider :class:`Policy`: more asymmetric algorithms, fewer required claims, and keys found by
``x5c``, ``jwk`` or ``kid`` (:class:`HeaderKeys`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jwt

from dockyard.auth.keys import algorithms_for
from dockyard.auth.scopes import Scope

ALGORITHMS = ["ES256", "RS256"]
# every asymmetric JWS algorithm: the most an external issuer may use (never none or HMAC)
EXTERNAL_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
LEEWAY_SECONDS = 30
EXTRA_CLAIM = "dockyard"


class VerificationKey(Protocol):
    @property
    def public(self) -> Any: ...

    @property
    def algorithms(self) -> frozenset[str]: ...


class VerificationKeys(Protocol):
    def verification_key(self, kid: str) -> Any: ...


@runtime_checkable
class HeaderKeys(Protocol):
    """Keys found from the whole JOSE header (``x5c``, ``jwk``, ``kid``)."""

    def key_for(self, header: Mapping[str, Any]) -> VerificationKey | None:
        """The trusted key the header names, None when it names none; may raise
        :class:`InvalidToken` to say why (an expired certificate, say)."""
        ...

    def generation(self) -> int:
        """A number that changes whenever the trusted keys do."""
        ...


@dataclass(frozen=True, slots=True)
class Policy:
    """What a verified token must be: signed with one of ``algorithms``, carrying every
    claim in ``required``; ``own_claims``: Dockyard's private claim is believed."""

    algorithms: frozenset[str] = frozenset(ALGORITHMS)
    required: tuple[str, ...] = ("exp", "nbf", "iat", "iss", "aud", "sub", "jti")
    own_claims: bool = True


INTERNAL = Policy()
# Distribution checks iss, aud and the time window; nbf, iat, sub and jti are optional
EXTERNAL = Policy(EXTERNAL_ALGORITHMS, ("exp", "iss", "aud"), own_claims=False)


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
    headers: dict[str, Any] = {"kid": key.kid, "typ": "JWT"}
    if getattr(key, "x5c", None):
        headers["x5c"] = list(key.x5c)
    token = jwt.encode(claims, key.private, algorithm=key.algorithm, headers=headers)
    return IssuedToken(token, ttl_seconds, now)


def verify(
    token: str,
    keys: VerificationKeys | HeaderKeys,
    *,
    issuer: str,
    audience: str,
    policy: Policy = INTERNAL,
) -> AccessToken:
    """Check signature, algorithm, key, issuer, audience and time; return the grant."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in policy.algorithms:
        raise InvalidToken(f"token algorithm {str(algorithm)[:20]!r} is not accepted")
    if "crit" in header:
        raise InvalidToken("token header has critical extensions this registry does not know")
    if isinstance(keys, HeaderKeys):
        key: Any = keys.key_for(header)
    else:
        kid = header.get("kid")
        key = keys.verification_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken("token signed by an unknown key")
    public = getattr(key, "public", key)
    fitting = getattr(key, "algorithms", None)
    fitting = algorithms_for(public) if fitting is None else fitting
    if algorithm not in fitting or algorithm not in algorithms_for(public):
        raise InvalidToken("token algorithm does not match its key")
    try:
        claims = jwt.decode(
            token,
            public,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": list(policy.required)},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"token rejected: {exc}") from None
    if not isinstance(claims.get("exp"), int | float):
        raise InvalidToken("token has no valid expiry")
    own = claims.get(EXTRA_CLAIM) if policy.own_claims else None
    return AccessToken(
        subject=str(claims.get("sub") or ""),
        access=tuple(_access(claims.get("access"))),
        jti=str(claims.get("jti") or ""),
        expires_at=float(claims["exp"]),
        extra=own if isinstance(own, dict) else None,
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
