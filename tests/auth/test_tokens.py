"""Tokens: issued by our key ring, verified strictly; every forgery fails closed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.auth import tokens
from dockyard.auth.keys import KeyRing, generate_key, thumbprint
from dockyard.auth.scopes import Scope, parse_scope, parse_scopes

ISS, AUD = "dockyard-test", "registry.test"


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys", reload_interval=0)


def _issue(ring: KeyRing, ttl: int = 300) -> str:
    access = [Scope("repository", "team/app", frozenset({"pull", "push"}))]
    return tokens.issue(
        ring, issuer=ISS, audience=AUD, subject="alice", access=access, ttl_seconds=ttl
    ).token


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_roundtrip(ring: KeyRing) -> None:
    grant = tokens.verify(_issue(ring), ring, issuer=ISS, audience=AUD)
    assert grant.subject == "alice"
    assert grant.allows("repository", "team/app", "push")
    assert not grant.allows("repository", "team/other", "pull")
    header = jwt.get_unverified_header(_issue(ring))
    assert header["alg"] == "ES256" and header["kid"] == ring.signing_key().kid
    claims = jwt.decode(_issue(ring), options={"verify_signature": False})
    assert set(claims) >= {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}


def test_rotation_without_restart(ring: KeyRing) -> None:
    old_token = _issue(ring)
    old_kid = ring.signing_key().kid
    time.sleep(0.01)  # distinct file mtimes; not synchronisation
    generate_key(ring.directory)
    assert ring.signing_key().kid != old_kid
    # tokens signed by the previous key stay valid until it is removed
    assert tokens.verify(old_token, ring, issuer=ISS, audience=AUD).subject == "alice"
    old_files = [
        p for p in ring.directory.glob("*.pem") if p.name.split("-", 1)[1].startswith(old_kid[:12])
    ]
    assert len(old_files) == 1
    old_files[0].unlink()
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(old_token, ring, issuer=ISS, audience=AUD)


@pytest.mark.parametrize(
    ("field", "value"), [("aud", "someone-else"), ("iss", "evil"), ("exp", 1), ("nbf", 2**40)]
)
def test_wrong_claims(ring: KeyRing, field: str, value: object) -> None:
    key = ring.signing_key()
    claims = jwt.decode(_issue(ring), options={"verify_signature": False})
    claims[field] = value
    forged = jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(forged, ring, issuer=ISS, audience=AUD)


def test_alg_none_is_refused(ring: KeyRing) -> None:
    claims = jwt.decode(_issue(ring), options={"verify_signature": False})
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': ring.signing_key().kid})}.{_b64(claims)}."
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(forged, ring, issuer=ISS, audience=AUD)


def test_hmac_with_public_key_is_refused(ring: KeyRing) -> None:
    claims = jwt.decode(_issue(ring), options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "JWT", "kid": ring.signing_key().kid}
    forged = jwt.encode(
        claims, "a-guessed-secret-of-32-characters!", algorithm="HS256", headers=header
    )
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(forged, ring, issuer=ISS, audience=AUD)


def test_wrong_key_is_refused(ring: KeyRing) -> None:
    claims = jwt.decode(_issue(ring), options={"verify_signature": False})
    other = ec.generate_private_key(ec.SECP256R1())
    for kid in (ring.signing_key().kid, thumbprint(other.public_key())):
        forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": kid})
        with pytest.raises(tokens.InvalidToken):
            tokens.verify(forged, ring, issuer=ISS, audience=AUD)


def test_tampered_access_is_refused(ring: KeyRing) -> None:
    head, payload, signature = _issue(ring).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["access"][0]["name"] = "someone/else"
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(f"{head}.{_b64(claims)}.{signature}", ring, issuer=ISS, audience=AUD)


@pytest.mark.parametrize("garbage", ["", "a.b.c", "....", "x" * 5000, "eyJhbGciOiJFUzI1NiJ9.e30."])
def test_garbage_tokens(ring: KeyRing, garbage: str) -> None:
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(garbage, ring, issuer=ISS, audience=AUD)


def test_scope_grammar() -> None:
    assert parse_scope("repository:team/app:pull,push") == Scope(
        "repository", "team/app", frozenset({"pull", "push"})
    )
    assert parse_scope("repository:localhost:5000/team/app:pull") == Scope(
        "repository", "localhost:5000/team/app", frozenset({"pull"})
    )
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", frozenset({"*"}))
    assert parse_scope("repository(plugin):x:pull") is not None
    for bad in ("", "repository", "repository:x", "Repo:x:pull", "repository::pull", "a:b:PUSH"):
        assert parse_scope(bad) is None
    merged = parse_scopes(["repository:a:pull repository:a:push", "repository:b:pull", "junk"])
    assert {str(s) for s in merged} == {"repository:a:pull,push", "repository:b:pull"}
