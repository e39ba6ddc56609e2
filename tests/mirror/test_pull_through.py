"""Pulling through the mirror from real upstreams: CNCF Distribution with htpasswd (as the
Docker Hub upstream) and a Dockyard with token authentication, by the three ways in."""

from __future__ import annotations

import httpx

from tests.mirror.conftest import (
    Upstream,
    mirror_counts,
    start_hub,
    start_mirror,
    stored_blob,
    unique,
    upstream_gets,
    wait_for_counts,
)
from tests.support.oci_client import OCI_MANIFEST, Image, OciClient, random_image, sha256_digest
from tests.support.processes import Server, wait_until

ACCEPT = {"Accept": OCI_MANIFEST}


def pull(http: httpx.Client, name: str, image: Image, query: str = "") -> None:
    """Pull the image by tag and by digest as ``name``; assert every byte and digest."""
    for reference in (image.tag, image.digest):
        response = http.get(f"/v2/{name}/manifests/{reference}{query}", headers=ACCEPT)
        assert response.status_code == 200, response.text
        assert response.content == image.manifest
        assert response.headers["Docker-Content-Digest"] == image.digest
    for blob in image.blobs:
        digest = sha256_digest(blob)
        response = http.get(f"/v2/{name}/blobs/{digest}{query}")
        assert response.status_code == 200, response.text
        assert response.content == blob
        assert response.headers["Docker-Content-Digest"] == digest


def test_three_ways_in_share_one_cache(mirror: Server, hub: Upstream) -> None:
    repository = unique("team/app")
    image = random_image(repository, "1.0", layer_sizes=(300_000, 5000))
    with hub.client() as client:
        client.push_image(image)
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        assert http.get("/v2/").status_code == 200
        # 1. the proxy namespace: fetched from the upstream
        pull(http, f"hub/{repository}", image)
        fetched = upstream_gets(hub.server, repository)
        # the tag's manifest and each blob once (the digest is then known)
        assert sorted(fetched) == sorted(
            [f"/v2/{repository}/manifests/{image.tag}"]
            + [f"/v2/{repository}/blobs/{sha256_digest(b)}" for b in image.blobs]
        )
        # (worker processes share their counts once a second: the ones of this pull may
        # not all be in yet, so the counters are compared with at least what follows)
        before = mirror_counts(mirror, "hub")
        # 2. daemon mirror mode (a plain name is Docker Hub's) and 3. containerd's
        # ?ns=docker.io: the same cached repository
        pull(http, repository, image)
        pull(http, repository, image, "?ns=docker.io")
        assert upstream_gets(hub.server, repository) == fetched, "a second way in fetched again"
        # two manifest GETs (tag, digest) and the blobs, twice
        gets = 2 * (2 + len(image.blobs))
        after = wait_for_counts(mirror, "hub", "hits", before.get("hits", 0) + gets)
        saved = 2 * (2 * len(image.manifest) + sum(len(b) for b in image.blobs))
        after = wait_for_counts(mirror, "hub", "saved_bytes", before["saved_bytes"] + saved)
        assert after["misses"] >= len(image.blobs) + 1
        # a HEAD answers as a GET would, without a body
        head = http.head(f"/v2/{repository}/manifests/{image.tag}", headers=ACCEPT)
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == image.digest
        assert int(head.headers["Content-Length"]) == len(image.manifest)
    for blob in image.blobs:
        assert stored_blob(mirror.data_dir, sha256_digest(blob))


def test_single_names_are_library_images(mirror: Server, hub: Upstream) -> None:
    name = unique("busybox")
    image = random_image(f"library/{name}", "latest")
    with hub.client() as client:
        client.push_image(image)
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        pull(http, name, image)  # docker pull busybox through a daemon mirror
        pull(http, f"hub/{name}", image)
        pull(http, f"hub/library/{name}", image)
        pull(http, name, image, "?ns=registry-1.docker.io")


