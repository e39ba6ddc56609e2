"""Forged access tokens: what an attacker can build (no key, or a key of their own) and, for
claim checks in isolation, tokens signed with the registry's real key read from its data
directory (a test runs on the registry's machine; an attacker does not)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def ec_public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def rfc7638_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """The JWK thumbprint of an EC P-256 public key (RFC 7638), computed here on its own."""
    canonical = json.dumps(ec_public_jwk(key), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class ServerKey:
    kid: str
    private: ec.EllipticCurvePrivateKey
    path: Path

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm="ES256", headers={"kid": self.kid, **header}
        )


def server_key(keys_dir: Path, kid: str) -> ServerKey:
    """The registry's signing key whose RFC 7638 thumbprint is ``kid``."""
    for path in sorted(keys_dir.glob("*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if (
            isinstance(private, ec.EllipticCurvePrivateKey)
            and rfc7638_thumbprint(private.public_key()) == kid
        ):
            return ServerKey(kid, private, path)
    raise AssertionError(f"no key in {keys_dir} has the thumbprint {kid}")


def attacker_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def attacker_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """``alg: none`` style: header and claims, no signature."""
    return f"{b64url_json(header)}.{b64url_json(claims)}."


def hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """HMAC-SHA256 over the token with ``secret`` (the algorithm-confusion attack uses the
    server's public key, which anyone may know, as the HMAC secret). PyJWT refuses to use
    a PEM key as an HMAC secret, so the signature is made by hand."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}."
    signing_input += b64url_json(claims)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """A genuine token's header and signature around other claims (tampering)."""
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json(claims)}.{signature}"


def fresh_times(claims: dict[str, Any], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {**claims, "iat": now, "nbf": now - 1, "exp": now + 300, **changes}
