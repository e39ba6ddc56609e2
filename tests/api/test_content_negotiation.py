"""Manifest content negotiation: the registry reads every Accept header line (containers/image
and docker send one line per media type) and answers with the pushed type."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    index_manifest,
    make_image,
)
from tests.api.protocol import push_image, push_manifest

# What real clients send, as seen on the wire.
CONTAINERS_IMAGE = [
    ("Accept", OCI_MANIFEST),
    ("Accept", DOCKER_MANIFEST),
    ("Accept", DOCKER_SCHEMA1_SIGNED),
    ("Accept", DOCKER_SCHEMA1),
    ("Accept", DOCKER_MANIFEST_LIST),
    ("Accept", OCI_INDEX),
]
DOCKER = [
    ("Accept", DOCKER_MANIFEST),
    ("Accept", DOCKER_MANIFEST_LIST),
    ("Accept", OCI_INDEX),
    ("Accept", OCI_MANIFEST),
    ("Accept", DOCKER_SCHEMA1_SIGNED),
]
CONTAINERD = [
    ("Accept", f"{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"),
]
CLIENTS = {"containers-image": CONTAINERS_IMAGE, "docker": DOCKER, "containerd": CONTAINERD}


def pushed(client: httpx.Client, repo: str, media_type: str) -> Manifest:
    """Push a manifest of ``media_type`` (and what it needs) tagged ``latest``."""
    docker = media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
    if media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        image = make_image(docker=docker)
        push_image(client, repo, image, "latest")
        return image.manifest
    children = [make_image(docker=docker) for _ in range(2)]
    for child in children:
        push_image(client, repo, child, child.manifest.digest)
    index = index_manifest([child.manifest for child in children], media_type=media_type)
    push_manifest(client, repo, "latest", index)
    return index


@pytest.mark.parametrize(
    "media_type", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]
)
@pytest.mark.parametrize("client_name", sorted(CLIENTS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_real_client_accept_headers(
    client: httpx.Client, repo: str, media_type: str, client_name: str, method: str
) -> None:
    manifest = pushed(client, repo, media_type)
    response = client.request(method, f"/v2/{repo}/manifests/latest", headers=CLIENTS[client_name])
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == media_type
    assert response.headers["docker-content-digest"] == manifest.digest
    assert int(response.headers["content-length"]) == manifest.size
    assert response.content == (manifest.body if method == "GET" else b"")


@pytest.mark.parametrize(
    "media_type", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]
)
def test_type_on_the_last_of_several_accept_lines(
    client: httpx.Client, repo: str, media_type: str
) -> None:
    manifest = pushed(client, repo, media_type)
    others = [
        t
        for t in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
        if t != media_type
    ]
    headers = [("Accept", other) for other in others] + [("Accept", media_type)]
    response = client.get(f"/v2/{repo}/manifests/{manifest.digest}", headers=headers)
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == media_type
    assert response.content == manifest.body


@pytest.mark.parametrize(
    "media_type", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]
)
def test_type_with_quality_parameter(client: httpx.Client, repo: str, media_type: str) -> None:
    manifest = pushed(client, repo, media_type)
    response = client.get(
        f"/v2/{repo}/manifests/latest",
        headers={"Accept": f"{DOCKER_SCHEMA1_SIGNED};q=0.1, {media_type} ;q=0.9"},
    )
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == media_type
    assert response.content == manifest.body


def test_manifest_list_for_a_client_accepting_only_images(client: httpx.Client, repo: str) -> None:
    # oci-content-negotiation.md: a schema2-only client asking for a manifest list gets the
    # linux/amd64 image (position 0 of the list is amd64 here)
    amd64 = make_image(docker=True)
    arm64 = make_image(docker=True)
    for child in (amd64, arm64):
        push_image(client, repo, child, child.manifest.digest)
    listing = index_manifest([amd64.manifest, arm64.manifest], media_type=DOCKER_MANIFEST_LIST)
    push_manifest(client, repo, "multi", listing)
    response = client.get(f"/v2/{repo}/manifests/multi", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["content-type"] == DOCKER_MANIFEST
    assert response.headers["docker-content-digest"] == amd64.manifest.digest
    assert response.content == amd64.manifest.body
