"""End to end: ``dockyard serve`` behind an external token server. The test is that server:
it mints the tokens, with keys whose public parts the registry was configured with."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from dockyard.auth.keys import libtrust_kid
from tests.auth import issuer as ext
from tests.auth.issuer import ISSUER, REALM, SERVICE
from tests.support.oci_client import with_digest
from tests.support.processes import Server, dockyard_command, start_dockyard, wait_until

BLOB = b"a layer pushed with a token from the external issuer\n"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Issuer:
    """The keys of the pretend auth server and the files the registry trusts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pem_key = ext.ec_key()  # configured as a PEM public key (trusted_keys)
        self.jwks_key = ext.rsa_key()  # published in the JWKS file under kid "rsa-2024"
        self.root = ext.certificate("Auth Root CA", ext.ec_key(), ca=True)
        issuing = ext.certificate("Auth Issuing CA", ext.ec_key(), self.root, ca=True)
        self.chain = [ext.certificate("auth token signer", ext.ec_key(), issuing), issuing]
        self.pem = ext.write(directory / "issuer.pub", ext.public_pem(self.pem_key))
        self.jwks = ext.write(
            directory / "jwks.json", ext.jwks((self.jwks_key, {"kid": "rsa-2024"}))
        )
        self.roots = ext.write(directory / "roots.pem", ext.cert_pem(self.root.cert))

    def token(self, *access: dict[str, Any], how: str = "thumbprint", **claims: Any) -> str:
        body = ext.claims(list(access), **claims)
        if how == "thumbprint":
            return ext.mint(self.pem_key, body)
        if how == "libtrust":
            return ext.mint(self.pem_key, body, kid=libtrust_kid(self.pem_key.public_key()))
        if how == "jwks":
            return ext.mint(self.jwks_key, body, algorithm="RS256", kid="rsa-2024")
        if how == "x5c":
            header = {"x5c": ext.x5c(*(c.cert for c in self.chain))}
            return ext.mint(self.chain[0].key, body, kid=None, header=header)
        raise ValueError(how)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Issuer]]:
    base = tmp_path_factory.mktemp("external-issuer")
    issuer = Issuer(base / "trust")
    config = ext.write(
        base / "dockyard.yaml",
        "token_issuer_mode: external\n"
        f"token_realm: {REALM}\n"
        f"token_service: {SERVICE}\n"
        f"token_issuer: {ISSUER}\n"
        f"trusted_keys: [{issuer.pem}]\n"
        f"trusted_jwks: {issuer.jwks}\n"
        f"trusted_root_certificates: {issuer.roots}\n"
        "workers: 2\n",
    )
    server = start_dockyard(base / "data", "--auth", "--config", str(config))
    try:
        yield server, issuer
    finally:
        server.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push_blob(client: httpx.Client, repository: str, token: str) -> httpx.Response:
    started = client.post(f"/v2/{repository}/blobs/uploads/", headers=bearer(token))
    if started.status_code != 202:
        return started
    location = urljoin(str(client.base_url), started.headers["Location"])
    return client.put(
        with_digest(location, DIGEST),
        content=BLOB,
        headers={**bearer(token), "Content-Type": "application/octet-stream"},
    )


