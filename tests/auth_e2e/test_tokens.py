"""The token service through HTTP: forged tokens fail closed with a challenge, a token
grants the intersection of what was asked and what is allowed, refresh tokens work with
the OAuth2 POST until their subject is revoked or disabled, and signing keys rotate
without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.auth_e2e.accounts import Login
from tests.auth_e2e.conftest import People
from tests.auth_e2e.forgery import (
    ServerKey,
    attacker_ec_key,
    attacker_rsa_key,
    ec_public_jwk,
    fresh_times,
    hs256,
    rfc7638_thumbprint,
    server_key,
    unsigned,
    with_payload,
)
from tests.auth_e2e.registry import SERVICE, AuthRegistry, Grant, challenge, show
from tests.support.oci_client import random_image
from tests.support.processes import start_dockyard, wait_until


@dataclass(frozen=True)
class Protected:
    """A private image of alice's, and a genuine pull token for it."""

    repository: str
    digest: str
    grant: Grant
    key: ServerKey

    @property
    def path(self) -> str:
        return f"/v2/{self.repository}/manifests/{self.digest}"


@pytest.fixture(scope="module")
def protected(plain_registry: AuthRegistry, people: People) -> Protected:
    alice = people["alice"]
    repository = f"alice/forgery-{time.time_ns()}"
    image = random_image(repository, "v1")
    with plain_registry.pusher(alice, repository) as client:
        client.push_image(image)
    grant = plain_registry.token(alice, f"repository:{repository}:pull")
    assert grant.header["alg"] == "ES256"
    key = server_key(plain_registry.server.data_dir / "keys", grant.header["kid"])
    return Protected(repository, image.digest, grant, key)


def genuine_claims(protected: Protected) -> dict[str, Any]:
    return dict(protected.grant.claims)


def _forgeries() -> dict[str, Callable[[Protected], str]]:
    def claims(p: Protected) -> dict[str, Any]:
        return fresh_times(genuine_claims(p))

    def resign(**changes: Any) -> Callable[[Protected], str]:
        return lambda p: p.key.sign({**claims(p), **changes})

    def without(name: str) -> Callable[[Protected], str]:
        return lambda p: p.key.sign({k: v for k, v in claims(p).items() if k != name})

    def wider_access(p: Protected) -> dict[str, Any]:
        everything = ["pull", "push", "delete", "*"]
        access = [
            {"type": "repository", "name": p.repository, "actions": everything},
            {"type": "repository", "name": "bob/anything", "actions": everything},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ]
        return {**genuine_claims(p), "access": access}

    def foreign_ec(kid_of: str) -> Callable[[Protected], str]:
        def make(p: Protected) -> str:
            key = attacker_ec_key()
            kid = p.key.kid if kid_of == "server" else rfc7638_thumbprint(key.public_key())
            return jwt.encode(claims(p), key, algorithm="ES256", headers={"kid": kid})

        return make

    def embedded_jwk(p: Protected) -> str:
        key = attacker_ec_key()
        header = {
            "kid": rfc7638_thumbprint(key.public_key()),
            "jwk": ec_public_jwk(key.public_key()),
        }
        return jwt.encode(claims(p), key, algorithm="ES256", headers=header)

    def rs256_with_server_kid(p: Protected) -> str:
        return jwt.encode(
            claims(p), attacker_rsa_key(), algorithm="RS256", headers={"kid": p.key.kid}
        )

    return {
        "alg-none": lambda p: unsigned(claims(p), {"alg": "none", "typ": "JWT", "kid": p.key.kid}),
        "alg-None-with-signature": lambda p: (
            unsigned(claims(p), {"alg": "None", "kid": p.key.kid})
            + p.grant.token.rsplit(".", 1)[1]
        ),
        "hs256-signed-with-public-key": lambda p: hs256(claims(p), p.key.public_pem, p.key.kid),
        "wrong-key-known-kid": foreign_ec("server"),
        "wrong-key-unknown-kid": foreign_ec("own"),
        "embedded-jwk-header": embedded_jwk,
        "rs256-attacker-key-server-kid": rs256_with_server_kid,
        "no-kid": lambda p: jwt.encode(claims(p), p.key.private, algorithm="ES256"),
        "expired": resign(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                          exp=int(time.time()) - 3600),
        "not-yet-valid": resign(nbf=int(time.time()) + 3600),
        "wrong-aud": resign(aud="another-registry"),
        "wrong-iss": resign(iss="evil-issuer"),
        "no-exp": without("exp"),
        "no-aud": without("aud"),
        "tampered-access": lambda p: with_payload(p.grant.token, wider_access(p)),
        "tampered-sub": lambda p: with_payload(p.grant.token, {**p.grant.claims, "sub": "admin"}),
        "garbage": lambda p: "not-a-jwt",
        "truncated": lambda p: p.grant.token.rsplit(".", 1)[0],
    }  # fmt: skip


