"""Trusting an external token issuer (``token_issuer_mode: external``).

Dockyard then sits behind an existing Docker token server, the way Distribution's
``auth: token:`` does: it issues no tokens itself, verifies the tokens that server signs
against configured public keys, certificates, a JWKS file or root certificates, and decides
every repository request from the token's ``access`` claim alone: the token's subject is not
looked up among local accounts, and local accounts and policy open no repository.

How a token's key is found, first match of the header wins (as in Distribution):

- ``x5c``: the leaf certificate's key, if the leaf is itself a trusted certificate or key,
  or its chain leads to one of ``trusted_root_certificates``; every certificate on the way
  must be within its validity period, every issuer a CA allowed to sign certificates.
- ``jwk``: the trusted key with the same RFC 7638 thumbprint (the header's copy is only a
  name; the configured key verifies).
- ``kid``: the trusted key whose RFC 7638 thumbprint, libtrust fingerprint
  (``ABCD:EFGH:...``) or JWKS ``kid`` it is.

Files are re-read when they change (checked at most once a second), so keys rotate
without a restart. A file that disappears trusts nothing; one that cannot be parsed (being
rewritten, say) keeps what it trusted before, with a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from dockyard.auth import tokens
from dockyard.auth.identities import ANONYMOUS, Identity
from dockyard.auth.keys import (
    algorithms_for,
    key_from_jwk,
    libtrust_kid,
    same_public_key,
    thumbprint,
)
from dockyard.auth.scopes import Scope
from dockyard.auth.service import AuthService, AuthSettings, Caller
from dockyard.oci.errors import NotFound, Unauthorized

if TYPE_CHECKING:
    from dockyard.http.messages import Request, Response
    from dockyard.registry.context import Context

log = logging.getLogger("dockyard.auth")

MAX_CHAIN = 8  # certificates in an x5c header
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.+?\r?\n-----END \1-----", re.DOTALL)


class TrustError(ValueError):
    """A trust file is missing or unusable (at start-up, where that is fatal)."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key tokens may be signed with, and what it may sign them with."""

    public: Any
    algorithms: frozenset[str]
    source: str  # the file it came from, for messages
    kid: str | None = None  # the JWKS ``kid``, when it had one
    not_before: datetime | None = None  # when the key came from a certificate
    not_after: datetime | None = None

    def check_time(self, now: datetime) -> None:
        if self.not_after is not None and now > self.not_after:
            raise tokens.InvalidToken(f"the certificate of the signing key expired ({self.source})")
        if self.not_before is not None and now < self.not_before:
            raise tokens.InvalidToken(
                f"the certificate of the signing key is not yet valid ({self.source})"
            )


@dataclass(frozen=True)
class _Loaded:
    keys: tuple[TrustedKey, ...] = ()
    roots: tuple[x509.Certificate, ...] = ()


# loading the files


def _key_of(
    public: PublicKeyTypes, allowed: frozenset[str], source: str, **more: Any
) -> TrustedKey:
    fitting = algorithms_for(public) & allowed
    if not fitting:
        raise TrustError(
            f"{source}: a {type(public).__name__} cannot sign with any accepted algorithm "
            f"({', '.join(sorted(allowed))}); RSA keys need at least 2048 bits"
        )
    thumbprint(public)  # refuses key types a JWK cannot describe
    return TrustedKey(public, fitting, source, **more)


