"""Pushing, pulling and deleting manifests of every kind clients push: Docker schema 2 images
and manifest lists, OCI images, indexes and artifacts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.content import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Manifest,
    digest_of,
    empty_config,
    image_config,
    image_manifest,
    index_manifest,
    make_artifact,
    make_image,
    random_blob,
    serialize,
)
from tests.api.protocol import (
    assert_error,
    assert_manifest_served,
    error_messages,
    follow,
    get_manifest,
    manifest_exists,
    new_repo,
    push_blob,
    push_blobs,
    push_image,
    push_manifest,
    put_manifest,
)

MIB = 1024 * 1024


def prepare_docker_image(client: httpx.Client, repo: str) -> Manifest:
    image = make_image(docker=True)
    push_blobs(client, repo, image.blobs)
    return image.manifest


def prepare_oci_image(client: httpx.Client, repo: str) -> Manifest:
    image = make_image(annotations={"org.opencontainers.image.title": "naïve café"})
    push_blobs(client, repo, image.blobs)
    return image.manifest


def prepare_docker_list(client: httpx.Client, repo: str) -> Manifest:
    children = [make_image(docker=True) for _ in range(2)]
    for child in children:
        push_image(client, repo, child, child.manifest.digest)
    return index_manifest([c.manifest for c in children], media_type=DOCKER_MANIFEST_LIST)


def prepare_oci_index(client: httpx.Client, repo: str) -> Manifest:
    children = [make_image() for _ in range(3)]
    for child in children:
        push_image(client, repo, child, child.manifest.digest)
    return index_manifest([c.manifest for c in children], annotations={"purpose": "test"})


def prepare_oci_artifact(client: httpx.Client, repo: str) -> Manifest:
    subject = make_image()
    push_image(client, repo, subject, subject.manifest.digest)
    artifact = make_artifact(
        "application/vnd.example.sbom.v1+json",
        subject=subject.manifest,
        annotations={"org.example.kind": "sbom"},
    )
    push_blobs(client, repo, artifact.blobs)
    return artifact.manifest


KINDS: dict[str, Callable[[httpx.Client, str], Manifest]] = {
    "docker-image": prepare_docker_image,
    "docker-manifest-list": prepare_docker_list,
    "oci-image": prepare_oci_image,
    "oci-index": prepare_oci_index,
    "oci-artifact": prepare_oci_artifact,
}


@pytest.fixture(params=sorted(KINDS))
def prepared(request: pytest.FixtureRequest, client: httpx.Client, repo: str) -> Manifest:
    """A manifest of each kind, with everything it references already pushed."""
    return KINDS[request.param](client, repo)


class TestPushAndPull:
    def test_push_by_tag(self, client: httpx.Client, repo: str, prepared: Manifest) -> None:
        response = put_manifest(client, repo, "v1.0", prepared)
        assert response.status_code == 201, response.content
        assert response.headers["docker-content-digest"] == prepared.digest
        pulled = client.get(
            follow(client, response.headers["location"]), headers={"Accept": prepared.media_type}
        )
        assert pulled.status_code == 200
        assert pulled.content == prepared.body
        assert_manifest_served(client, repo, "v1.0", prepared)
        assert_manifest_served(client, repo, prepared.digest, prepared)

    def test_push_by_digest(self, client: httpx.Client, repo: str, prepared: Manifest) -> None:
        response = put_manifest(client, repo, prepared.digest, prepared)
        assert response.status_code == 201, response.content
        assert response.headers["docker-content-digest"] == prepared.digest
        assert_manifest_served(client, repo, prepared.digest, prepared)

    def test_head(self, client: httpx.Client, repo: str, prepared: Manifest) -> None:
        push_manifest(client, repo, "latest", prepared)
        for reference in ("latest", prepared.digest):
            response = get_manifest(client, repo, reference, method="HEAD")
            assert response.status_code == 200
            assert response.content == b""
            assert response.headers["content-type"] == prepared.media_type
            assert response.headers["docker-content-digest"] == prepared.digest
            assert int(response.headers["content-length"]) == prepared.size

    def test_etag_and_if_none_match(
        self, client: httpx.Client, repo: str, prepared: Manifest
    ) -> None:
        push_manifest(client, repo, "latest", prepared)
        response = get_manifest(client, repo, prepared.digest)
        assert response.headers["etag"].removeprefix("W/") == f'"{prepared.digest}"'
        for reference in (prepared.digest, "latest"):
            cached = client.get(
                f"/v2/{repo}/manifests/{reference}",
                headers=[
                    ("Accept", prepared.media_type),
                    ("If-None-Match", f'"{prepared.digest}"'),
                ],
            )
            assert cached.status_code == 304, reference
            assert cached.content == b""

    @pytest.mark.dockyard_only("compares If-None-Match as one opaque string")
    @pytest.mark.parametrize("form", ["list", "weak"])
    def test_if_none_match_forms(
        self, client: httpx.Client, repo: str, prepared: Manifest, form: str
    ) -> None:
        push_manifest(client, repo, "latest", prepared)
        other = random_blob(8).digest
        value = {
            "list": f'"{other}", "{prepared.digest}"',
            "weak": f'W/"{prepared.digest}"',  # If-None-Match compares weakly (RFC 9110)
        }[form]
        for method in ("GET", "HEAD"):
            cached = client.request(
                method,
                f"/v2/{repo}/manifests/latest",
                headers=[("Accept", prepared.media_type), ("If-None-Match", value)],
            )
            assert cached.status_code == 304, method

    def test_push_twice_is_idempotent(
        self, client: httpx.Client, repo: str, prepared: Manifest
    ) -> None:
        push_manifest(client, repo, "a", prepared)
        push_manifest(client, repo, "a", prepared)
        push_manifest(client, repo, prepared.digest, prepared)
        assert_manifest_served(client, repo, "a", prepared)


def test_if_none_match_with_other_etag_is_200(client: httpx.Client, repo: str) -> None:
    manifest = prepare_oci_image(client, repo)
    push_manifest(client, repo, "latest", manifest)
    response = client.get(
        f"/v2/{repo}/manifests/latest",
        headers=[("Accept", OCI_MANIFEST), ("If-None-Match", f'"{random_blob(8).digest}"')],
    )
    assert response.status_code == 200
    assert response.content == manifest.body


def test_exact_bytes_are_kept(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    document = image.manifest.document()
    variants = [
        json.dumps(document, separators=(",", ":")).encode(),  # compact, no newline
        json.dumps(document, indent=7).encode() + b"\r\n",
        b"  \n" + json.dumps(dict(reversed(document.items()))).encode() + b" \t ",
        serialize({**document, "annotations": {"emoji": "\U0001f6a2", "ja": "コンテナ"}}),
    ]
    for position, body in enumerate(variants):
        manifest = Manifest(body, OCI_MANIFEST)
        response = push_manifest(client, repo, f"variant{position}", manifest)
        assert response.headers["docker-content-digest"] == digest_of(body)
        assert_manifest_served(client, repo, f"variant{position}", manifest)
        assert_manifest_served(client, repo, manifest.digest, manifest)


def test_oci_artifact_with_empty_config(client: httpx.Client, repo: str) -> None:
    config = empty_config()
    assert config.digest == EMPTY_JSON_DIGEST and config.size == 2 and config.data == EMPTY_JSON
    push_blob(client, repo, config)
    manifest = image_manifest(config, [config], artifact_type="application/vnd.example.thing.v1")
    push_manifest(client, repo, "thing", manifest)
    assert_manifest_served(client, repo, "thing", manifest)
    pulled = client.get(f"/v2/{repo}/blobs/{EMPTY_JSON_DIGEST}")
    assert pulled.content == b"{}"


def test_manifest_without_media_type_field(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    manifest = image_manifest(image.config, image.layers, include_media_type=False)
    push_manifest(client, repo, "plain", manifest)
    assert_manifest_served(client, repo, "plain", manifest)


def test_content_type_parameters_are_ignored(client: httpx.Client, repo: str) -> None:
    manifest = prepare_oci_image(client, repo)
    response = client.put(
        f"/v2/{repo}/manifests/params",
        content=manifest.body,
        headers={"Content-Type": f"{OCI_MANIFEST}; charset=utf-8"},
    )
    assert response.status_code == 201
    pulled = get_manifest(client, repo, "params")
    assert pulled.content == manifest.body
    assert pulled.headers["content-type"].split(";")[0].strip() == OCI_MANIFEST


def test_tag_moves_to_new_manifest(client: httpx.Client, repo: str) -> None:
    first = prepare_oci_image(client, repo)
    second = prepare_oci_image(client, repo)
    push_manifest(client, repo, "latest", first)
    push_manifest(client, repo, "latest", second)
    assert_manifest_served(client, repo, "latest", second)
    assert_manifest_served(client, repo, first.digest, first)


def test_manifest_of_one_repository_is_unknown_in_another(client: httpx.Client) -> None:
    repo_a, repo_b = new_repo(), new_repo()
    manifest = prepare_oci_image(client, repo_a)
    push_manifest(client, repo_a, "latest", manifest)
    push_manifest(client, repo_b, "other", prepare_oci_image(client, repo_b))
    assert_error(get_manifest(client, repo_b, manifest.digest), 404, "MANIFEST_UNKNOWN")


def test_exactly_4_mib_manifest_is_accepted(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    base = image_manifest(image.config, image.layers, annotations={"pad": ""})
    padding = 4 * MIB - base.size
    manifest = image_manifest(image.config, image.layers, annotations={"pad": "x" * padding})
    assert manifest.size == 4 * MIB
    push_manifest(client, repo, "big", manifest)
    assert_manifest_served(client, repo, "big", manifest)


@pytest.mark.dockyard_only("refuses manifests over 4 MiB with 400, not 413")
def test_manifest_over_4_mib_is_413(client: httpx.Client, repo: str) -> None:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    base = image_manifest(image.config, image.layers, annotations={"pad": ""})
    manifest = image_manifest(
        image.config, image.layers, annotations={"pad": "x" * (4 * MIB + 1 - base.size)}
    )
    assert manifest.size == 4 * MIB + 1
    response = put_manifest(client, repo, "too-big", manifest)
    assert_error(response, 413)
    assert not manifest_exists(client, repo, "too-big")
    assert not manifest_exists(client, repo, manifest.digest)


class TestReferencesMustExist:
    def test_missing_layer(self, client: httpx.Client, repo: str) -> None:
        image = make_image()
        push_blob(client, repo, image.config)
        push_blob(client, repo, image.layers[0])
        response = put_manifest(client, repo, "latest", image.manifest)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert not manifest_exists(client, repo, "latest")
        assert not manifest_exists(client, repo, image.manifest.digest)

    def test_missing_config(self, client: httpx.Client, repo: str) -> None:
        image = make_image(docker=True)
        push_blobs(client, repo, image.layers)
        response = put_manifest(client, repo, "latest", image.manifest)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert not manifest_exists(client, repo, "latest")

    def test_blob_only_in_another_repository(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        image = make_image()
        push_blobs(client, repo_a, image.blobs)
        push_blob(client, repo_b, image.config)
        response = put_manifest(client, repo_b, "latest", image.manifest)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert not manifest_exists(client, repo_b, "latest")

    @pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
    def test_missing_child_manifest(self, client: httpx.Client, repo: str, media_type: str) -> None:
        pushed = make_image(docker=True)
        push_image(client, repo, pushed, pushed.manifest.digest)
        missing = make_image(docker=True)
        push_blobs(client, repo, missing.blobs)  # blobs there, the manifest itself is not
        index = index_manifest([pushed.manifest, missing.manifest], media_type=media_type)
        response = put_manifest(client, repo, "multi", index)
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert not manifest_exists(client, repo, "multi")

    def test_child_manifest_only_in_another_repository(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        child = make_image()
        push_image(client, repo_a, child, child.manifest.digest)
        push_blobs(client, repo_b, child.blobs)
        response = put_manifest(client, repo_b, "multi", index_manifest([child.manifest]))
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")

    def test_subject_may_be_missing(self, client: httpx.Client, repo: str) -> None:
        subject = make_image()  # never pushed
        artifact = make_artifact("application/vnd.example.sig", subject=subject.manifest)
        push_blobs(client, repo, artifact.blobs)
        response = put_manifest(client, repo, artifact.manifest.digest, artifact.manifest)
        assert response.status_code == 201, response.content
        assert_manifest_served(client, repo, artifact.manifest.digest, artifact.manifest)
        # ... and the subject can be pushed afterwards
        push_image(client, repo, subject, "subject")
        assert_manifest_served(client, repo, "subject", subject.manifest)


class TestSchema1IsRefused:
    SCHEMA1 = {
        "schemaVersion": 1,
        "name": "library/x",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": EMPTY_JSON_DIGEST}],
        "history": [{"v1Compatibility": "{}"}],
    }

    @pytest.mark.parametrize("content_type", [DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1])
    def test_schema1_media_types(self, client: httpx.Client, repo: str, content_type: str) -> None:
        response = client.put(
            f"/v2/{repo}/manifests/old",
            content=serialize(self.SCHEMA1),
            headers={"Content-Type": content_type},
        )
        assert_error(response, 400, "MANIFEST_INVALID")
        assert not manifest_exists(client, repo, "old")

    @pytest.mark.parametrize(
        "content_type",
        [
            pytest.param(
                OCI_MANIFEST,
                marks=pytest.mark.dockyard_only("answers 500 to schemaVersion 1 as an OCI type"),
            ),
            DOCKER_MANIFEST,
            "application/json",
        ],
    )
    def test_schema_version_1_under_other_types(
        self, client: httpx.Client, repo: str, content_type: str
    ) -> None:
        response = client.put(
            f"/v2/{repo}/manifests/old",
            content=serialize(self.SCHEMA1),
            headers={"Content-Type": content_type},
        )
        assert_error(response, 400, "MANIFEST_INVALID")
        assert not manifest_exists(client, repo, "old")

    @pytest.mark.dockyard_only("its refusal says only 'manifest invalid'")
    def test_refusal_explains_itself(self, client: httpx.Client, repo: str) -> None:
        response = client.put(
            f"/v2/{repo}/manifests/old",
            content=serialize(self.SCHEMA1),
            headers={"Content-Type": DOCKER_SCHEMA1_SIGNED},
        )
        assert_error(response, 400, "MANIFEST_INVALID")
        assert re.search(r"schema ?1|schema ?version ?1|v1", error_messages(response), re.I), (
            response.json()
        )


class TestSha512:
    """Manifests and descriptors may use sha512 digests (OCI image spec, descriptor.md)."""

    def test_manifest_referencing_sha512_blobs(self, client: httpx.Client, repo: str) -> None:
        layer = random_blob(700, algorithm="sha512")
        config = Blob(image_config(layers=[layer]).data, OCI_CONFIG, algorithm="sha512")
        push_blobs(client, repo, [config, layer])
        manifest = image_manifest(config, [layer])
        push_manifest(client, repo, "sha512", manifest)
        assert_manifest_served(client, repo, "sha512", manifest)
        assert client.get(f"/v2/{repo}/blobs/{layer.digest}").content == layer.data

    def test_sha512_blob_missing(self, client: httpx.Client, repo: str) -> None:
        layer = random_blob(700, algorithm="sha512")
        config = Blob(image_config(layers=[layer]).data, OCI_CONFIG, algorithm="sha512")
        push_blobs(client, repo, [config])
        response = put_manifest(client, repo, "sha512", image_manifest(config, [layer]))
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")

    @pytest.mark.dockyard_only("does not accept a manifest pushed by a sha512 reference")
    def test_push_by_sha512_digest(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        digest = digest_of(manifest.body, "sha512")
        response = put_manifest(client, repo, digest, manifest)
        assert response.status_code == 201, response.content
        assert response.headers["docker-content-digest"] == digest
        pulled = get_manifest(client, repo, digest)
        assert pulled.status_code == 200
        assert pulled.content == manifest.body
        assert pulled.headers["content-type"] == OCI_MANIFEST

    @pytest.mark.dockyard_only("does not accept a manifest pushed by a sha512 reference")
    def test_sha512_reference_mismatch(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        wrong = digest_of(b"something else", "sha512")
        assert_error(put_manifest(client, repo, wrong, manifest), 400, "DIGEST_INVALID")
        assert not manifest_exists(client, repo, wrong)


class TestIndexes:
    def test_nested_index(self, client: httpx.Client, repo: str) -> None:
        image = make_image()
        push_image(client, repo, image, image.manifest.digest)
        inner = index_manifest([image.manifest])
        push_manifest(client, repo, inner.digest, inner)
        outer = index_manifest([inner])
        push_manifest(client, repo, "nested", outer)
        assert_manifest_served(client, repo, "nested", outer)

    @pytest.mark.dockyard_only("takes a blob holding the child's bytes for the child manifest")
    def test_child_that_is_only_a_blob(self, client: httpx.Client, repo: str) -> None:
        """The child's bytes were pushed as a blob, never as a manifest."""
        child = make_image()
        push_blobs(client, repo, child.blobs)
        push_blob(client, repo, Blob(child.manifest.body))
        response = put_manifest(client, repo, "multi", index_manifest([child.manifest]))
        assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
        assert not manifest_exists(client, repo, "multi")

    def test_mixed_docker_and_oci_children(self, client: httpx.Client, repo: str) -> None:
        docker, oci = make_image(docker=True), make_image()
        for child in (docker, oci):
            push_image(client, repo, child, child.manifest.digest)
        index = index_manifest([docker.manifest, oci.manifest])
        push_manifest(client, repo, "mixed", index)
        assert_manifest_served(client, repo, "mixed", index)


