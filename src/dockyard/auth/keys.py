"""Token signing keys: PEM files in a directory, re-read when it changes.

The newest key signs; every key in the directory verifies, so rotation is: add a key
(``dockyard keys rotate``), let old tokens expire, remove the old file. No restart.
Keys are identified by their RFC 7638 JWK thumbprint (``kid``). A PEM certificate (chain)
beside a key, ``<same stem>.crt``, is sent with the tokens it signs as their ``x5c`` header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

log = logging.getLogger("dockyard.auth")

# JWK curve names (RFC 7518) of the elliptic curves tokens may be signed with
_CURVES: dict[str, tuple[str, str]] = {
    # cryptography's curve name -> (JWK "crv", the one ECDSA algorithm for that curve)
    "secp256r1": ("P-256", "ES256"),
    "secp384r1": ("P-384", "ES384"),
    "secp521r1": ("P-521", "ES512"),
}
_JWK_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def public_jwk(key: PublicKeyTypes) -> dict[str, str]:
    """The public JWK members RFC 7638 hashes, for EC (P-256/384/521), RSA and Ed25519 keys."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "crv": _CURVES[key.curve.name][0],
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
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}  # RFC 8037
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _b64decode(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("JWK members must be base64url strings")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _b64int(value: Any) -> int:
    return int.from_bytes(_b64decode(value), "big")


def key_from_jwk(jwk: Mapping[str, Any]) -> PublicKeyTypes:
    """The public key a JWK describes (EC, RSA or Ed25519; private members are ignored).

    Symmetric (``oct``) keys and anything else are refused: tokens are only ever verified
    with public keys."""
    kty = jwk.get("kty")
    if kty == "EC":
        curve = _JWK_CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise ValueError(f"unsupported JWK curve {str(jwk.get('crv'))[:20]!r}")
        x, y = _b64int(jwk.get("x")), _b64int(jwk.get("y"))
        numbers = ec.EllipticCurvePublicNumbers(x, y, curve())
        return numbers.public_key()  # refuses points not on the curve
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_b64int(jwk.get("e")), _b64int(jwk.get("n"))).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_b64decode(jwk.get("x")))
    raise ValueError(f"unsupported JWK key type {str(kty)[:20]!r}")


def thumbprint(key: PublicKeyTypes) -> str:
    canonical = json.dumps(public_jwk(key), separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def libtrust_kid(key: PublicKeyTypes) -> str:
    """The key ID Distribution-era token servers (docker/libtrust) use: the first 240 bits
    of the SHA-256 of the DER SubjectPublicKeyInfo, base32, in 12 groups of 4 joined by ':'."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(text[i : i + 4] for i in range(0, 48, 4))


def algorithms_for(key: PublicKeyTypes | PrivateKeyTypes) -> frozenset[str]:
    """Every JWS algorithm that fits the key: ECDSA with the key's own curve, RSA (PKCS#1
    v1.5 or PSS) for RSA keys of at least 2048 bits, EdDSA for Ed25519. Never HMAC."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        fit = _CURVES.get(key.curve.name)
        return frozenset({fit[1]}) if fit else frozenset()
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return RSA_ALGORITHMS if key.key_size >= MIN_RSA_BITS else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return frozenset({"EdDSA"})
    return frozenset()


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, spki) == b.public_bytes(
        serialization.Encoding.DER, spki
    )


def x5c_of(chain: list[x509.Certificate]) -> tuple[str, ...]:
    """The ``x5c`` header value: each certificate's DER, standard base64 (RFC 7515 4.1.6)."""
    return tuple(
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode() for cert in chain
    )


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
    x5c: tuple[str, ...] | None = None  # from ``<stem>.crt`` beside the key, leaf first

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset({self.algorithm})


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


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed between listing and looking
        return -1.0


class KeyRing:
    def __init__(self, directory: Path, reload_interval: float = 1.0) -> None:
        self.directory = directory
        self._reload_interval = reload_interval
        self._checked = 0.0
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self._keys: dict[str, SigningKey] = {}
        self._generation = 0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._reload_interval and self._keys:
            return
        self._checked = now
        if not self.directory.is_dir() or not any(self.directory.glob("*.pem")):
            generate_key(self.directory)
        paths = sorted(self.directory.glob("*.pem"))
        certificates = sorted(self.directory.glob("*.crt"))
        stamp = tuple((p.name, _mtime(p)) for p in [*paths, *certificates])
        if stamp == self._stamp and self._keys:
            return
        keys: dict[str, SigningKey] = {}
        for path in paths:
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError, TypeError) as exc:
                # one unreadable or half-written file must not stop the registry
                log.warning("skipping key file %s: %s", path, exc)
                continue
            public = private.public_key()
            kid = thumbprint(public)
            keys[kid] = SigningKey(
                kid,
                algorithm_for(private),
                private,
                public,
                _mtime(path),
                _certificate_chain(path.with_suffix(".crt"), public),
            )
        if not keys and not self._keys:
            raise RuntimeError(f"no usable signing key in {self.directory}")
        if keys:
            self._keys = keys
        self._stamp = stamp
        self._generation += 1

    def signing_key(self) -> SigningKey:
        self._refresh()
        return max(self._keys.values(), key=lambda k: (k.mtime, k.kid))

    def verification_key(self, kid: str) -> SigningKey | None:
        self._refresh()
        return self._keys.get(kid)

    def key_for(self, header: Mapping[str, Any]) -> SigningKey | None:
        """Our own tokens are verified by ``kid`` alone (their ``x5c`` is for others)."""
        kid = header.get("kid")
        return self.verification_key(kid) if isinstance(kid, str) else None

    def generation(self) -> int:
        """Changes whenever the set of keys does (for caches of verified tokens)."""
        self._refresh()
        return self._generation

    def jwks(self) -> dict[str, Any]:
        self._refresh()
        keys = []
        for k in self._keys.values():
            jwk: dict[str, Any] = {**public_jwk(k.public), "kid": k.kid, "alg": k.algorithm}
            jwk["use"] = "sig"
            if k.x5c:
                jwk["x5c"] = list(k.x5c)
            keys.append(jwk)
        return {"keys": keys}


def _certificate_chain(path: Path, public: PublicKeyTypes) -> tuple[str, ...] | None:
    """The ``x5c`` of the PEM chain in ``path`` (leaf first), if it is there and its leaf
    certifies ``public``; otherwise None (with a warning when the file is unusable)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read certificate %s: %s", path, exc)
        return None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        log.warning("ignoring certificate %s: %s", path, exc)
        return None
    if not same_public_key(chain[0].public_key(), public):
        log.warning("ignoring certificate %s: it certifies another key", path)
        return None
    if chain[0].not_valid_after_utc < datetime.now(UTC):
        log.warning("certificate %s has expired; tokens still carry it in x5c", path)
    return x5c_of(chain)
