"""Daemon mirror mode and containerd's ``?ns=`` with authentication on, in front of a
private upstream (Docker Hub's entry with credentials): which scope a client is challenged
for, that a user allowed to pull the proxied repository gets it, and that anonymous callers
and users without rights do not."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.mirror.conftest import Upstream, start_mirror, unique
from tests.support.oci_client import OCI_MANIFEST, Image, random_image, sha256_digest
from tests.support.processes import Server

ACCEPT = {"Accept": OCI_MANIFEST}
PASSWORD = "pw-" + uuid.uuid4().hex[:12]


@dataclass
class AuthMirror:
    server: Server
    image: Image
    name: str  # the plain name a docker daemon asks for (library/<name>)

    def token(self, *scopes: str, user: str | None = None) -> dict[str, str]:
        response = httpx.get(
            f"{self.server.url}/auth/token",
            params=[("service", "dockyard"), *(("scope", s) for s in scopes)],
            auth=(user, PASSWORD) if user else None,
        )
        assert response.status_code == 200, response.text
        return {**ACCEPT, "Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(scope="module")
def auth_mirror(tmp_path_factory: pytest.TempPathFactory, hub: Upstream) -> Iterator[AuthMirror]:
    server = start_mirror(
        tmp_path_factory.mktemp("mirror-auth") / "data",
        # credentials and no `public`: a private upstream
        {"hub": {"url": hub.url, "username": hub.username, "password": hub.password}},
        "--auth",
        mirror_upstream="hub",
    )
    try:
        match = re.search(r"^\s*password:\s*(\S+)\s*$", server.log(), re.MULTILINE)
        assert match, server.log()
        with httpx.Client(base_url=server.url, auth=("admin", match.group(1))) as admin:
            for user in ("alice", "bob"):
                created = admin.post("/api/v1/users", json={"name": user, "password": PASSWORD})
                assert created.status_code == 201, created.text
            # readers of the organization named like the prefix may pull the proxied images
            assert admin.post("/api/v1/orgs", json={"name": "hub"}).status_code == 201
            member = admin.put("/api/v1/orgs/hub/members/alice", json={"role": "reader"})
            assert member.status_code == 200, member.text
        name = unique("busybox")
        image = random_image(f"library/{name}", "1", layer_sizes=(20_000,))
        with hub.client() as client:
            client.push_image(image)
        yield AuthMirror(server, image, f"library/{name}")
    finally:
        server.stop()


def challenge_scope(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    found = re.search(r'scope="([^"]+)"', challenge)
    assert found, challenge
    return found.group(1)


def test_daemon_mirror_mode_with_auth(auth_mirror: AuthMirror) -> None:
    name, image = auth_mirror.name, auth_mirror.image
    manifest = f"/v2/{name}/manifests/{image.tag}"
    layer = image.layers[0]
    blob = f"/v2/{name}/blobs/{sha256_digest(layer)}"
    with httpx.Client(base_url=auth_mirror.server.url, timeout=30) as http:
        # docker asks for the plain name: it is challenged for that name's scope
        assert challenge_scope(http.get(manifest, headers=ACCEPT)) == f"repository:{name}:pull"
        assert challenge_scope(http.get(blob)) == f"repository:{name}:pull"
        # an anonymous token, and a user without rights on hub/, get nothing
        scope = f"repository:{name}:pull"
        assert http.get(manifest, headers=auth_mirror.token(scope)).status_code == 401
        denied = http.get(manifest, headers=auth_mirror.token(scope, user="bob"))
        assert denied.status_code == 403
        # a reader of hub/ pulls, with a token for the name it asked for
        headers = auth_mirror.token(scope, user="alice")
        response = http.get(manifest, headers=headers)
        assert response.status_code == 200, response.text
        assert response.content == image.manifest
        response = http.get(blob, headers=headers)
        assert response.status_code == 200
        assert response.content == layer
        # and with Basic credentials straight to /v2
        response = http.get(manifest, headers=ACCEPT, auth=("alice", PASSWORD))
        assert response.status_code == 200


def test_ns_query_with_auth(auth_mirror: AuthMirror) -> None:
    name, image = auth_mirror.name, auth_mirror.image
    manifest = f"/v2/{name}/manifests/{image.tag}?ns=docker.io"
    layer = image.layers[-1]
    blob = f"/v2/{name}/blobs/{sha256_digest(layer)}?ns=docker.io"
    with httpx.Client(base_url=auth_mirror.server.url, timeout=30) as http:
        # with ?ns= access is decided on the proxied repository, and the challenge says so
        # (containerd asks the token service for the challenge's scope and its own)
        proxied = f"repository:hub/{name}:pull"
        assert challenge_scope(http.get(manifest, headers=ACCEPT)) == proxied
        assert challenge_scope(http.get(blob)) == proxied
        assert http.get(manifest, headers=auth_mirror.token(proxied)).status_code == 401
        denied = http.get(manifest, headers=auth_mirror.token(proxied, user="bob"))
        assert denied.status_code == 403
        own = f"repository:{name}:pull"
        headers = auth_mirror.token(own, proxied, user="alice")
        response = http.get(manifest, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["Docker-Content-Digest"] == image.digest
        response = http.get(blob, headers=headers)
        assert response.status_code == 200
        assert response.content == layer