def test_concurrent_pushes_to_one_tag(client: httpx.Client, repo: str) -> None:
    manifests = [prepare_oci_image(client, repo) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda m: put_manifest(client, repo, "race", m).status_code, manifests)
        )
    assert statuses == [201] * 8
    pulled = get_manifest(client, repo, "race")
    assert pulled.content in {m.body for m in manifests}
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["race"]
    for manifest in manifests:
        assert_manifest_served(client, repo, manifest.digest, manifest)


class TestPushByDigest:
    def test_digest_mismatch(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        wrong = random_blob(32).digest
        assert_error(put_manifest(client, repo, wrong, manifest), 400, "DIGEST_INVALID")
        assert not manifest_exists(client, repo, wrong)
        assert not manifest_exists(client, repo, manifest.digest)

    @pytest.mark.dockyard_only("ignores ?tag= on manifest PUT")
    def test_several_tags_at_once(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        url = f"/v2/{repo}/manifests/{manifest.digest}?tag=1.2.3&tag=1.2&tag=1&tag=latest"
        response = client.put(
            url, content=manifest.body, headers={"Content-Type": manifest.media_type}
        )
        assert response.status_code == 201, response.content
        announced = [
            tag.strip()
            for value in response.headers.get_list("oci-tag")
            for tag in value.split(",")
        ]
        assert sorted(announced) == sorted(["1.2.3", "1.2", "1", "latest"])
        for tag in ("1.2.3", "1.2", "1", "latest"):
            assert_manifest_served(client, repo, tag, manifest)
        listed = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        assert sorted(listed) == ["1", "1.2", "1.2.3", "latest"]

    @pytest.mark.dockyard_only("ignores ?tag= on manifest PUT")
    def test_ten_tags_at_once(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        tags = [f"t{i}" for i in range(10)]
        query = "&".join(f"tag={tag}" for tag in tags)
        response = client.put(
            f"/v2/{repo}/manifests/{manifest.digest}?{query}",
            content=manifest.body,
            headers={"Content-Type": manifest.media_type},
        )
        assert response.status_code == 201, response.content
        announced = {
            tag.strip()
            for value in response.headers.get_list("oci-tag")
            for tag in value.split(",")
        }
        assert announced == set(tags)
        assert sorted(client.get(f"/v2/{repo}/tags/list").json()["tags"]) == sorted(tags)

    @pytest.mark.dockyard_only("ignores ?tag= on manifest PUT")
    def test_invalid_tag_parameter_stores_nothing(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        url = f"/v2/{repo}/manifests/{manifest.digest}?tag=good&tag=-bad"
        response = client.put(
            url, content=manifest.body, headers={"Content-Type": manifest.media_type}
        )
        assert_error(response, 400)
        assert not manifest_exists(client, repo, "good")


class TestUnknown:
    def test_unknown_tag(self, client: httpx.Client, repo: str) -> None:
        push_manifest(client, repo, "exists", prepare_oci_image(client, repo))
        assert_error(get_manifest(client, repo, "missing"), 404, "MANIFEST_UNKNOWN")
        assert_error(get_manifest(client, repo, "missing", method="HEAD"), 404)

    def test_unknown_digest(self, client: httpx.Client, repo: str) -> None:
        push_manifest(client, repo, "exists", prepare_oci_image(client, repo))
        digest = random_blob(8).digest
        assert_error(get_manifest(client, repo, digest), 404, "MANIFEST_UNKNOWN")
        assert_error(client.delete(f"/v2/{repo}/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")

    def test_unknown_repository(self, client: httpx.Client) -> None:
        repo = new_repo()
        response = get_manifest(client, repo, "latest")
        assert_error(response, 404, "NAME_UNKNOWN", "MANIFEST_UNKNOWN")
        response = client.delete(f"/v2/{repo}/manifests/{random_blob(8).digest}")
        assert_error(response, 404, "NAME_UNKNOWN", "MANIFEST_UNKNOWN")


class TestDelete:
    def test_delete_by_digest_removes_manifest_and_tags(
        self, client: httpx.Client, repo: str
    ) -> None:
        doomed = prepare_oci_image(client, repo)
        kept = prepare_oci_image(client, repo)
        for tag in ("a", "b", "c"):
            push_manifest(client, repo, tag, doomed)
        push_manifest(client, repo, "kept", kept)
        response = client.delete(f"/v2/{repo}/manifests/{doomed.digest}")
        assert response.status_code == 202
        assert_error(get_manifest(client, repo, doomed.digest), 404, "MANIFEST_UNKNOWN")
        for tag in ("a", "b", "c"):
            assert_error(get_manifest(client, repo, tag), 404, "MANIFEST_UNKNOWN")
        assert_manifest_served(client, repo, "kept", kept)
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["kept"]

    def test_delete_by_digest_twice(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        push_manifest(client, repo, "latest", manifest)
        assert client.delete(f"/v2/{repo}/manifests/{manifest.digest}").status_code == 202
        response = client.delete(f"/v2/{repo}/manifests/{manifest.digest}")
        assert_error(response, 404, "MANIFEST_UNKNOWN")

    def test_push_again_after_delete(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        push_manifest(client, repo, "latest", manifest)
        assert client.delete(f"/v2/{repo}/manifests/{manifest.digest}").status_code == 202
        push_manifest(client, repo, "again", manifest)
        assert_manifest_served(client, repo, "again", manifest)

    @pytest.mark.dockyard_only("refuses DELETE by tag (400 DIGEST_INVALID)")
    def test_delete_by_tag_removes_only_the_tag(self, client: httpx.Client, repo: str) -> None:
        manifest = prepare_oci_image(client, repo)
        push_manifest(client, repo, "gone", manifest)
        push_manifest(client, repo, "stays", manifest)
        response = client.delete(f"/v2/{repo}/manifests/gone")
        assert response.status_code == 202
        assert_error(get_manifest(client, repo, "gone"), 404, "MANIFEST_UNKNOWN")
        assert_manifest_served(client, repo, manifest.digest, manifest)
        assert_manifest_served(client, repo, "stays", manifest)
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["stays"]

    @pytest.mark.dockyard_only("refuses DELETE by tag (400 DIGEST_INVALID)")
    def test_delete_unknown_tag(self, client: httpx.Client, repo: str) -> None:
        push_manifest(client, repo, "exists", prepare_oci_image(client, repo))
        assert_error(client.delete(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN")

    def test_delete_in_one_repository_leaves_another(self, client: httpx.Client) -> None:
        repo_a, repo_b = new_repo(), new_repo()
        image = make_image()
        push_image(client, repo_a, image, "latest")
        push_image(client, repo_b, image, "latest")
        assert client.delete(f"/v2/{repo_a}/manifests/{image.manifest.digest}").status_code == 202
        assert_manifest_served(client, repo_b, "latest", image.manifest)