def challenge(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 401, response.text
    header = response.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def test_push_and_pull_with_external_tokens(setup: tuple[Server, Issuer]) -> None:
    server, issuer = setup
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # no credentials: sent to the external realm
        assert challenge(client.get("/v2/")) == {"realm": REALM, "service": SERVICE}
        # Dockyard issues no tokens of its own
        refused = client.get("/auth/token", params={"service": SERVICE})
        assert refused.status_code == 404
        assert REALM in refused.json()["errors"][0]["message"]

        push = issuer.token(ext.repository("team/app", "pull", "push"))
        assert client.get("/v2/", headers=bearer(push)).status_code == 200
        pushed = push_blob(client, "team/app", push)
        assert pushed.status_code == 201, pushed.text

        # pulled with tokens whose key is named each way the issuer may name it
        for how in ("thumbprint", "libtrust", "jwks", "x5c"):
            token = issuer.token(ext.repository("team/app", "pull"), how=how)
            pulled = client.get(f"/v2/team/app/blobs/{DIGEST}", headers=bearer(token))
            assert pulled.status_code == 200, (how, pulled.text)
            assert pulled.content == BLOB


def test_token_for_another_repository(setup: tuple[Server, Issuer]) -> None:
    server, issuer = setup
    with httpx.Client(base_url=server.url, timeout=10) as client:
        seed = issuer.token(ext.repository("team/app", "pull", "push"))
        assert push_blob(client, "team/app", seed).status_code == 201
        other = issuer.token(ext.repository("team/other", "pull", "push"))
        denied = client.get(f"/v2/team/app/blobs/{DIGEST}", headers=bearer(other))
        params = challenge(denied)
        assert params["realm"] == REALM
        assert params["service"] == SERVICE
        assert params["error"] == "insufficient_scope"
        assert params["scope"] == "repository:team/app:pull"
        assert denied.headers["WWW-Authenticate"].startswith(f'Bearer realm="{REALM}"')
        # pull alone does not push
        pull_only = issuer.token(ext.repository("team/app", "pull"))
        params = challenge(push_blob(client, "team/app", pull_only))
        assert params["error"] == "insufficient_scope"
        assert params["scope"] == "repository:team/app:pull,push"


def test_bad_tokens_are_refused(setup: tuple[Server, Issuer]) -> None:
    server, issuer = setup
    pull = ext.repository("team/app", "pull")
    intruder = ext.ec_key()
    expired_signer = ext.certificate("old signer", ext.ec_key(), issuer.chain[1], days=(-9, -1))
    bad = {
        "unknown key": ext.mint(intruder, ext.claims([pull])),
        "forged kid": ext.mint(
            intruder, ext.claims([pull]), kid=libtrust_kid(issuer.pem_key.public_key())
        ),
        "wrong issuer": issuer.token(pull, issuer="someone-else"),
        "wrong audience": issuer.token(pull, audience="another-registry"),
        "expired": issuer.token(pull, ttl=-600),
        "expired certificate": ext.mint(
            expired_signer.key,
            ext.claims([pull]),
            kid=None,
            header={"x5c": ext.x5c(expired_signer.cert, issuer.chain[1].cert)},
        ),
        "alg none": ".".join(
            base64.urlsafe_b64encode(part).rstrip(b"=").decode()
            for part in (b'{"alg":"none","typ":"JWT"}', b'{"sub":"alice"}')
        )
        + ".",
    }
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for what, token in bad.items():
            response = client.get(f"/v2/team/app/blobs/{DIGEST}", headers=bearer(token))
            params = challenge(response)
            assert params.get("error") == "invalid_token", what
            assert params["realm"] == REALM, what


def test_local_accounts_open_no_repository(setup: tuple[Server, Issuer]) -> None:
    server, _ = setup
    # no first admin is generated in external mode; a local account made by hand exists
    assert re.search(r"password: (\S+)", server.log()) is None
    subprocess.run(
        [
            *dockyard_command(),
            "user",
            "add",
            "local",
            "--admin",
            "--password",
            "local-pass-1",
            "--data-dir",
            str(server.data_dir),
        ],
        check=True,
        capture_output=True,
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.get(f"/v2/team/app/blobs/{DIGEST}", auth=("local", "local-pass-1"))
        assert challenge(response)["realm"] == REALM


def test_keys_rotate_without_restart(setup: tuple[Server, Issuer]) -> None:
    server, issuer = setup
    rotated = ext.ec_key()
    token = ext.mint(rotated, ext.claims([ext.repository("team/app", "pull")]), kid="ec-2025")
    url = f"{server.url}/v2/team/app/blobs/{DIGEST}"
    with httpx.Client(timeout=10) as client:
        seed = issuer.token(ext.repository("team/app", "pull", "push"))
        client.base_url = httpx.URL(server.url)
        assert push_blob(client, "team/app", seed).status_code == 201
        assert client.get(url, headers=bearer(token)).status_code == 401
        ext.write(
            issuer.jwks,
            ext.jwks((issuer.jwks_key, {"kid": "rsa-2024"}), (rotated, {"kid": "ec-2025"})),
        )
        os.utime(issuer.jwks, ns=(5, 5))
        # every worker picks the new key up (within a second or so); ask a few times
        wait_until(
            lambda: all(
                client.get(url, headers=bearer(token)).status_code == 200 for _ in range(6)
            ),
            15,
            "the rotated key to be trusted",
        )