FORGERIES = _forgeries()


def test_genuine_and_re_signed_tokens_are_accepted(
    plain: AuthRegistry, protected: Protected
) -> None:
    """The control of the forgery tests: the real token, and its claims signed again with
    the registry's key, both read the manifest; kid is the key's RFC 7638 thumbprint."""
    assert protected.grant.header["kid"] == rfc7638_thumbprint(protected.key.private.public_key())
    claims = protected.grant.claims
    assert {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"} <= set(claims)
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("dockyard", SERVICE, "alice")
    assert claims["exp"] - claims["iat"] == 300
    for token in (protected.grant.token, protected.key.sign(fresh_times(claims))):
        response = plain.http.get(protected.path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, show(response)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_token_is_refused_with_a_challenge(
    plain: AuthRegistry, protected: Protected, forgery: str
) -> None:
    token = FORGERIES[forgery](protected)
    for method, path in (
        ("GET", protected.path),
        ("POST", f"/v2/{protected.repository}/blobs/uploads/"),
        ("GET", "/v2/"),
        ("GET", "/v2/_catalog"),
    ):
        response = plain.http.request(method, path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, show(response)
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
        params = challenge(response)
        assert params["scheme"] == "Bearer"
        assert params["realm"] == plain.realm
        assert params["service"] == SERVICE
        assert params.get("error") == "invalid_token", response.headers["www-authenticate"]


# what a token grants


def test_token_grants_the_intersection_of_asked_and_allowed(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    public, private = f"alice/{unique('pub')}", f"alice/{unique('priv')}"
    own = f"bob/{unique('own')}"
    with plain.pusher(alice, public, private) as client:
        client.push_image(random_image(public, "v1"))
        client.push_image(random_image(private, "v1"))
    plain.accounts.visibility(public, "public")

    everything = "pull,push,delete"
    grant = plain.token(
        bob,
        f"repository:{public}:{everything}",
        f"repository:{private}:{everything}",
        f"repository:{own}:*",
        "registry:catalog:*",
        "repository(plugin):whatever:pull",
    )
    # only pull where bob may only pull, nothing where he may do nothing, all in his own
    assert grant.access == {
        f"repository:{public}": {"pull"},
        f"repository:{own}": {"pull", "push", "delete"},
    }, grant.claims

    anonymous = plain.token(None, f"repository:{public}:{everything}", f"repository:{own}:pull")
    assert anonymous.claims["sub"] == ""
    assert anonymous.access == {f"repository:{public}": {"pull"}}

    # the OAuth2 form says what it granted in ``scope``
    response = plain.oauth(
        {
            "grant_type": "password",
            "username": bob.username,
            "password": bob.secret,
            "client_id": "auth-e2e",
            "scope": f"repository:{public}:{everything} repository:{private}:pull",
        }
    )
    assert response.status_code == 200, show(response)
    assert response.json()["scope"] == f"repository:{public}:pull"
    assert plain.grant_of(response).access == {f"repository:{public}": {"pull"}}

    # and the registry holds bob to it
    pull_only = plain.token(bob, f"repository:{public}:pull,push")
    with plain.client(pull_only.bearer) as client:
        assert client.get_manifest(public, "v1").status_code == 200
        refused = client.http.post(f"/v2/{public}/blobs/uploads/")
        assert refused.status_code == 403, show(refused)
        assert refused.json()["errors"][0]["code"] == "DENIED"


def test_token_lacking_a_scope_the_caller_could_have_is_401_insufficient_scope(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice = people["alice"]
    repository = f"alice/{unique('scope')}"
    pull_only = plain.token(alice, f"repository:{repository}:pull")
    response = plain.http.post(f"/v2/{repository}/blobs/uploads/", headers=pull_only.bearer)
    assert response.status_code == 401, show(response)
    params = challenge(response)
    assert params.get("error") == "insufficient_scope"
    assert params["scope"] == f"repository:{repository}:pull,push"
    assert params["realm"] == plain.realm
    # asking again with the scope of the challenge is enough
    grant = plain.token(alice, params["scope"])
    response = plain.http.post(f"/v2/{repository}/blobs/uploads/", headers=grant.bearer)
    assert response.status_code == 202, show(response)


def test_token_endpoint_refuses_bad_requests(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    alice = plain.accounts.user(unique("bad"))
    wrong_service = plain.http.get("/auth/token", params={"service": "elsewhere"})
    assert wrong_service.status_code == 400, show(wrong_service)
    wrong_password = plain.token_response(Login(alice.username, "not-" + alice.secret))
    assert wrong_password.status_code == 401, show(wrong_password)
    assert "token" not in wrong_password.text
    bearer = plain.http.get("/auth/token", headers={"Authorization": "Bearer x.y.z"})
    assert bearer.status_code == 401, show(bearer)
    unknown_grant = plain.oauth({"grant_type": "client_credentials", "client_id": "x"})
    assert unknown_grant.status_code == 400, show(unknown_grant)
    assert unknown_grant.json()["error"] == "unsupported_grant_type"


# refresh tokens


def refresh(registry: AuthRegistry, token: str, scope: str) -> httpx.Response:
    return registry.oauth(
        {
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": "auth-e2e",
            "scope": scope,
        }
    )


def assert_refresh_works(registry: AuthRegistry, token: str, repository: str) -> None:
    response = refresh(registry, token, f"repository:{repository}:pull,push")
    assert response.status_code == 200, show(response)
    assert registry.grant_of(response).access == {f"repository:{repository}": {"pull", "push"}}


def assert_refresh_refused(registry: AuthRegistry, token: str, repository: str) -> None:
    response = refresh(registry, token, f"repository:{repository}:pull,push")
    assert response.status_code == 401, show(response)
    assert response.json().get("error") == "invalid_grant", response.text
    assert "access_token" not in response.text


def test_refresh_token_of_user_until_disabled(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    user = plain.accounts.user(unique("rf"))
    repository = f"{user.username}/app"
    grant = plain.token(user, offline=True)
    assert grant.refresh_token and grant.refresh_token.startswith("dyf_")
    assert grant.access == {}
    assert_refresh_works(plain, grant.refresh_token, repository)
    # the OAuth2 password grant hands one out with access_type=offline too
    response = plain.oauth(
        {"grant_type": "password", "username": user.username, "password": user.secret,
         "client_id": "auth-e2e", "access_type": "offline"},
    )  # fmt: skip
    assert response.status_code == 200, show(response)
    second = plain.grant_of(response).refresh_token
    assert second and second != grant.refresh_token
    assert_refresh_refused(plain, grant.refresh_token + "x", repository)

    plain.accounts.set_user(user.username, "--disabled")
    assert_refresh_refused(plain, grant.refresh_token, repository)
    assert_refresh_refused(plain, second, repository)
    assert plain.token_response(user).status_code == 401
    plain.accounts.set_user(user.username, "--enabled")
    assert_refresh_works(plain, grant.refresh_token, repository)


def test_password_change_ends_refresh_tokens(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    """``docker login`` keeps a refresh token, not the password, in config.json: it is the
    credential a stolen laptop carries. Changing the password must cut it off, as it cuts
    off the password itself."""
    user = plain.accounts.user(unique("pw"))
    repository = f"{user.username}/app"
    refresh_token = plain.token(user, offline=True).refresh_token
    assert refresh_token is not None
    assert_refresh_works(plain, refresh_token, repository)
    new_password = f"new-{user.secret}"
    plain.remember(new_password)
    plain.accounts.cli("user", "passwd", user.username, "--password", new_password)
    assert plain.token(Login(user.username, new_password)).claims["sub"] == user.username
    assert_refresh_refused(plain, refresh_token, repository)


def test_refresh_token_of_robot_until_revoked_or_expired(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    owner = plain.accounts.user(unique("rr"))
    repository = f"{owner.username}/app"
    revoked = plain.accounts.robot(owner.username, "gone", f"{owner.username}/*:pull,push")
    expired = plain.accounts.robot(owner.username, "old", f"{owner.username}/*:pull,push")
    tokens = {}
    for robot in (revoked, expired):
        refresh_token = plain.token(robot, offline=True).refresh_token
        assert refresh_token is not None
        assert_refresh_works(plain, refresh_token, repository)
        tokens[robot.username] = refresh_token

    plain.accounts.revoke_robot(revoked.username)
    assert_refresh_refused(plain, tokens[revoked.username], repository)
    assert expired.credential_id is not None
    plain.accounts.expire(expired.credential_id)
    assert_refresh_refused(plain, tokens[expired.username], repository)


def test_refresh_token_of_access_token_until_revoked(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    owner = plain.accounts.user(unique("rt"))
    repository = f"{owner.username}/app"
    pat = plain.accounts.access_token(owner.username, "ci")
    refresh_token = plain.token(pat, offline=True).refresh_token
    assert refresh_token is not None
    assert_refresh_works(plain, refresh_token, repository)
    assert pat.credential_id is not None
    plain.accounts.revoke_token(pat.credential_id)
    assert_refresh_refused(plain, refresh_token, repository)


# key rotation


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry whose keys a test may change. One server process: each process re-reads
    keys_dir on its own (within a second), and the tests look for the moment it does."""
    server = start_dockyard(tmp_path / "data", "--workers", "1", auth=True)
    registry = AuthRegistry.started(server)
    try:
        yield registry
    finally:
        registry.close()
        server.stop()


def test_signing_keys_rotate_without_restart(own_registry: AuthRegistry) -> None:
    registry = own_registry
    admin = registry.admin
    keys_dir = registry.server.data_dir / "keys"
    repository = "admin/rotation"
    with registry.pusher(admin, repository) as client:
        client.push_image(random_image(repository, "v1"))

    def can_read(grant: Grant) -> int:
        response = registry.http.get(f"/v2/{repository}/manifests/v1", headers=grant.bearer)
        return response.status_code

    old = registry.token(admin, f"repository:{repository}:pull")
    [old_file] = keys_dir.glob("*.pem")
    new_kid = add_key(keys_dir, "next.pem")

    def signed_by_new_key() -> bool:
        return bool(registry.token(admin).header["kid"] == new_kid)

    wait_until(signed_by_new_key, 30, "tokens signed by the added key")
    new = registry.token(admin, f"repository:{repository}:pull")
    assert new.header["kid"] == new_kid
    assert can_read(new) == 200
    assert can_read(old) == 200  # the old key still verifies

    old_file.unlink()

    def old_token_refused() -> bool:
        return can_read(old) == 401

    wait_until(old_token_refused, 30, "the removed key's tokens to be refused")
    assert can_read(new) == 200
    refused = registry.http.get(f"/v2/{repository}/manifests/v1", headers=old.bearer)
    assert challenge(refused).get("error") == "invalid_token"


def add_key(keys_dir: Path, name: str) -> str:
    """A new P-256 signing key in ``keys_dir`` (written beside, then renamed into place, as
    an operator should); returns its kid."""
    key = attacker_ec_key()  # any P-256 key of the operator's choosing
    staging = keys_dir / f"{name}.tmp"
    staging.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    staging.chmod(0o600)
    staging.rename(keys_dir / name)
    return rfc7638_thumbprint(key.public_key())


def test_unreadable_key_file_does_not_stop_the_registry(own_registry: AuthRegistry) -> None:
    """A file in keys_dir that is not a key (half copied, a certificate, an encrypted key)
    is skipped: the other keys go on signing and verifying."""
    registry = own_registry
    admin = registry.admin
    keys_dir = registry.server.data_dir / "keys"
    before = registry.token(admin, "repository:admin/app:pull,push")
    (keys_dir / "broken.pem").write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n")
    new_kid = add_key(keys_dir, "next.pem")
    deadline = time.monotonic() + 30
    while True:  # until the registry has read the directory with both files in it
        response = registry.token_response(admin)
        assert response.status_code == 200, show(response)
        if registry.grant_of(response).header["kid"] == new_kid:
            break
        assert time.monotonic() < deadline, "the added key never signed a token"
        time.sleep(0.05)
    uploads = registry.http.post("/v2/admin/app/blobs/uploads/", headers=before.bearer)
    assert uploads.status_code == 202, show(uploads)


def test_token_response_fields(plain: AuthRegistry, people: People) -> None:
    """What clients read: token and access_token alike, expires_in >= 60, issued_at in
    RFC 3339, and no caching."""
    response = plain.token_response(people["alice"], "repository:alice/x:pull")
    assert response.status_code == 200, show(response)
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] >= 60
    assert time.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert response.headers.get("cache-control") == "no-store"
    plain.remember(body["token"])


def generation(registry: AuthRegistry) -> bytes:
    """The shared change counter of the registry's SQLite database: every server process
    drops its read caches (manifests, blob lookups, logins, access decisions) when a write
    changes it (src/dockyard/db/changes.py)."""
    return (registry.server.data_dir / "dockyard.db.generation").read_bytes()[:8]


def test_token_grants_leave_the_read_caches_alone(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    """Every docker pull begins with a token request. A grant changes nothing a cached read
    depends on (its audit row included), so it must not make every server process drop
    its caches: with authentication on, that would turn each pull's manifest and blob
    lookups, and each Basic login, back into database reads and password hashing."""
    alice = people["alice"]
    image = random_image(f"alice/{unique('hot')}", "v1")
    with plain.pusher(alice, image.repository) as client:
        client.push_image(image)
    plain.token(alice, f"repository:{image.repository}:pull")  # a first grant, cached login
    before = generation(plain)
    grants = [plain.token(alice, f"repository:{image.repository}:pull") for _ in range(3)]
    anonymous = plain.token(None, f"repository:{image.repository}:pull")
    assert all(g.access for g in grants) and anonymous.access == {}
    assert generation(plain) == before, "token grants announced a change to every cache"
