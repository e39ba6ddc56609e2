"""Parsing and validating manifests and indexes (Docker schema2, OCI).

``parse_manifest`` takes the exact bytes a client pushed and the media type it claimed and
returns what the registry needs to store and check: the descriptors it references, its
subject, artifact type and annotations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import is_valid_digest
from dockyard.oci.errors import DigestInvalid, ManifestInvalid

_MEDIA_TYPE_RE = re.compile(mt.MEDIA_TYPE_PATTERN)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def blob_references(self) -> tuple[Descriptor, ...]:
        """Blobs this manifest needs in the repository (config first, then layers).

        Foreign / non-distributable layers are never pushed to a registry, so they are left
        out, as Distribution does.
        """
        blobs = (self.config, *self.layers) if self.config is not None else self.layers
        return tuple(d for d in blobs if not mt.is_non_distributable(d.media_type))

    @property
    def effective_artifact_type(self) -> str | None:
        """``artifactType`` as the referrers API reports it (falls back to config type)."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None and not self.is_index:
            return self.config.media_type
        return None


def _fail(message: str, detail: Any = None) -> ManifestInvalid:
    return ManifestInvalid(f"manifest invalid: {message}", detail=detail)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail(f"{where} must be a map of strings to strings")
    return dict(value)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not _MEDIA_TYPE_RE.fullmatch(media_type):
        raise _fail(f"{where}.mediaType is missing or not a valid media type")
    if not isinstance(digest, str) or not is_valid_digest(digest):
        raise _fail(f"{where}.digest is missing or not a valid sha256/sha512 digest")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
        raise _fail(f"{where}.size must be a non-negative 64-bit integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and (
        not isinstance(artifact_type, str) or not _MEDIA_TYPE_RE.fullmatch(artifact_type)
    ):
        raise _fail(f"{where}.artifactType is not a valid media type")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _fail(f"{where}.platform must be an object")
    annotations = value.get("annotations")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=artifact_type,
        annotations=_string_map(annotations, f"{where}.annotations") if annotations else None,
        platform=platform,
    )


def _descriptor_list(value: Any, where: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(f"{where} must be an array of descriptors")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value))


def detect_media_type(document: dict[str, Any], content_type: str) -> str:
    """The manifest's media type: the ``mediaType`` field, else the request's Content-Type."""
    field_type = document.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise _fail("mediaType must be a string")
    if field_type and content_type and field_type != content_type:
        if content_type in mt.MANIFEST_TYPES:
            raise _fail(
                f"Content-Type {content_type!r} does not match the manifest's mediaType "
                f"{field_type!r}"
            )
        return field_type
    if field_type:
        return field_type
    if content_type in mt.MANIFEST_TYPES:
        return content_type
    # OCI manifests may omit mediaType; guess from the shape.
    if "manifests" in document:
        return mt.OCI_INDEX
    if "config" in document or "layers" in document:
        return mt.OCI_MANIFEST
    return content_type


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate ``body`` as a manifest or index and return its parsed form."""
    claimed = mt.base_media_type(content_type)
    if claimed in mt.SCHEMA1_TYPES:
        raise _schema1_refused()
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(document, dict):
        raise _fail("top level must be a JSON object")
    schema_version = document.get("schemaVersion")
    if schema_version == 1 or "fsLayers" in document or "signatures" in document:
        raise _schema1_refused()
    if schema_version != 2 or isinstance(schema_version, bool):
        raise _fail("schemaVersion must be 2")
    media_type = detect_media_type(document, claimed)
    if media_type in mt.SCHEMA1_TYPES:
        raise _schema1_refused()
    if media_type not in mt.MANIFEST_TYPES:
        raise _fail(
            f"unsupported manifest media type {media_type[:100]!r}",
            detail={"supported": sorted(mt.MANIFEST_TYPES)},
        )
    artifact_type = document.get("artifactType")
    if artifact_type is not None and (
        not isinstance(artifact_type, str) or not _MEDIA_TYPE_RE.fullmatch(artifact_type)
    ):
        raise _fail("artifactType is not a valid media type")
    annotations = _string_map(document.get("annotations"), "annotations")
    subject = (
        _descriptor(document["subject"], "subject") if document.get("subject") is not None else None
    )
    if media_type in mt.INDEXES:
        if "manifests" not in document:
            raise _fail("an index must have a manifests array")
        return ParsedManifest(
            media_type=media_type,
            config=None,
            manifests=_descriptor_list(document.get("manifests"), "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "config" not in document:
        raise _fail("an image manifest must have a config descriptor")
    config = _descriptor(document["config"], "config")
    layers = _descriptor_list(document.get("layers"), "layers")
    if media_type == mt.DOCKER_MANIFEST and "layers" not in document:
        raise _fail("a Docker image manifest must have a layers array")
    return ParsedManifest(
        media_type=media_type,
        config=config,
        layers=layers,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _schema1_refused() -> ManifestInvalid:
    return ManifestInvalid(
        "manifest invalid: Docker image manifest schema 1 is not supported; push with a "
        "current client or convert the image to schema 2 / OCI (e.g. skopeo copy --format v2s2)"
    )


def check_digest_matches(expected: str, actual: str) -> None:
    if expected != actual:
        raise DigestInvalid(
            "manifest digest does not match the digest in the URL",
            detail={"expected": expected, "actual": actual},
        )
