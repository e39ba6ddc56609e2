"""Repository names and references a registry must refuse (NAME_INVALID and friends), sent
byte-for-byte (no client-side normalization of ``..`` or ``//``)."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import OCI_MANIFEST, make_image, random_blob
from tests.api.protocol import (
    API_VERSION,
    API_VERSION_HEADER,
    RawResponse,
    Sentinel,
    assert_error,
    manifest_exists,
    new_repo,
    push_blobs,
    push_image,
    raw_request,
    start_upload,
)
from tests.support.processes import Server

PLAIN_404 = "routes invalid names and tags to a plain-text 404 or a 301"

DIGEST = "sha256:" + "ab" * 32

INVALID_NAMES = [
    "Upper",
    "lower/Upper",
    "foo/../bar",
    "foo/..",
    "../foo",
    "foo/./bar",
    "foo/%2e%2e/bar",
    "%2e%2e/foo",
    "foo/%2E%2E",
    "foo/",
    "a//b",
    "/leading",
    "a" * 256,
    "/".join(["abcdefg"] * 40),
    "-foo",
    "foo-",
    "foo.",
    ".foo",
    "_foo",
    "a___b",
    "a..b",
    "foo/-bar",
    "foo%00bar",
    "caf%C3%A9",
    "foo%20bar",
    "foo\\bar",
    "foo%5Cbar",
    "foo:bar",
    "foo@bar",
]

ENDPOINTS = [
    ("GET", "/v2/{name}/tags/list"),
    ("GET", "/v2/{name}/manifests/latest"),
    ("HEAD", "/v2/{name}/manifests/latest"),
    ("PUT", "/v2/{name}/manifests/latest"),
    ("DELETE", "/v2/{name}/manifests/" + DIGEST),
    ("GET", "/v2/{name}/blobs/" + DIGEST),
    ("DELETE", "/v2/{name}/blobs/" + DIGEST),
    ("POST", "/v2/{name}/blobs/uploads/"),
    ("GET", "/v2/{name}/referrers/" + DIGEST),
]


def assert_raw_error(response: RawResponse, status: int, *codes: str) -> None:
    assert response.status == status, (response.status, response.body[:300])
    assert response.header(API_VERSION_HEADER) == API_VERSION
    assert b"Traceback" not in response.body
    if codes and response.body:
        found = {entry["code"] for entry in response.json()["errors"]}
        assert found & set(codes), (codes, response.body[:300])


@pytest.mark.dockyard_only(PLAIN_404)
@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: n[:40])
@pytest.mark.parametrize(("method", "template"), ENDPOINTS, ids=lambda v: str(v)[:30])
def test_invalid_name_is_name_invalid(
    registry: Server, method: str, template: str, name: str
) -> None:
    manifest = make_image().manifest
    body = manifest.body if method == "PUT" else None
    headers = [("Content-Type", OCI_MANIFEST)] if method == "PUT" else []
    response = raw_request(registry.url, method, template.format(name=name), headers, body)
    assert_raw_error(response, 400, "NAME_INVALID")


@pytest.mark.dockyard_only(PLAIN_404)
def test_dot_dot_does_not_reach_another_repository(
    registry: Server, client: httpx.Client, sentinel: Sentinel
) -> None:
    """A push through ``<repo>/../<other>`` must not land in ``<other>``."""
    other = new_repo()
    image = make_image()
    push_blobs(client, other, image.blobs)
    response = raw_request(
        registry.url,
        "PUT",
        f"/v2/{new_repo()}/../{other}/manifests/sneaky",
        [("Content-Type", OCI_MANIFEST)],
        image.manifest.body,
    )
    assert_raw_error(response, 400, "NAME_INVALID")
    assert not manifest_exists(client, other, "sneaky")
    assert not manifest_exists(client, other, image.manifest.digest)
    sentinel.assert_intact(client)


@pytest.mark.dockyard_only(PLAIN_404)
def test_encoded_dot_dot_does_not_reach_another_repository(
    registry: Server, client: httpx.Client, sentinel: Sentinel
) -> None:
    other = new_repo()
    blob = random_blob(64)
    response = raw_request(
        registry.url,
        "POST",
        f"/v2/{new_repo()}/%2e%2e/{other}/blobs/uploads/?digest={blob.digest}",
        [("Content-Type", "application/octet-stream")],
        blob.data,
    )
    assert_raw_error(response, 400, "NAME_INVALID")
    assert client.head(f"/v2/{other}/blobs/{blob.digest}").status_code == 404
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "name",
    ["a__b", "a---b", "a.b/c_d/e-f", "0/1/2", "x" * 200, "/".join(["abc"] * 50)],
    ids=lambda n: n[:30],
)
def test_unusual_valid_names_are_accepted(client: httpx.Client, name: str) -> None:
    start_upload(client, f"{name}")


@pytest.mark.dockyard_only(PLAIN_404)
@pytest.mark.parametrize(
    "tag",
    ["-bad", ".bad", "bad!tag", "t" * 129, "%2e%2e", "bad%00tag", "b%C3%A4d"],
    ids=lambda t: t[:30],
)
def test_invalid_tag_on_push(registry: Server, client: httpx.Client, tag: str) -> None:
    repo = new_repo()
    image = make_image()
    push_image(client, repo, image, "good")
    response = raw_request(
        registry.url,
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        [("Content-Type", OCI_MANIFEST)],
        image.manifest.body,
    )
    assert_raw_error(response, 400, "TAG_INVALID", "MANIFEST_INVALID", "NAME_INVALID")
    tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["good"]


@pytest.mark.dockyard_only(PLAIN_404)
@pytest.mark.parametrize(
    "reference",
    ["-bad", "t" * 129, "sha256:zz", "sha256:" + "a" * 63, "md5:" + "a" * 32],
    ids=lambda t: t[:30],
)
def test_invalid_reference_on_pull(registry: Server, client: httpx.Client, reference: str) -> None:
    repo = new_repo()
    push_image(client, repo, make_image(), "good")
    response = raw_request(registry.url, "GET", f"/v2/{repo}/manifests/{reference}")
    assert response.status in (400, 404), response.status
    assert_raw_error(
        response,
        response.status,
        "TAG_INVALID",
        "MANIFEST_INVALID",
        "NAME_INVALID",
        "DIGEST_INVALID",
        "MANIFEST_UNKNOWN",
    )


@pytest.mark.dockyard_only(PLAIN_404)
def test_digest_reference_with_bad_syntax_on_push(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    response = client.put(
        f"/v2/{repo}/manifests/sha256:zz",
        content=image.manifest.body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert_error(response, 400, "DIGEST_INVALID", "MANIFEST_INVALID", "TAG_INVALID")
    assert not manifest_exists(client, repo, image.manifest.digest)