def test_token_authenticated_upstream(mirror: Server, dock: Upstream) -> None:
    repository = f"{dock.username}/{unique('app')}"
    image = random_image(repository, "v1", layer_sizes=(70_000,))
    with dock.client() as client:
        client.push_image(image)
    # the upstream's repository is private: without credentials it is refused
    anonymous = httpx.get(f"{dock.url}/v2/{repository}/manifests/v1", headers=ACCEPT)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer ")
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        pull(http, f"dock/{repository}", image)
        host = dock.url.split("://", 1)[1]
        pull(http, repository, image, f"?ns={host}")


def test_unknown_content_is_not_found_naming_the_upstream(mirror: Server) -> None:
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        response = http.get(f"/v2/hub/{unique('nothing/here')}/manifests/latest")
        assert response.status_code == 404
        error = response.json()["errors"][0]
        assert error["code"] == "MANIFEST_UNKNOWN"
        assert "upstream hub" in error["message"]
        missing = "sha256:" + "0" * 64
        response = http.get(f"/v2/hub/{unique('nothing/here')}/blobs/{missing}")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_pushes_and_deletes_into_a_proxy_namespace_are_refused(mirror: Server) -> None:
    with OciClient(mirror.url) as client:
        response = client.http.post("/v2/hub/library/mine/blobs/uploads/")
        assert response.status_code == 403
        error = response.json()["errors"][0]
        assert error["code"] == "DENIED"
        assert "hub/ is a pull-through cache of http://127.0.0.1:" in error["message"]
        image = random_image("hub/library/mine", "1")
        response = client.put_manifest("hub/library/mine", "1", image.manifest)
        assert response.status_code == 403
        response = client.http.delete(f"/v2/hub/library/mine/manifests/{image.digest}")
        assert response.status_code == 403
        # ordinary repositories beside the proxied ones keep working, plain names included:
        # a local repository is served instead of the mirror's
        own = random_image(unique("own"), "1")
        client.push_image(own)
        client.check_image(own)


def test_tag_revalidated_after_ttl(mirror: Server, hub: Upstream) -> None:
    repository = unique("team/moving")
    first = random_image(repository, "latest")
    second = random_image(repository, "latest")
    with hub.client() as client:
        client.push_image(first)
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        pull(http, f"hub/{repository}", first)
        with hub.client() as client:
            client.push_image(second)

        def moved() -> bool:
            response = http.get(f"/v2/hub/{repository}/manifests/latest", headers=ACCEPT)
            assert response.status_code == 200
            # until the TTL (2 s) has passed, the cached tag is served
            assert response.headers["Docker-Content-Digest"] in (first.digest, second.digest)
            return response.headers["Docker-Content-Digest"] == second.digest

        wait_until(moved, 20, "the moved tag")
        pull(http, f"hub/{repository}", second)
        # the first image stays pullable by digest, from the cache
        response = http.get(f"/v2/hub/{repository}/manifests/{first.digest}", headers=ACCEPT)
        assert response.content == first.manifest


def test_stale_if_error(tmp_path: object, hub: Upstream) -> None:
    """A stopped upstream: everything cached still pulls (tags past their TTL too); what
    was never cached gets 503 naming the upstream."""
    from pathlib import Path

    root = Path(str(tmp_path))
    own_hub = start_hub(root / "hub")
    mirror = start_mirror(
        root / "mirror",
        {
            "hub": {
                "url": own_hub.url,
                "username": own_hub.username,
                "password": own_hub.password,
                "tag_ttl_seconds": 0,
            }
        },
    )
    try:
        image = random_image("team/stale", "1.0")
        never = random_image("team/never", "1.0")
        with own_hub.client() as client:
            client.push_image(image)
            client.push_image(never)
        with httpx.Client(base_url=mirror.url, timeout=30) as http:
            # credentials make an upstream private by default: this mirror has no auth, so
            # everyone may pull anyway
            pull(http, "hub/team/stale", image)
            own_hub.server.stop()
            pull(http, "hub/team/stale", image)
            response = http.get("/v2/hub/team/never/manifests/1.0", headers=ACCEPT)
            assert response.status_code == 503
            error = response.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "upstream hub" in error["message"] and "not in the cache" in error["message"]
            blob = sha256_digest(never.layers[0])
            response = http.get(f"/v2/hub/team/never/blobs/{blob}")
            assert response.status_code == 503
    finally:
        mirror.stop()
        own_hub.server.stop()
