"""Trusting an external token issuer: which keys verify, how they are named, what fails."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from dockyard.auth import tokens
from dockyard.auth.external import ExternalAuthService, TrustError, TrustStore
from dockyard.auth.keys import KeyRing, key_from_jwk, libtrust_kid, public_jwk, thumbprint
from dockyard.auth.service import AuthSettings
from dockyard.config import Settings
from dockyard.oci.errors import NotFound, Unauthorized
from tests.auth import issuer as ext
from tests.auth.issuer import ISSUER, REALM, SERVICE


def verify(token: str, store: TrustStore, **kwargs: Any) -> tokens.AccessToken:
    return tokens.verify(
        token,
        store,
        issuer=kwargs.get("issuer", ISSUER),
        audience=kwargs.get("audience", SERVICE),
        policy=store.policy,
    )


def pull(name: str = "team/app") -> dict[str, Any]:
    return ext.claims([ext.repository(name, "pull")])


@pytest.fixture
def key() -> Any:
    return ext.ec_key()


@pytest.fixture
def pem(tmp_path: Path, key: Any) -> Path:
    return ext.write(tmp_path / "issuer.pub", ext.public_pem(key))


@pytest.fixture
def store(pem: Path) -> TrustStore:
    return TrustStore(keys=[pem], reload_interval=0)


# key identifiers


def test_libtrust_kid_matches_the_specification_example() -> None:
    # docker-token-auth/jwt.md: the example ES256 key and its libtrust key ID
    example = {
        "kty": "EC",
        "crv": "P-256",
        "x": "m7zUpx3b-zmVE5cymSs64POG9QcyEpJaYCD82-549_Q",
        "y": "dU3biz8sZ_8GPB-odm8Wxz3lNDr1xcAQQPQaOcr1fmc",
    }
    public = key_from_jwk(example)
    assert libtrust_kid(public) == "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"


@pytest.mark.parametrize("naming", ["thumbprint", "libtrust"])
def test_pem_key_by_thumbprint_or_libtrust_kid(store: TrustStore, key: Any, naming: str) -> None:
    kid = thumbprint(key.public_key()) if naming == "thumbprint" else libtrust_kid(key.public_key())
    grant = verify(ext.mint(key, pull(), kid=kid), store)
    assert grant.subject == "alice"
    assert grant.allows("repository", "team/app", "pull")
    assert not grant.allows("repository", "team/app", "push")


def test_jwks_kid_and_alg(tmp_path: Path) -> None:
    ec_key, rsa_key = ext.ec_key(), ext.rsa_key()
    path = ext.write(
        tmp_path / "jwks.json",
        ext.jwks((ec_key, {"kid": "signing-2024"}), (rsa_key, {"kid": "rsa-1", "alg": "RS256"})),
    )
    store = TrustStore(jwks=path, reload_interval=0)
    assert verify(ext.mint(ec_key, pull(), kid="signing-2024"), store).subject == "alice"
    # the thumbprint names a JWKS key too
    assert verify(ext.mint(ec_key, pull()), store).subject == "alice"
    token = ext.mint(rsa_key, pull(), algorithm="RS256", kid="rsa-1")
    assert verify(token, store).subject == "alice"
    # the JWKS says RS256 for that key: PS256 (which would fit an RSA key) is refused
    with pytest.raises(tokens.InvalidToken, match="does not match"):
        verify(ext.mint(rsa_key, pull(), algorithm="PS256", kid="rsa-1"), store)


def test_rsa_algorithms_that_fit(tmp_path: Path) -> None:
    key = ext.rsa_key()
    store = TrustStore(keys=[ext.write(tmp_path / "k.pem", ext.public_pem(key))])
    for algorithm in ("RS256", "RS384", "RS512", "PS256"):
        assert verify(ext.mint(key, pull(), algorithm=algorithm), store).subject == "alice"
    with pytest.raises(tokens.InvalidToken, match="does not match"):
        verify(ext.mint(ext.ec_key(), pull(), kid=thumbprint(key.public_key())), store)


def test_trusted_algorithms_narrow_the_list(tmp_path: Path) -> None:
    key = ext.rsa_key()
    pem = ext.write(tmp_path / "k.pem", ext.public_pem(key))
    store = TrustStore(keys=[pem], algorithms=["RS256"])
    assert verify(ext.mint(key, pull(), algorithm="RS256"), store)
    with pytest.raises(tokens.InvalidToken, match="not accepted"):
        verify(ext.mint(key, pull(), algorithm="PS256"), store)


def test_jwk_header(store: TrustStore, key: Any) -> None:
    jwk = public_jwk(key.public_key())
    assert verify(ext.mint(key, pull(), kid=None, header={"jwk": jwk}), store).subject == "alice"
    # a token carrying its own (untrusted) key in jwk is refused
    intruder = ext.ec_key()
    forged = ext.mint(intruder, pull(), kid=None, header={"jwk": public_jwk(intruder.public_key())})
    with pytest.raises(tokens.InvalidToken, match="not a trusted key"):
        verify(forged, store)
    # naming the trusted key in jwk but signing with another one fails on the signature
    with pytest.raises(tokens.InvalidToken, match="token rejected"):
        verify(ext.mint(intruder, pull(), kid=None, header={"jwk": jwk}), store)


# refusals


def test_unknown_kid_and_no_key_at_all(store: TrustStore, key: Any) -> None:
    other = ext.ec_key()
    for token in (
        ext.mint(other, pull()),  # its own thumbprint: not trusted
        ext.mint(other, pull(), kid=libtrust_kid(other.public_key())),
        ext.mint(key, pull(), kid="no-such-key"),
        ext.mint(key, pull(), kid=None),  # no kid, jwk or x5c
    ):
        with pytest.raises(tokens.InvalidToken, match="unknown key"):
            verify(token, store)
    # another key claiming the trusted key's kid fails on the signature
    with pytest.raises(tokens.InvalidToken, match="token rejected"):
        verify(ext.mint(other, pull(), kid=thumbprint(key.public_key())), store)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"issuer": "evil.example"}, "(?i)issuer"),
        ({"audience": "another-registry"}, "(?i)audience"),
        ({"ttl": -120}, "expired"),
    ],
)
def test_wrong_iss_aud_or_expired(
    store: TrustStore, key: Any, change: dict[str, Any], reason: str
) -> None:
    body = ext.claims([ext.repository("team/app", "pull")], **change)
    with pytest.raises(tokens.InvalidToken, match=reason):
        verify(ext.mint(key, body), store)


def test_audience_list_and_optional_claims(store: TrustStore, key: Any) -> None:
    body = ext.claims([ext.repository("team/app", "pull")], audience=["other", SERVICE])
    for claim in ("nbf", "iat", "jti", "sub"):
        del body[claim]  # Distribution requires none of these
    grant = verify(ext.mint(key, body), store)
    assert grant.subject == "" and grant.allows("repository", "team/app", "pull")
    del body["exp"]
    with pytest.raises(tokens.InvalidToken, match="exp"):
        verify(ext.mint(key, body), store)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(store: TrustStore, key: Any) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": thumbprint(key.public_key())}
    with pytest.raises(tokens.InvalidToken, match="not accepted"):
        verify(f"{_b64(header)}.{_b64(pull())}.", store)


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_with_the_public_key_as_secret_is_refused(
    store: TrustStore, pem: Path, key: Any, algorithm: str
) -> None:
    # the classic confusion: HMAC "signed" with the public key the registry trusts
    secret = ext.public_pem(key)
    header = {"alg": algorithm, "typ": "JWT", "kid": thumbprint(key.public_key())}
    signing = f"{_b64(header)}.{_b64(pull())}".encode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    mac = hmac.new(secret, signing, digest[algorithm]).digest()
    forged = f"{signing.decode()}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(tokens.InvalidToken, match="not accepted"):
        verify(forged, store)
    # even an operator who lists HS256 cannot turn it on
    narrowed = TrustStore(keys=[pem], algorithms=["HS256", "ES256"])
    assert narrowed.algorithms == {"ES256"}
    with pytest.raises(tokens.InvalidToken, match="not accepted"):
        verify(forged, narrowed)


def test_critical_header_is_refused(store: TrustStore, key: Any) -> None:
    token = ext.mint(key, pull(), header={"crit": ["exp"], "exp": 1})
    with pytest.raises(tokens.InvalidToken, match="critical"):
        verify(token, store)


def test_dockyard_claim_is_not_believed(store: TrustStore, key: Any) -> None:
    body = pull()
    body["dockyard"] = {"kind": "robot", "credential": "42"}
    assert verify(ext.mint(key, body), store).extra is None


# x5c


@pytest.fixture
def pki() -> dict[str, ext.Issued]:
    root = ext.certificate("Test Root CA", ext.ec_key(), ca=True)
    intermediate = ext.certificate("Test Issuing CA", ext.ec_key(), root, ca=True, path_length=0)
    leaf = ext.certificate("token signer", ext.ec_key(), intermediate)
    return {"root": root, "intermediate": intermediate, "leaf": leaf}


@pytest.fixture
def roots_store(tmp_path: Path, pki: dict[str, ext.Issued]) -> TrustStore:
    bundle = ext.write(tmp_path / "roots.pem", ext.cert_pem(pki["root"].cert))
    return TrustStore(roots=bundle, reload_interval=0)


def _x5c_token(signer: ext.Issued, *chain: ext.Issued, kid: str | None = None) -> str:
    header = {"x5c": ext.x5c(*(c.cert for c in chain))}
    return ext.mint(signer.key, pull(), kid=kid, header=header)


def test_x5c_chain_to_a_trusted_root(roots_store: TrustStore, pki: dict[str, ext.Issued]) -> None:
    leaf, intermediate, root = pki["leaf"], pki["intermediate"], pki["root"]
    # with or without the root at the end of the chain
    for chain in ((leaf, intermediate), (leaf, intermediate, root)):
        assert verify(_x5c_token(leaf, *chain), roots_store).subject == "alice"


def test_x5c_leaf_issued_by_the_root(roots_store: TrustStore, pki: dict[str, ext.Issued]) -> None:
    leaf = ext.certificate("direct signer", ext.ec_key(), pki["root"])
    assert verify(_x5c_token(leaf, leaf), roots_store).subject == "alice"


def test_x5c_self_signed_certificate_in_the_bundle(tmp_path: Path) -> None:
    # what Distribution setups often do: the token server's own certificate is the "root"
    signer = ext.certificate("auth server", ext.ec_key())
    store = TrustStore(roots=ext.write(tmp_path / "bundle.pem", ext.cert_pem(signer.cert)))
    assert verify(_x5c_token(signer, signer), store).subject == "alice"
    # and, as Distribution adds it to the known keys, its thumbprint kid works too
    assert verify(ext.mint(signer.key, pull()), store).subject == "alice"


def test_x5c_refusals(tmp_path: Path, roots_store: TrustStore, pki: dict[str, ext.Issued]) -> None:
    leaf, intermediate, root = pki["leaf"], pki["intermediate"], pki["root"]
    cases: list[tuple[str, str]] = []
    # the intermediate is missing: the leaf does not lead to the root
    cases.append((_x5c_token(leaf, leaf), "does not lead to a trusted root"))
    # a chain to another root
    other_root = ext.certificate("Other Root", ext.ec_key(), ca=True)
    stranger = ext.certificate("stranger", ext.ec_key(), other_root)
    cases.append((_x5c_token(stranger, stranger, other_root), "does not lead to a trusted root"))
    # an expired leaf, an intermediate not yet valid
    expired = ext.certificate("expired signer", ext.ec_key(), intermediate, days=(-30, -1))
    cases.append((_x5c_token(expired, expired, intermediate), "expired"))
    early = ext.certificate("early CA", ext.ec_key(), root, ca=True, days=(1, 30))
    early_leaf = ext.certificate("early leaf", ext.ec_key(), early)
    cases.append((_x5c_token(early_leaf, early_leaf, early), "not yet valid"))
    # a leaf cannot issue certificates
    sub_leaf = ext.certificate("sub leaf", ext.ec_key(), leaf)
    cases.append((_x5c_token(sub_leaf, sub_leaf, leaf, intermediate), "no CA"))
    # the intermediate allows no CA below it
    sub_ca = ext.certificate("sub CA", ext.ec_key(), intermediate, ca=True)
    deep = ext.certificate("deep leaf", ext.ec_key(), sub_ca)
    cases.append((_x5c_token(deep, deep, sub_ca, intermediate), "longer than its CA allows"))
    # a valid chain, but the token is signed by someone else's key
    cases.append((_x5c_token(stranger, leaf, intermediate), "token rejected"))
    # garbage in the header
    bad = ext.mint(leaf.key, pull(), kid=None, header={"x5c": ["not base64!"]})
    cases.append((bad, "malformed certificate"))
    cases.append((ext.mint(leaf.key, pull(), kid=None, header={"x5c": "x"}), "malformed x5c"))
    for token, reason in cases:
        with pytest.raises(tokens.InvalidToken, match=reason):
            verify(token, roots_store)


def test_expired_trusted_root(tmp_path: Path) -> None:
    root = ext.certificate("Old Root", ext.ec_key(), ca=True, days=(-60, -1))
    leaf = ext.certificate("signer", ext.ec_key(), root)
    store = TrustStore(roots=ext.write(tmp_path / "old.pem", ext.cert_pem(root.cert)))
    with pytest.raises(tokens.InvalidToken, match="does not lead to a trusted root"):
        verify(_x5c_token(leaf, leaf), store)
    # the root's own key, named by kid, is refused as well
    with pytest.raises(tokens.InvalidToken, match="expired"):
        verify(ext.mint(root.key, pull()), store)


def test_x5c_leaf_whose_key_is_trusted_directly(tmp_path: Path) -> None:
    signer = ext.certificate("auth server", ext.ec_key())
    store = TrustStore(keys=[ext.write(tmp_path / "signer.crt", ext.cert_pem(signer.cert))])
    assert verify(_x5c_token(signer, signer), store).subject == "alice"


# files


def test_private_key_file_is_refused(tmp_path: Path) -> None:
    path = ext.write(tmp_path / "oops.pem", ext.private_pem(ext.ec_key()))
    with pytest.raises(TrustError, match="private key"):
        TrustStore(keys=[path])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello", "no PEM"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "unreadable"),
    ],
)
def test_unusable_key_files(tmp_path: Path, content: bytes, reason: str) -> None:
    with pytest.raises(TrustError, match=reason):
        TrustStore(keys=[ext.write(tmp_path / "k.pem", content)])


def test_weak_or_symmetric_keys_are_refused(tmp_path: Path) -> None:
    small = ext.write(tmp_path / "small.pem", ext.public_pem(ext.rsa_key(1024)))
    with pytest.raises(TrustError, match="2048"):
        TrustStore(keys=[small])
    oct_jwks = ext.write(
        tmp_path / "oct.json", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    )
    with pytest.raises(TrustError, match="unsupported JWK key type"):
        TrustStore(jwks=oct_jwks)
    with pytest.raises(TrustError, match="cannot read"):
        TrustStore(jwks=tmp_path / "missing.json")
    with pytest.raises(TrustError, match="needs trusted_keys"):
        TrustStore()


def test_files_are_reread_without_restart(tmp_path: Path) -> None:
    old, new = ext.ec_key(), ext.ec_key()
    path = ext.write(tmp_path / "jwks.json", ext.jwks((old, {"kid": "old"})))
    store = TrustStore(jwks=path, reload_interval=0)
    generation = store.generation()
    assert verify(ext.mint(old, pull(), kid="old"), store)
    ext.write(path, ext.jwks((new, {"kid": "new"})))
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert verify(ext.mint(new, pull(), kid="new"), store)
    assert store.generation() != generation
    with pytest.raises(tokens.InvalidToken, match="unknown key"):
        verify(ext.mint(old, pull(), kid="old"), store)
    # a half-written file keeps what the file trusted before
    ext.write(path, '{"keys": [')
    assert verify(ext.mint(new, pull(), kid="new"), store)
    # a removed file trusts nothing
    path.unlink()
    with pytest.raises(tokens.InvalidToken, match="unknown key"):
        verify(ext.mint(new, pull(), kid="new"), store)


# the service


def _service(tmp_path: Path, store: TrustStore) -> ExternalAuthService:
    settings = AuthSettings(service=SERVICE, issuer=ISSUER, realm=REALM)
    return ExternalAuthService(None, settings, tmp_path / "keys", store)  # type: ignore[arg-type]


def test_service_decides_from_the_access_claim(tmp_path: Path, key: Any) -> None:
    jwks_path = ext.write(tmp_path / "jwks.json", ext.jwks((key, {"kid": "k1"})))
    store = TrustStore(jwks=jwks_path, reload_interval=0)
    auth = _service(tmp_path, store)
    token = ext.mint(key, ext.claims([ext.repository("team/app", "pull", "push")]), kid="k1")

    async def scenario() -> None:
        caller = await auth.identify(f"Bearer {token}", "127.0.0.1:1")
        assert caller.identity.subject == "alice" and caller.token is not None
        assert await auth.current(caller) is None  # never resolved against local accounts
        await auth.check(caller, "team/app", frozenset({"pull", "push"}), "http://x/auth/token")
        with pytest.raises(Unauthorized) as denied:
            await auth.check(caller, "team/other", frozenset({"pull"}), "http://x/auth/token")
        challenge = denied.value.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{REALM}",service="{SERVICE}"')
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="repository:team/other:pull"' in challenge
        anonymous = await auth.identify(None, "127.0.0.1:1")
        with pytest.raises(Unauthorized) as challenged:
            await auth.check(anonymous, "team/app", frozenset({"pull"}), "http://x/auth/token")
        assert "error=" not in challenged.value.headers["WWW-Authenticate"]
        # the key leaves the JWKS: the cached grant goes with it
        ext.write(jwks_path, ext.jwks((ext.ec_key(), {"kid": "k2"})))
        os.utime(jwks_path, ns=(1, 1))
        with pytest.raises(Unauthorized):
            await auth.identify(f"Bearer {token}", "127.0.0.1:1")

    asyncio.run(scenario())
    with pytest.raises(NotFound, match=REALM):
        auth.issue(auth.ctx, [])  # type: ignore[arg-type]


# settings


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


def test_settings(tmp_path: Path, pem: Path) -> None:
    good = {"auth": True, "token_issuer_mode": "external", "token_realm": REALM}
    settings = _settings(tmp_path, **good, trusted_keys=[pem])
    assert settings.trust_store().algorithms == tokens.EXTERNAL_ALGORITHMS
    problems: list[tuple[dict[str, Any], str]] = [
        ({**good, "token_realm": None, "trusted_keys": [pem]}, "token_realm"),
        ({**good, "token_realm": "/token", "trusted_keys": [pem]}, "token_realm"),
        ({**good, "auth": False, "trusted_keys": [pem]}, "auth"),
        (good, "needs trusted_keys"),
        ({**good, "trusted_keys": [tmp_path / "nope.pem"]}, "cannot read"),
        ({**good, "trusted_keys": [pem], "trusted_algorithms": ["HS256"]}, "HS256"),
        ({**good, "trusted_keys": [pem], "trusted_algorithms": []}, "empty"),
        ({"auth": True, "trusted_keys": [pem]}, "only with token_issuer_mode: external"),
    ]
    for values, reason in problems:
        with pytest.raises(ValidationError, match=reason):
            _settings(tmp_path, **values)


# x5c on our own tokens


def test_issued_tokens_carry_x5c_when_a_certificate_is_beside_the_key(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", reload_interval=0)
    signing = ring.signing_key()
    access = [tokens.Scope("repository", "team/app", frozenset({"pull"}))]

    def issue() -> str:
        return tokens.issue(
            ring, issuer=ISSUER, audience=SERVICE, subject="bob", access=access, ttl_seconds=60
        ).token

    assert "x5c" not in jwt.get_unverified_header(issue())
    (pem,) = ring.directory.glob("*.pem")
    private = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    ca = ext.certificate("Dockyard CA", ext.ec_key(), ca=True)
    cert = ext.certificate("dockyard tokens", private, ca)
    # a certificate for another key is ignored
    ext.write(pem.with_suffix(".crt"), ext.cert_pem(ext.certificate("x", ext.ec_key()).cert))
    assert "x5c" not in jwt.get_unverified_header(issue())
    ext.write(pem.with_suffix(".crt"), ext.cert_pem(cert.cert, ca.cert))
    os.utime(pem.with_suffix(".crt"), ns=(2, 2))
    token = issue()
    header = jwt.get_unverified_header(token)
    assert header["kid"] == signing.kid
    assert header["x5c"] == ext.x5c(cert.cert, ca.cert)
    assert ring.jwks()["keys"][0]["x5c"] == header["x5c"]
    # our own verification stays by kid
    assert tokens.verify(token, ring, issuer=ISSUER, audience=SERVICE).subject == "bob"
    # and another registry trusting the CA accepts the token by its chain
    roots = ext.write(tmp_path / "ca.pem", ext.cert_pem(ca.cert))
    assert verify(token, TrustStore(roots=roots)).subject == "bob"
