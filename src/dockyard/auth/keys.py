"""Token signing keys: PEM files in a directory, re-read when it changes.

The newest key signs; every key in the directory verifies, so rotation is: add a key
(``dockyard keys rotate``), let old tokens expire, remove the old file. No restart.
Keys are identified by their RFC 7638 JWK thumbprint (``kid``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def public_jwk(key: PublicKeyTypes) -> dict[str, str]:
    """The public JWK members RFC 7638 hashes, for EC P-256 and RSA keys."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(size, "big")),
            "y": _b64(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {
            "e": _b64(_int_bytes(rsa_numbers.e)),
            "kty": "RSA",
            "n": _b64(_int_bytes(rsa_numbers.n)),
        }
    raise ValueError(f"unsupported key type {type(key).__name__}")


def thumbprint(key: PublicKeyTypes) -> str:
    canonical = json.dumps(public_jwk(key), separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def algorithm_for(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    raise ValueError(f"unsupported key type {type(key).__name__}")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: Any
    public: Any
    mtime: float


def generate_key(directory: Path) -> Path:
    """Write a new EC P-256 private key (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / f"{int(time.time() * 1000)}-{thumbprint(key.public_key())[:12]}.pem"
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(temporary, path)
    return path


class KeyRing:
    def __init__(self, directory: Path, reload_interval: float = 1.0) -> None:
        self.directory = directory
        self._reload_interval = reload_interval
        self._checked = 0.0
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self._keys: dict[str, SigningKey] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._reload_interval and self._keys:
            return
        self._checked = now
        if not self.directory.is_dir() or not any(self.directory.glob("*.pem")):
            generate_key(self.directory)
        paths = sorted(self.directory.glob("*.pem"))
        stamp = tuple((p.name, p.stat().st_mtime) for p in paths)
        if stamp == self._stamp and self._keys:
            return
        keys: dict[str, SigningKey] = {}
        for path in paths:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            public = private.public_key()
            kid = thumbprint(public)
            keys[kid] = SigningKey(
                kid, algorithm_for(private), private, public, path.stat().st_mtime
            )
        self._keys = keys
        self._stamp = stamp

    def signing_key(self) -> SigningKey:
        self._refresh()
        return max(self._keys.values(), key=lambda k: (k.mtime, k.kid))

    def verification_key(self, kid: str) -> SigningKey | None:
        self._refresh()
        return self._keys.get(kid)

    def jwks(self) -> dict[str, Any]:
        self._refresh()
        return {
            "keys": [
                {**public_jwk(k.public), "kid": k.kid, "alg": k.algorithm, "use": "sig"}
                for k in self._keys.values()
            ]
        }
