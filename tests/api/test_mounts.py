"""Cross-repository blob mounts: POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import random_blob
from tests.api.protocol import (
    assert_blob_served,
    assert_error,
    blob_exists,
    follow,
    new_repo,
    push_blob,
    with_query,
)


def mount(client: httpx.Client, repo: str, digest: str, source: str) -> httpx.Response:
    return client.post(
        with_query(f"/v2/{repo}/blobs/uploads/", mount=digest, **{"from": source}),
        headers={"Content-Length": "0"},
    )


def assert_upload_session(client: httpx.Client, response: httpx.Response, repo: str) -> None:
    """A 202 that is a normal, usable upload session."""
    assert response.status_code == 202, (response.status_code, response.content)
    assert response.headers.get("docker-upload-uuid")
    location = follow(client, response.headers["location"])
    blob = random_blob(50)
    done = client.put(with_query(location, digest=blob.digest), content=blob.data)
    assert done.status_code == 201
    assert_blob_served(client, repo, blob)


def test_mount_from_repository_holding_the_blob(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    blob = random_blob(2000)
    push_blob(client, source, blob)
    response = mount(client, target, blob.digest, source)
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == blob.digest
    pulled = client.get(follow(client, response.headers["location"]))
    assert pulled.content == blob.data
    assert_blob_served(client, target, blob)
    assert_blob_served(client, source, blob)


def test_mount_of_a_blob_the_source_lacks_starts_an_upload(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    push_blob(client, source, random_blob(10))
    missing = random_blob(10)
    response = mount(client, target, missing.digest, source)
    assert_upload_session(client, response, target)
    assert not blob_exists(client, target, missing.digest)


def test_mount_from_unknown_repository_starts_an_upload(client: httpx.Client) -> None:
    target = new_repo()
    response = mount(client, target, random_blob(10).digest, new_repo())
    assert_upload_session(client, response, target)


def test_mount_does_not_leak_blobs_of_other_repositories(client: httpx.Client) -> None:
    holder, source, target = new_repo(), new_repo(), new_repo()
    blob = random_blob(500)
    push_blob(client, holder, blob)
    push_blob(client, source, random_blob(10))
    # the blob is in the registry, but not in the repository named as the source
    response = mount(client, target, blob.digest, source)
    if response.status_code == 202:
        assert not blob_exists(client, target, blob.digest)
    else:
        # "The registry MAY treat the from parameter as optional"
        assert response.status_code == 201
        assert_blob_served(client, target, blob)
    assert not blob_exists(client, source, blob.digest)


def test_mounted_blob_survives_deletion_in_source(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    blob = random_blob(700)
    push_blob(client, source, blob)
    assert mount(client, target, blob.digest, source).status_code == 201
    assert client.delete(f"/v2/{source}/blobs/{blob.digest}").status_code == 202
    assert not blob_exists(client, source, blob.digest)
    assert_blob_served(client, target, blob)


def test_mount_into_repository_that_has_it(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    blob = random_blob(100)
    push_blob(client, source, blob)
    push_blob(client, target, blob)
    assert mount(client, target, blob.digest, source).status_code == 201
    assert_blob_served(client, target, blob)


@pytest.mark.dockyard_only("links a mounted sha512 blob under its sha256 digest only")
def test_mount_with_sha512_digest(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    blob = random_blob(100, algorithm="sha512")
    push_blob(client, source, blob)
    response = mount(client, target, blob.digest, source)
    assert response.status_code == 201
    assert_blob_served(client, target, blob)


@pytest.mark.parametrize("digest", ["sha256:zz", "md5:d41d8cd98f00b204e9800998ecf8427e", ""])
def test_mount_with_invalid_digest(client: httpx.Client, digest: str) -> None:
    source, target = new_repo(), new_repo()
    push_blob(client, source, random_blob(10))
    response = mount(client, target, digest, source)
    # Docker's API falls back to a plain upload; OCI 1.1+ may refuse a bad digest with 400
    if response.status_code == 400:
        assert_error(response, 400, "DIGEST_INVALID", "UNSUPPORTED")
    else:
        assert_upload_session(client, response, target)


def test_mount_from_invalid_repository_name(client: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    blob = random_blob(10)
    push_blob(client, source, blob)
    response = mount(client, target, blob.digest, "Not/A/../Valid//Name")
    if response.status_code == 400:
        assert_error(response, 400, "NAME_INVALID")
    else:
        assert_upload_session(client, response, target)
        assert not blob_exists(client, target, blob.digest)
