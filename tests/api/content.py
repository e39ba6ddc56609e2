"""Registry content for the API tests: blobs, image manifests, indexes and artifacts, built
the way clients build them (OCI image spec, Docker image manifest v2 schema 2).

Everything here is pure: no requests. Manifests keep the exact bytes a client would push,
serialized with unusual whitespace so that a registry re-encoding them is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def matches_digest(data: bytes, digest: str) -> bool:
    """True when ``digest`` (any algorithm hashlib knows) is the digest of ``data``."""
    algorithm, _, hex_part = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        return False
    return hashlib.new(algorithm, data).hexdigest() == hex_part


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str = "application/octet-stream"
    algorithm: str = "sha256"

    @property
    def digest(self) -> str:
        return digest_of(self.data, self.algorithm)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as pushed: its bytes and the Content-Type it is pushed with."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.body)

    @property
    def size(self) -> int:
        return len(self.body)

    def document(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def random_blob(size: int = 1024, media_type: str = OCI_LAYER, algorithm: str = "sha256") -> Blob:
    return Blob(os.urandom(size), media_type, algorithm)


def empty_config() -> Blob:
    return Blob(EMPTY_JSON, OCI_EMPTY)


def image_config(media_type: str = OCI_CONFIG, layers: Sequence[Blob] = ()) -> Blob:
    """A runnable-looking image config, unique per call (so each image has its own)."""
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [f"NONCE={os.urandom(8).hex()}"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer.data) for layer in layers]},
    }
    return Blob(json.dumps(document).encode(), media_type)


def serialize(document: dict[str, Any]) -> bytes:
    """JSON with tabs, odd separators, non-ASCII text left as UTF-8 and trailing newlines:
    a registry that re-encodes the manifest changes these bytes (and so its digest)."""
    return (
        json.dumps(document, indent="\t", separators=(",", " :  "), ensure_ascii=False) + "\n\n"
    ).encode()


def image_manifest(
    config: Blob,
    layers: Sequence[Blob],
    *,
    media_type: str = OCI_MANIFEST,
    artifact_type: str | None = None,
    subject: Manifest | None = None,
    annotations: dict[str, str] | None = None,
    include_media_type: bool = True,
) -> Manifest:
    document: dict[str, Any] = {"schemaVersion": 2}
    if include_media_type:
        document["mediaType"] = media_type
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["config"] = config.descriptor()
    document["layers"] = [layer.descriptor() for layer in layers]
    if subject is not None:
        document["subject"] = subject.descriptor()
    if annotations is not None:
        document["annotations"] = annotations
    return Manifest(serialize(document), media_type)


def index_manifest(
    children: Sequence[Manifest],
    *,
    media_type: str = OCI_INDEX,
    platforms: Sequence[dict[str, str]] | None = None,
    artifact_type: str | None = None,
    subject: Manifest | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    platforms = platforms or [default_platform(i) for i in range(len(children))]
    entries = [
        child.descriptor(platform=platform)
        for child, platform in zip(children, platforms, strict=True)
    ]
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["manifests"] = entries
    if subject is not None:
        document["subject"] = subject.descriptor()
    if annotations is not None:
        document["annotations"] = annotations
    return Manifest(serialize(document), media_type)


def default_platform(position: int) -> dict[str, str]:
    architectures = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
    return {"architecture": architectures[position % len(architectures)], "os": "linux"}


@dataclass(frozen=True)
class Image:
    """An image manifest with the blobs it references (push the blobs first)."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: Manifest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


def make_image(
    *,
    docker: bool = False,
    layer_count: int = 2,
    layer_size: int = 512,
    annotations: dict[str, str] | None = None,
) -> Image:
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    layers = tuple(random_blob(layer_size + i, layer_type) for i in range(layer_count))
    config = image_config(DOCKER_CONFIG if docker else OCI_CONFIG, layers)
    manifest = image_manifest(
        config,
        layers,
        media_type=DOCKER_MANIFEST if docker else OCI_MANIFEST,
        annotations=annotations,
    )
    return Image(config, layers, manifest)


def make_artifact(
    artifact_type: str,
    *,
    subject: Manifest | None = None,
    annotations: dict[str, str] | None = None,
    payload: bytes | None = None,
) -> Image:
    """An OCI artifact: the empty config, one payload layer, an artifactType (and subject)."""
    layer = Blob(payload if payload is not None else os.urandom(64), "application/octet-stream")
    config = empty_config()
    manifest = image_manifest(
        config, [layer], artifact_type=artifact_type, subject=subject, annotations=annotations
    )
    return Image(config, (layer,), manifest)
