"""The pure protocol model: digests, names, manifest parsing."""

from __future__ import annotations

import json

import pytest

from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import compute_digest, parse_digest
from dockyard.oci.errors import DigestInvalid, ManifestInvalid, NameInvalid
from dockyard.oci.manifests import parse_manifest
from dockyard.oci.names import is_valid_tag, validate_name

SHA = "sha256:" + "a" * 64


def test_digest_roundtrip() -> None:
    digest = compute_digest(b"hello")
    assert digest == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert str(parse_digest(digest)) == digest
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    "value",
    ["sha256:zz", "sha256:" + "a" * 63, "md5:abc", "sha256", "", "SHA256:" + "a" * 64, "sha256:"],
)
def test_bad_digests_are_refused(value: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(value)


@pytest.mark.parametrize("name", ["a", "team/app", "a.b/c_d/e__f/g-h", "a--b", "0/1/2"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["A", "a/", "/a", "a//b", "../a", "a/../b", "a/.", "-a", "a_", "a___b", "a" * 256, "a b"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)


def test_tags() -> None:
    assert is_valid_tag("latest") and is_valid_tag("1.0_rc-1") and is_valid_tag("a" * 128)
    assert not is_valid_tag("-x") and not is_valid_tag(".x") and not is_valid_tag("a" * 129)
    assert not is_valid_tag("a/b") and not is_valid_tag("")


def _manifest(**extra: object) -> bytes:
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": SHA, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": SHA, "size": 5}
        ],
    }
    document.update(extra)
    return json.dumps(document).encode()


def test_parse_image_manifest() -> None:
    parsed = parse_manifest(_manifest(), mt.OCI_MANIFEST)
    assert parsed.media_type == mt.OCI_MANIFEST
    assert [d.digest for d in parsed.blob_references] == [SHA, SHA]
    assert parsed.effective_artifact_type == mt.OCI_CONFIG
    assert parsed.subject is None


def test_parse_artifact_with_subject() -> None:
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": SHA, "size": 10}
    parsed = parse_manifest(
        _manifest(artifactType="application/x.sig", subject=subject, annotations={"a": "b"}),
        mt.OCI_MANIFEST,
    )
    assert parsed.subject is not None and parsed.subject.digest == SHA
    assert parsed.effective_artifact_type == "application/x.sig"
    assert parsed.annotations == {"a": "b"}


def test_parse_index() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": SHA, "size": 3}],
        }
    ).encode()
    parsed = parse_manifest(body, mt.OCI_INDEX)
    assert parsed.is_index and [d.digest for d in parsed.manifests] == [SHA]
    assert parsed.blob_references == ()


def test_media_type_from_content_type_when_field_absent() -> None:
    document = json.loads(_manifest())
    del document["mediaType"]
    parsed = parse_manifest(json.dumps(document).encode(), mt.DOCKER_MANIFEST)
    assert parsed.media_type == mt.DOCKER_MANIFEST


def test_foreign_layers_are_not_required() -> None:
    layer = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}
    layer |= {"digest": "sha256:" + "b" * 64, "size": 1}
    parsed = parse_manifest(_manifest(mediaType=mt.DOCKER_MANIFEST, layers=[layer]), None)
    assert [d.digest for d in parsed.blob_references] == [SHA]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"not json", mt.OCI_MANIFEST, "JSON"),
        (b"[]", mt.OCI_MANIFEST, "object"),
        (b'{"schemaVersion": 1, "fsLayers": []}', None, "schema 1"),
        (b"{}", mt.DOCKER_SCHEMA1_SIGNED, "schema 1"),
        (b'{"schemaVersion": 3}', mt.OCI_MANIFEST, "schemaVersion"),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', None, "unsupported"),
        (b'{"schemaVersion": 2, "mediaType": "' + mt.OCI_INDEX.encode() + b'"}', None, "manifests"),
        (
            _manifest(config={"mediaType": mt.OCI_CONFIG, "digest": "sha256:x", "size": 1}),
            None,
            "digest",
        ),
        (_manifest(config={"mediaType": mt.OCI_CONFIG, "digest": SHA, "size": -1}), None, "size"),
        (_manifest(config={"mediaType": mt.OCI_CONFIG, "digest": SHA, "size": True}), None, "size"),
        (_manifest(layers={"a": 1}), None, "array"),
        (_manifest(annotations={"a": 1}), None, "annotations"),
        (_manifest(mediaType=mt.OCI_MANIFEST), mt.DOCKER_MANIFEST, "does not match"),
        (b"[" * 100000 + b"]" * 100000, mt.OCI_MANIFEST, "JSON"),
    ],
)
def test_invalid_manifests(body: bytes, content_type: str | None, message: str) -> None:
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(body, content_type)
    assert message in caught.value.message


@pytest.mark.parametrize("value", ["team/app\n", "a\n"])
def test_a_trailing_newline_is_no_name(value: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(value)


def test_a_trailing_newline_is_no_tag_or_digest() -> None:
    assert not is_valid_tag("latest\n")
    with pytest.raises(DigestInvalid):
        parse_digest("sha256:" + "a" * 64 + "\n")
