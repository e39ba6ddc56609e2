"""A mirror with authentication on and a cache size limit: access to proxied repositories
(public and private upstreams), least-recently-pulled eviction, and the statistics in the
management API and /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.mirror.conftest import (
    Upstream,
    mirror_counts,
    start_mirror,
    stored_blob,
    unique,
    wait_for_counts,
)
from tests.mirror.fake_upstream import FakeUpstream
from tests.support.oci_client import OCI_MANIFEST, Image, random_image, sha256_digest
from tests.support.processes import Server, wait_until

ACCEPT = {"Accept": OCI_MANIFEST}
LIMIT = 400_000


@dataclass
class AuthMirror:
    server: Server
    admin: tuple[str, str]
    pub: FakeUpstream

    def token(self, scope: str, auth: tuple[str, str] | None = None) -> dict[str, str]:
        response = httpx.get(
            f"{self.server.url}/auth/token",
            params={"service": "dockyard", "scope": scope},
            auth=auth,
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(scope="module")
def auth_mirror(tmp_path_factory: pytest.TempPathFactory, hub: Upstream) -> Iterator[AuthMirror]:
    pub = FakeUpstream().start()
    server = start_mirror(
        tmp_path_factory.mktemp("auth-mirror") / "data",
        {
            "pub": {"url": pub.url},  # no credentials: public by default
            "priv": {"url": hub.url, "username": hub.username, "password": hub.password},
        },
        "--auth",
        mirror_cache_max_bytes=str(LIMIT),
    )
    try:
        match = re.search(r"^\s*password:\s*(\S+)\s*$", server.log(), re.MULTILINE)
        assert match, server.log()
        yield AuthMirror(server, ("admin", match.group(1)), pub)
    finally:
        server.stop()
        pub.stop()


def serve_image(upstream: FakeUpstream, repository: str, sizes: tuple[int, ...]) -> Image:
    image = random_image(repository, "1", layer_sizes=sizes)
    upstream.add_manifest(repository, "1", image.manifest, OCI_MANIFEST)
    for blob in image.blobs:
        upstream.add_blob(blob)
    return image


def test_access_follows_the_upstreams_visibility(auth_mirror: AuthMirror, hub: Upstream) -> None:
    url = auth_mirror.server.url
    public = unique("open/app")
    image = serve_image(auth_mirror.pub, public, (1000,))
    private = unique("closed/app")
    secret = random_image(private, "1")
    with hub.client() as client:
        client.push_image(secret)
    with httpx.Client(base_url=url, timeout=30) as http:
        # anonymous: pulls the public upstream's content, with or without a token
        response = http.get(f"/v2/pub/{public}/manifests/1", headers=ACCEPT)
        assert response.status_code == 200
        assert response.content == image.manifest
        token = auth_mirror.token(f"repository:pub/{public}:pull")
        response = http.get(f"/v2/pub/{public}/manifests/1", headers={**ACCEPT, **token})
        assert response.status_code == 200
        # the private upstream: anonymous callers are challenged for its scope
        response = http.get(f"/v2/priv/{private}/manifests/1", headers=ACCEPT)
        assert response.status_code == 401
        assert f'scope="repository:priv/{private}:pull"' in response.headers["WWW-Authenticate"]
        # the private upstream: an anonymous token grants nothing, the administrator pulls
        token = auth_mirror.token(f"repository:priv/{private}:pull")
        response = http.get(f"/v2/priv/{private}/manifests/1", headers={**ACCEPT, **token})
        assert response.status_code == 401
        admin_token = auth_mirror.token(f"repository:priv/{private}:pull", auth_mirror.admin)
        response = http.get(f"/v2/priv/{private}/manifests/1", headers={**ACCEPT, **admin_token})
        assert response.status_code == 200
        assert response.content == secret.manifest
        layer = sha256_digest(secret.layers[0])
        response = http.get(f"/v2/priv/{private}/blobs/{layer}", auth=auth_mirror.admin)
        assert response.content == secret.layers[0]
        # even the administrator cannot push into a proxy namespace
        response = http.post(f"/v2/pub/{public}/blobs/uploads/", auth=auth_mirror.admin)
        assert response.status_code == 403
        assert "pull-through cache" in response.json()["errors"][0]["message"]
        # the proxied repositories are in the catalog of those who may see them
        catalog = http.get("/v2/_catalog", auth=auth_mirror.admin).json()["repositories"]
        assert f"pub/{public}" in catalog and f"priv/{private}" in catalog


def namespace_bytes(server: Server, namespace: str) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(
        rf'^dockyard_namespace_stored_bytes\{{namespace="{namespace}"\}} (\S+)$', text, re.M
    )
    return int(float(found.group(1))) if found else 0


def test_least_recently_pulled_repositories_are_evicted(auth_mirror: AuthMirror) -> None:
    server = auth_mirror.server
    names = [unique("evict/app") for _ in range(3)]
    images = [serve_image(auth_mirror.pub, name, (150_000,)) for name in names]
    with httpx.Client(base_url=server.url, timeout=30, auth=auth_mirror.admin) as http:
        for name, image in zip(names, images, strict=True):
            assert http.get(f"/v2/pub/{name}/manifests/1", headers=ACCEPT).status_code == 200
            for blob in image.blobs:
                assert http.get(f"/v2/pub/{name}/blobs/{sha256_digest(blob)}").content == blob
        oldest_layer = sha256_digest(images[0].layers[0])
        wait_until(lambda: not stored_blob(server.data_dir, oldest_layer), 30, "the oldest evicted")
        assert namespace_bytes(server, "pub") <= LIMIT
        catalog = http.get("/v2/_catalog").json()["repositories"]
        assert f"pub/{names[0]}" not in catalog
        assert f"pub/{names[2]}" in catalog
        for image in images[1:]:
            layer = sha256_digest(image.layers[0])
            assert stored_blob(server.data_dir, layer)
        # evicted content is fetched again on the next pull
        upstream_path = f"/v2/{names[0]}/blobs/{oldest_layer}"
        before = auth_mirror.pub.count("GET", upstream_path)
        response = http.get(f"/v2/pub/{names[0]}/blobs/{oldest_layer}")
        assert response.content == images[0].layers[0]
        assert auth_mirror.pub.count("GET", upstream_path) == before + 1


def test_statistics_in_the_api_and_metrics(auth_mirror: AuthMirror) -> None:
    server = auth_mirror.server
    name = unique("stats/app")
    image = serve_image(auth_mirror.pub, name, (10_000,))
    layer = image.layers[0]
    digest = sha256_digest(layer)
    with httpx.Client(base_url=server.url, timeout=30, auth=auth_mirror.admin) as http:
        for _ in range(3):
            assert http.get(f"/v2/pub/{name}/blobs/{digest}").content == layer

        def api_stats() -> dict[str, dict[str, object]]:
            response = http.get("/api/v1/upstreams")
            assert response.status_code == 200, response.text
            return {entry["name"]: entry for entry in response.json()}

        wait_until(
            lambda: api_stats()["pub"]["stats"]["saved_bytes"] >= 2 * len(layer),  # type: ignore[index]
            15,
            "the statistics of two cache hits",
        )
        upstreams = api_stats()
        assert set(upstreams) == {"pub", "priv"}
        priv = upstreams["priv"]
        assert priv["password_set"] is True and priv["public"] is False
        assert "password" not in priv
        pub_stats = upstreams["pub"]["stats"]
        assert pub_stats["misses"] >= 1 and pub_stats["hits"] >= 2  # type: ignore[index]
        assert pub_stats["upstream_bytes"] >= len(layer)  # type: ignore[index]
        # /metrics sums the same counts (each process shares its own once a second)
        counts = wait_for_counts(server, "pub", "saved_bytes", 2 * len(layer))
        assert counts["hits"] >= 2
        assert "upstream_bytes" in mirror_counts(server, "priv")
        # only site administrators read it
        anonymous = httpx.get(f"{server.url}/api/v1/upstreams")
        assert anonymous.status_code == 401
        document = http.get("/api/v1/openapi.json").json()
        assert "/api/v1/upstreams" in document["paths"]
