"""The referrers API (GET /v2/<name>/referrers/<digest>) and the OCI-Subject answer to a push
with a subject. Distribution 2.8.2 predates both."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.api.content import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    Manifest,
    digest_of,
    empty_config,
    image_manifest,
    index_manifest,
    make_artifact,
    make_image,
    random_blob,
    serialize,
)
from tests.api.protocol import (
    assert_error,
    follow,
    new_repo,
    push_blobs,
    push_image,
    push_manifest,
    put_manifest,
)

pytestmark = pytest.mark.dockyard_only("has no referrers API")

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
LEGACY_CONFIG = "application/vnd.example.legacy.config.v1+json"
LINK_RE = re.compile(r'^<([^>]+)>;\s*rel="?next"?$')


def referrers(client: httpx.Client, repo: str, digest: str, **params: str) -> httpx.Response:
    return client.get(f"/v2/{repo}/referrers/{digest}", params=params or None)


def assert_index(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    assert response.headers["content-type"].split(";")[0].strip() == OCI_INDEX
    document = response.json()
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == OCI_INDEX
    manifests: list[dict[str, Any]] = document["manifests"]
    assert isinstance(manifests, list)
    return manifests


def by_digest(descriptors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    digests = [descriptor["digest"] for descriptor in descriptors]
    assert len(digests) == len(set(digests)), f"duplicate referrers: {digests}"
    return {descriptor["digest"]: descriptor for descriptor in descriptors}


def push_referrer(client: httpx.Client, repo: str, artifact: Image) -> httpx.Response:
    push_blobs(client, repo, artifact.blobs)
    response = push_manifest(client, repo, artifact.manifest.digest, artifact.manifest)
    return response


class TestListing:
    @pytest.fixture
    def subject(self, client: httpx.Client, repo: str) -> Manifest:
        image = make_image()
        push_image(client, repo, image, "latest")
        return image.manifest

    def test_descriptors_carry_artifact_type_and_annotations(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        sbom = make_artifact(
            SBOM,
            subject=subject,
            annotations={
                "org.opencontainers.image.created": "2022-01-01T14:42:55Z",
                "org.example.sbom.format": "json",
            },
        )
        signature = make_artifact(
            SIGNATURE,
            subject=subject,
            annotations={
                "org.example.signature.fingerprint": "abcd",
            },
        )
        for artifact in (sbom, signature):
            push_referrer(client, repo, artifact)
        listed = by_digest(assert_index(referrers(client, repo, subject.digest)))
        assert set(listed) == {sbom.manifest.digest, signature.manifest.digest}
        for artifact, artifact_type in ((sbom, SBOM), (signature, SIGNATURE)):
            descriptor = listed[artifact.manifest.digest]
            assert descriptor["mediaType"] == OCI_MANIFEST
            assert descriptor["size"] == artifact.manifest.size
            assert descriptor["artifactType"] == artifact_type
            assert descriptor["annotations"] == artifact.manifest.document()["annotations"]

    def test_artifact_type_falls_back_to_config_media_type(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        config = Blob(b'{"legacy": true}', LEGACY_CONFIG)
        layer = random_blob(40)
        manifest = image_manifest(config, [layer], subject=subject)
        push_blobs(client, repo, [config, layer])
        push_manifest(client, repo, manifest.digest, manifest)
        (descriptor,) = assert_index(referrers(client, repo, subject.digest))
        assert descriptor["digest"] == manifest.digest
        assert descriptor["artifactType"] == LEGACY_CONFIG

    def test_index_referrers(self, client: httpx.Client, repo: str, subject: Manifest) -> None:
        child = make_image()
        push_image(client, repo, child, child.manifest.digest)
        typed = index_manifest(
            [child.manifest], subject=subject, artifact_type=SBOM, annotations={"kind": "typed"}
        )
        untyped = index_manifest([child.manifest], subject=subject, annotations={"kind": "untyped"})
        for index in (typed, untyped):
            push_manifest(client, repo, index.digest, index)
        listed = by_digest(assert_index(referrers(client, repo, subject.digest)))
        assert set(listed) == {typed.digest, untyped.digest}
        assert listed[typed.digest]["mediaType"] == OCI_INDEX
        assert listed[typed.digest]["artifactType"] == SBOM
        assert listed[typed.digest]["annotations"] == {"kind": "typed"}
        assert "artifactType" not in listed[untyped.digest]
        assert listed[untyped.digest]["annotations"] == {"kind": "untyped"}

    def test_artifact_type_filter(self, client: httpx.Client, repo: str, subject: Manifest) -> None:
        sboms = [make_artifact(SBOM, subject=subject) for _ in range(2)]
        signature = make_artifact(SIGNATURE, subject=subject)
        for artifact in (*sboms, signature):
            push_referrer(client, repo, artifact)
        response = referrers(client, repo, subject.digest, artifactType=SBOM)
        listed = by_digest(assert_index(response))
        assert set(listed) == {sbom.manifest.digest for sbom in sboms}
        assert response.headers["oci-filters-applied"] == "artifactType"
        assert all(descriptor["artifactType"] == SBOM for descriptor in listed.values())

    def test_filter_matching_nothing(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        push_referrer(client, repo, make_artifact(SBOM, subject=subject))
        response = referrers(client, repo, subject.digest, artifactType="application/x-none")
        assert assert_index(response) == []
        assert response.headers["oci-filters-applied"] == "artifactType"

    def test_unknown_digest_is_an_empty_index(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        assert assert_index(referrers(client, repo, random_blob(8).digest)) == []

    def test_subject_without_referrers(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        assert assert_index(referrers(client, repo, subject.digest)) == []

    def test_referrer_pushed_before_its_subject(self, client: httpx.Client, repo: str) -> None:
        subject = make_image()
        artifact = make_artifact(SIGNATURE, subject=subject.manifest)
        push_referrer(client, repo, artifact)
        listed = assert_index(referrers(client, repo, subject.manifest.digest))
        assert [d["digest"] for d in listed] == [artifact.manifest.digest]
        push_image(client, repo, subject, "late")
        listed = assert_index(referrers(client, repo, subject.manifest.digest))
        assert [d["digest"] for d in listed] == [artifact.manifest.digest]

    def test_deleted_referrer_leaves_the_list(
        self, client: httpx.Client, repo: str, subject: Manifest
    ) -> None:
        kept, deleted = (make_artifact(SBOM, subject=subject) for _ in range(2))
        for artifact in (kept, deleted):
            push_referrer(client, repo, artifact)
        response = client.delete(f"/v2/{repo}/manifests/{deleted.manifest.digest}")
        assert response.status_code == 202
        listed = assert_index(referrers(client, repo, subject.digest))
        assert [d["digest"] for d in listed] == [kept.manifest.digest]

    def test_referrers_are_per_repository(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        subject = make_image()
        push_image(client, repo_a, subject, "latest")
        push_image(client, repo_b, subject, "latest")
        artifact = make_artifact(SBOM, subject=subject.manifest)
        push_referrer(client, repo_a, artifact)
        assert assert_index(referrers(client, repo_b, subject.manifest.digest)) == []
        assert len(assert_index(referrers(client, repo_a, subject.manifest.digest))) == 1

    @pytest.mark.parametrize(
        "digest", ["sha256:zz", "md5:d41d8cd98f00b204e9800998ecf8427e", "latest"]
    )
    def test_invalid_digest_is_400(
        self, client: httpx.Client, repo: str, subject: Manifest, digest: str
    ) -> None:
        assert_error(referrers(client, repo, digest), 400)

    def test_unknown_repository(self, client: httpx.Client) -> None:
        response = referrers(client, new_repo(), random_blob(8).digest)
        if response.status_code == 404:
            assert_error(response, 404, "NAME_UNKNOWN")
        else:
            assert assert_index(response) == []


def test_sha512_subject(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    subject_digest = digest_of(image.manifest.body, "sha512")
    assert put_manifest(client, repo, subject_digest, image.manifest).status_code == 201
    payload = Blob(b"sbom payload")
    push_blobs(client, repo, [empty_config(), payload])
    document = make_artifact(SBOM).manifest.document()
    document["layers"] = [payload.descriptor()]
    document["subject"] = {
        "mediaType": OCI_MANIFEST,
        "digest": subject_digest,
        "size": image.manifest.size,
    }
    artifact = Manifest(serialize(document), OCI_MANIFEST)
    response = push_manifest(client, repo, artifact.digest, artifact)
    assert response.headers["oci-subject"] == subject_digest
    listed = assert_index(referrers(client, repo, subject_digest))
    assert [d["digest"] for d in listed] == [artifact.digest]
    assert assert_index(referrers(client, repo, image.manifest.digest)) == []


class TestOciSubjectHeader:
    def test_manifest_with_subject(self, client: httpx.Client, repo: str) -> None:
        subject = make_image()
        push_image(client, repo, subject, "latest")
        artifact = make_artifact(SBOM, subject=subject.manifest)
        response = push_referrer(client, repo, artifact)
        assert response.headers["oci-subject"] == subject.manifest.digest

    def test_index_with_subject(self, client: httpx.Client, repo: str) -> None:
        subject, child = make_image(), make_image()
        push_image(client, repo, subject, "latest")
        push_image(client, repo, child, child.manifest.digest)
        index = index_manifest([child.manifest], subject=subject.manifest, artifact_type=SBOM)
        response = push_manifest(client, repo, index.digest, index)
        assert response.headers["oci-subject"] == subject.manifest.digest

    def test_subject_not_yet_pushed(self, client: httpx.Client, repo: str) -> None:
        subject = make_image()
        artifact = make_artifact(SBOM, subject=subject.manifest)
        push_blobs(client, repo, artifact.blobs)
        response = put_manifest(client, repo, "sbom", artifact.manifest)
        assert response.status_code == 201
        assert response.headers["oci-subject"] == subject.manifest.digest


def test_many_referrers_paginate_with_link(client: httpx.Client, repo: str) -> None:
    """60 referrers with 80 KiB of annotations each: ~4.8 MiB of descriptors, more than fits
    in one manifest a registry must accept (4 MiB), so the list comes in pages."""
    subject = make_image()
    push_image(client, repo, subject, "latest")
    expected = set()
    for position in range(60):
        artifact = make_artifact(
            SBOM,
            subject=subject.manifest,
            annotations={"position": str(position), "padding": "p" * (80 * 1024)},
            payload=b"shared payload",
        )
        push_referrer(client, repo, artifact)
        expected.add(artifact.manifest.digest)
    seen: list[str] = []
    url: str | None = f"/v2/{repo}/referrers/{subject.manifest.digest}"
    pages = 0
    while url is not None:
        response = client.get(follow(client, url))
        assert len(response.content) <= 4 * 1024 * 1024, "a referrers page over 4 MiB"
        seen.extend(descriptor["digest"] for descriptor in assert_index(response))
        link = response.headers.get("link")
        url = None
        if link is not None:
            match = LINK_RE.match(link.strip())
            assert match, f"bad Link header {link!r}"
            url = match.group(1)
        pages += 1
        assert pages < 100
    assert pages > 1
    assert len(seen) == len(set(seen)), "a referrer listed twice"
    assert set(seen) == expected
