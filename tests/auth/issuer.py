"""A stand-in for an external Docker token server: keys, certificates (made with
``cryptography``) and the tokens it signs, in the shape Distribution-era servers use."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from dockyard.auth.keys import public_jwk, thumbprint

ISSUER = "auth.example.test"
SERVICE = "registry.example.test"
REALM = "https://auth.example.test/token"


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def jwks(*entries: tuple[Any, dict[str, Any]]) -> str:
    """A JWKS document: (private or public key, extra members such as kid, alg)."""
    keys = []
    for key, extra in entries:
        public = key.public_key() if hasattr(key, "public_key") else key
        keys.append({**public_jwk(public), "use": "sig", **extra})
    return json.dumps({"keys": keys})


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any


def certificate(
    subject: str,
    key: Any,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    days: tuple[int, int] = (-1, 30),
) -> Issued:
    """A certificate for ``key``, self-signed or issued by ``issuer``; ``days``: validity
    from/to, relative to now."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def claims(
    access: list[dict[str, Any]] | None = None,
    *,
    subject: str = "alice",
    issuer: str = ISSUER,
    audience: str | list[str] = SERVICE,
    ttl: int = 300,
    **more: Any,
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": now + ttl,
        "nbf": now - 1,
        "iat": now,
        "jti": secrets.token_urlsafe(12),
        "access": access or [],
        **more,
    }


def repository(name: str, *actions: str) -> dict[str, Any]:
    return {"type": "repository", "name": name, "actions": list(actions)}


def mint(
    key: Any,
    body: dict[str, Any],
    *,
    algorithm: str = "ES256",
    kid: str | None = "thumbprint",
    header: dict[str, Any] | None = None,
) -> str:
    """A token signed with ``key``; ``kid="thumbprint"`` names the key by RFC 7638."""
    headers: dict[str, Any] = {"typ": "JWT", **(header or {})}
    if kid == "thumbprint":
        headers["kid"] = thumbprint(key.public_key())
    elif kid is not None:
        headers["kid"] = kid
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