def _key_of_certificate(cert: x509.Certificate, allowed: frozenset[str], source: str) -> TrustedKey:
    if cert.not_valid_after_utc < datetime.now(UTC):
        log.warning(
            "%s: certificate %s has expired: tokens its key signs are refused",
            source,
            cert.subject.rfc4514_string(),
        )
    return _key_of(
        cert.public_key(),
        allowed,
        source,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def load_key_file(path: Path, allowed: frozenset[str]) -> _Loaded:
    """PEM public keys (``PUBLIC KEY``, ``RSA PUBLIC KEY``) and certificates, any number."""
    data = path.read_bytes()
    keys: list[TrustedKey] = []
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise TrustError(f"{path}: no PEM public key or certificate in it")
    for block in blocks:
        kind = block.group(1).decode()
        try:
            if kind == "CERTIFICATE":
                cert = x509.load_pem_x509_certificate(block.group(0))
                keys.append(_key_of_certificate(cert, allowed, str(path)))
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                public = serialization.load_pem_public_key(block.group(0))
                keys.append(_key_of(public, allowed, str(path)))
            elif "PRIVATE KEY" in kind:
                raise TrustError(
                    f"{path} holds a private key: give Dockyard only the token server's "
                    "public key or certificate"
                )
            # other blocks (parameters, say) are not keys and are skipped
        except (ValueError, UnsupportedAlgorithm) as exc:
            if isinstance(exc, TrustError):
                raise
            raise TrustError(f"{path}: unreadable {kind}: {exc}") from None
    return _Loaded(keys=tuple(keys))


def load_jwks(path: Path, allowed: frozenset[str]) -> _Loaded:
    """A JWK Set (``{"keys": [...]}``) or a single JWK; keys for other uses are skipped."""
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrustError(f"{path}: not JSON: {exc}") from None
    if isinstance(document, dict) and "kty" in document:
        document = {"keys": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TrustError(f'{path}: a JWKS is an object with a "keys" list')
    keys: list[TrustedKey] = []
    for index, jwk in enumerate(document["keys"]):
        where = f"{path} key {index}"
        if not isinstance(jwk, dict):
            raise TrustError(f"{where}: not an object")
        if jwk.get("use", "sig") != "sig":
            continue
        operations = jwk.get("key_ops")
        if isinstance(operations, list) and "verify" not in operations:
            continue
        try:
            public = key_from_jwk(jwk)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise TrustError(f"{where}: {exc}") from None
        kid = jwk.get("kid")
        key = _key_of(public, allowed, where, kid=kid if isinstance(kid, str) else None)
        if isinstance(jwk.get("alg"), str):  # the key is for that one algorithm only
            fitting = key.algorithms & {jwk["alg"]}
            if not fitting:
                raise TrustError(f"{where}: its alg {jwk['alg'][:20]!r} is not accepted")
            key = TrustedKey(public, fitting, where, key.kid)
        keys.append(key)
    return _Loaded(keys=tuple(keys))


def load_roots(path: Path, allowed: frozenset[str]) -> _Loaded:
    """A PEM bundle of root certificates; their own keys are trusted too (Distribution's
    ``rootcertbundle`` does the same)."""
    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise TrustError(f"{path}: not a PEM certificate bundle: {exc}") from None
    keys = []
    for cert in roots:
        try:
            keys.append(_key_of_certificate(cert, allowed, str(path)))
        except TrustError as exc:
            log.warning("root certificate %s: its key cannot verify tokens: %s", cert.subject, exc)
    return _Loaded(keys=tuple(keys), roots=tuple(roots))


# x5c


def _fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _check_time(cert: x509.Certificate, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise tokens.InvalidToken(f"certificate {cert.subject.rfc4514_string()[:100]} has expired")
    if now < cert.not_valid_before_utc:
        raise tokens.InvalidToken(
            f"certificate {cert.subject.rfc4514_string()[:100]} is not yet valid"
        )


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate, below: int) -> None:
    """``issuer`` is a CA that signed ``cert``, with ``below`` CA certificates under it."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise tokens.InvalidToken("an x5c certificate is issued by a certificate that is no CA")
    if constraints.path_length is not None and constraints.path_length < below:
        raise tokens.InvalidToken("the x5c chain is longer than its CA allows")
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise tokens.InvalidToken("an x5c certificate's issuer may not sign certificates")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise tokens.InvalidToken("the x5c chain has a bad signature or issuer") from None


def parse_x5c(value: Any) -> list[x509.Certificate]:
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_CHAIN
        or not all(isinstance(entry, str) for entry in value)
    ):
        raise tokens.InvalidToken("malformed x5c header")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in value]
    except (ValueError, binascii.Error):
        raise tokens.InvalidToken("malformed certificate in the x5c header") from None


def verify_chain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: datetime
) -> None:
    """Accept a chain (leaf first) that reaches one of ``roots``, or raise InvalidToken."""
    leaf_usage = _extension(chain[0], x509.KeyUsage)
    if leaf_usage is not None and not leaf_usage.digital_signature:
        raise tokens.InvalidToken("the x5c leaf certificate may not sign")
    trusted = {_fingerprint(root) for root in roots}
    for depth, cert in enumerate(chain):
        _check_time(cert, now)
        if _fingerprint(cert) in trusted:
            return
        if depth + 1 < len(chain):
            _check_issued(cert, chain[depth + 1], depth)
            continue
        for root in roots:  # the chain stops below its root: find it among ours
            if root.subject != cert.issuer:
                continue
            try:
                _check_issued(cert, root, depth)
                _check_time(root, now)
            except tokens.InvalidToken:
                continue
            return
    raise tokens.InvalidToken("the x5c certificate chain does not lead to a trusted root")


# the trust store


class TrustStore:
    """The external issuer's keys, certificates and roots (a :class:`tokens.HeaderKeys`)."""

    def __init__(
        self,
        *,
        keys: Sequence[Path] = (),
        jwks: Path | None = None,
        roots: Path | None = None,
        algorithms: Iterable[str] = tokens.EXTERNAL_ALGORITHMS,
        reload_interval: float = 1.0,
    ) -> None:
        self.algorithms = frozenset(algorithms) & tokens.EXTERNAL_ALGORITHMS
        if not self.algorithms:
            raise TrustError("no accepted token signing algorithm")
        self._sources = [(path, load_key_file) for path in keys]
        if jwks is not None:
            self._sources.append((jwks, load_jwks))
        if roots is not None:
            self._sources.append((roots, load_roots))
        if not self._sources:
            raise TrustError(
                "an external token issuer needs trusted_keys, trusted_jwks or "
                "trusted_root_certificates"
            )
        self._reload_interval = reload_interval
        self._checked = -math.inf
        self._files: dict[Path, tuple[tuple[int, int, int] | None, _Loaded]] = {}
        self._generation = 0
        self._by_kid: dict[str, TrustedKey] = {}
        self._by_thumbprint: dict[str, TrustedKey] = {}
        self._roots: tuple[x509.Certificate, ...] = ()
        self.refresh(strict=True)

    @property
    def policy(self) -> tokens.Policy:
        return tokens.Policy(self.algorithms, tokens.EXTERNAL.required, own_claims=False)

    def refresh(self, strict: bool = False) -> None:
        """Re-read the files that changed. ``strict`` (at start-up): any problem raises."""
        now = time.monotonic()
        if not strict and now - self._checked < self._reload_interval:
            return
        self._checked = now
        changed = False
        for path, load in self._sources:
            try:
                info = path.stat()
                stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
            except OSError as exc:
                if strict:
                    raise TrustError(f"cannot read {path}: {exc.strerror}") from None
                stamp = None
            previous = self._files.get(path)
            if previous is not None and previous[0] == stamp:
                continue
            if stamp is None:
                log.warning("trusted file %s is gone: it trusts nothing now", path)
                loaded = _Loaded()
            else:
                try:
                    loaded = load(path, self.algorithms)
                except (TrustError, OSError) as exc:
                    if strict:
                        raise TrustError(str(exc)) from None
                    log.warning("cannot reload %s (keeping what it trusted): %s", path, exc)
                    # remember the stamp so a broken file is not re-parsed every second
                    self._files[path] = (stamp, previous[1] if previous else _Loaded())
                    continue
            self._files[path] = (stamp, loaded)
            changed = True
        if changed:
            self._index()
        if strict and not self._by_kid and not self._roots:
            raise TrustError("the trusted files hold no usable key or certificate")

    def _index(self) -> None:
        by_kid: dict[str, TrustedKey] = {}
        by_thumbprint: dict[str, TrustedKey] = {}
        roots: list[x509.Certificate] = []
        for _, loaded in self._files.values():
            roots.extend(loaded.roots)
            for key in loaded.keys:
                print_ = thumbprint(key.public)
                by_thumbprint.setdefault(print_, key)
                names = [print_, libtrust_kid(key.public)]
                if key.kid:
                    names.insert(0, key.kid)
                for name in names:
                    first = by_kid.setdefault(name, key)
                    if not same_public_key(first.public, key.public):
                        log.warning("two trusted keys share the kid %r; the first is used", name)
        self._by_kid, self._by_thumbprint, self._roots = by_kid, by_thumbprint, tuple(roots)
        self._generation += 1

    def generation(self) -> int:
        self.refresh()
        return self._generation

    def key_for(self, header: Mapping[str, Any]) -> TrustedKey | None:
        self.refresh()
        now = datetime.now(UTC)
        if "x5c" in header:
            return self._key_of_chain(parse_x5c(header["x5c"]), now)
        if "jwk" in header:
            jwk = header["jwk"]
            if not isinstance(jwk, dict):
                raise tokens.InvalidToken("malformed jwk header")
            try:
                named = thumbprint(key_from_jwk(jwk))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise tokens.InvalidToken("malformed jwk header") from None
            key = self._by_thumbprint.get(named)
            if key is None:
                raise tokens.InvalidToken("the token's jwk is not a trusted key")
            key.check_time(now)
            return key
        kid = header.get("kid")
        if not isinstance(kid, str):
            return None
        key = self._by_kid.get(kid)
        if key is not None:
            key.check_time(now)
        return key

    def _key_of_chain(self, chain: list[x509.Certificate], now: datetime) -> TrustedKey:
        leaf = chain[0]
        public = leaf.public_key()
        try:
            direct = self._by_thumbprint.get(thumbprint(public))
        except ValueError:
            raise tokens.InvalidToken("the x5c leaf has a key type tokens cannot use") from None
        if direct is not None:  # the leaf's key is trusted as it is
            _check_time(leaf, now)
            direct.check_time(now)
            return direct
        verify_chain(chain, self._roots, now)
        return TrustedKey(public, algorithms_for(public) & self.algorithms, "x5c")


# the auth service


class ExternalAuthService(AuthService):
    """Bearer tokens of the external issuer, and nothing else, open repositories.

    Local accounts (Basic credentials) still reach the management API, and a local
    administrator still sees the whole catalog; they get no repository access."""

    def __init__(
        self, ctx: Context, settings: AuthSettings, keys_dir: Path, trust: TrustStore
    ) -> None:
        if not settings.realm:
            raise TrustError("an external token issuer needs token_realm (its token URL)")
        super().__init__(ctx, settings, keys_dir, verifier=trust, policy=trust.policy)
        self.trust = trust

    def verify(self, token: str) -> tokens.AccessToken:
        try:
            return super().verify(token)
        except Unauthorized as exc:
            # the client only hears "invalid token"; the operator can learn why
            reason = exc.detail.get("reason") if isinstance(exc.detail, dict) else None
            log.debug("external token refused: %s", reason)
            raise

    async def identify(self, authorization: str | None, client: str) -> Caller:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            # none, or Basic credentials of a local account: those serve the management
            # API only, as check() opens repositories to tokens alone
            return await super().identify(authorization, client)
        grant = self.verify(value.strip())
        # the subject is the issuer's name for the caller: for logs, limits and the audit
        # trail; it is never looked up among local accounts
        identity = ANONYMOUS
        if grant.subject:
            identity = Identity("user", grant.subject, extra={"issuer": self.settings.issuer})
        return Caller(identity, grant)

    async def current(self, caller: Caller) -> Identity | None:
        """No local identity stands behind an external token."""
        return None if caller.token is not None else caller.identity

    async def actions(self, identity: Identity, repository: str) -> frozenset[str]:
        """Local policy grants nothing here: the token's ``access`` claim decides."""
        return frozenset()

    async def grant(self, identity: Identity, requested: list[Scope]) -> list[Scope]:
        return []

    def issue(self, identity: Identity, granted: list[Scope]) -> tokens.IssuedToken:
        raise NotFound(self.no_tokens_message())

    async def check(
        self, caller: Caller, repository: str, needed: frozenset[str], realm: str
    ) -> None:
        """The token's ``access`` claim decides: without the actions, 401 with a challenge
        (``insufficient_scope`` when a valid token lacks them) sending the client to the
        external token server."""
        scope = Scope("repository", repository, needed)
        if caller.token is None:
            raise self.challenge(realm, scope)
        if all(caller.token.allows("repository", repository, a) for a in needed):
            return
        raise self.challenge(realm, scope, "insufficient_scope", "token lacks scope")

    def no_tokens_message(self) -> str:
        return (
            "this registry issues no tokens: it trusts the token server at "
            f"{self.settings.realm}; ask that server for a token"
        )


class NoTokenEndpoint:
    """``/auth/token`` when tokens come from elsewhere: 404, saying where they come from."""

    def __init__(self, auth: ExternalAuthService) -> None:
        self.auth = auth

    async def get(self, request: Request) -> Response:
        raise NotFound(self.auth.no_tokens_message(), detail={"realm": self.auth.settings.realm})

    async def post(self, request: Request) -> Response:
        return await self.get(request)
