"""A tiny registry client for tests: push and pull blobs and manifests over httpx.

It speaks just enough of the distribution API to put content in and check it comes back
byte for byte; it asserts the status of every step, so a test reads as the scenario it
checks. Images are built in memory (``random_image``) with random layers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    """An image as a client pushes it: config, layers and the exact manifest bytes."""

    repository: str
    tag: str
    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[bytes, ...]:
        return (self.config, *self.layers)


def random_image(
    repository: str, tag: str, layer_sizes: Iterable[int] = (4096,), note: str = ""
) -> Image:
    """An OCI image with random layers of the given sizes (so every digest is new)."""
    layers = tuple(os.urandom(size) for size in layer_sizes)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"note": note or os.urandom(8).hex()}},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(x) for x in layers]},
        },
        sort_keys=True,
    ).encode()
    return image_from_blobs(repository, tag, config, layers)


def image_from_blobs(repository: str, tag: str, config: bytes, layers: tuple[bytes, ...]) -> Image:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256_digest(x), "size": len(x)} for x in layers
            ],
        },
        indent=1,  # deliberately not the canonical form: the registry must keep the bytes
    ).encode()
    return Image(repository, tag, config, layers, manifest)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class OciClient:
    """Push and pull against ``base_url`` (``http://127.0.0.1:PORT``)."""

    base_url: str
    timeout: float = 30
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout, verify=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OciClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # uploads

    def start_upload(self, repository: str) -> str:
        """POST a new upload session; return its Location (a path, possibly with a query)."""
        response = self.http.post(f"/v2/{repository}/blobs/uploads/")
        assert response.status_code == 202, explain(response)
        return response.headers["Location"]

    def patch(
        self, location: str, body: bytes | Iterable[bytes], start: int | None = None
    ) -> httpx.Response:
        """One PATCH (not asserted); ``start`` adds a ``Content-Range`` for a bytes body."""
        headers = {"Content-Type": "application/octet-stream"}
        if start is not None and isinstance(body, bytes):
            headers["Content-Range"] = f"{start}-{start + len(body) - 1}"
            headers["Content-Length"] = str(len(body))
        return self.http.patch(location, content=body, headers=headers)

    def finish_upload(
        self, location: str, digest: str, body: bytes | Iterable[bytes] = b""
    ) -> httpx.Response:
        """The final PUT ?digest= (not asserted)."""
        headers = {"Content-Type": "application/octet-stream"}
        return self.http.put(with_digest(location, digest), content=body, headers=headers)

    def push_blob(self, repository: str, data: bytes, chunk_size: int | None = None) -> str:
        """POST + PATCH chunks + PUT (or POST ?digest= when ``chunk_size`` is 0)."""
        digest = sha256_digest(data)
        if chunk_size == 0:
            response = self.http.post(
                f"/v2/{repository}/blobs/uploads/",
                params={"digest": digest},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert response.status_code == 201, explain(response)
            return digest
        location = self.start_upload(repository)
        offset = 0
        for chunk in chunks_of(data, chunk_size) if chunk_size else ():
            response = self.patch(location, chunk, start=offset)
            assert response.status_code == 202, explain(response)
            location = response.headers["Location"]
            offset += len(chunk)
        response = self.finish_upload(location, digest, b"" if chunk_size else data)
        assert response.status_code == 201, explain(response)
        assert response.headers["Docker-Content-Digest"] == digest
        return digest

    # manifests

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> httpx.Response:
        return self.http.put(
            f"/v2/{repository}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
        )

    def push_image(self, image: Image, chunk_size: int | None = None) -> str:
        for blob in image.blobs:
            self.push_blob(image.repository, blob, chunk_size)
        response = self.put_manifest(image.repository, image.tag, image.manifest, image.media_type)
        assert response.status_code == 201, explain(response)
        assert response.headers["Docker-Content-Digest"] == image.digest
        return image.digest

    # pulls

    def get_manifest(self, repository: str, reference: str) -> httpx.Response:
        return self.http.get(
            f"/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )

    def get_blob(self, repository: str, digest: str) -> bytes:
        # followed as real clients do: large blobs are redirected to the sendfile port
        response = self.http.get(f"/v2/{repository}/blobs/{digest}", follow_redirects=True)
        assert response.status_code == 200, explain(response)
        return response.content

    def blob_status(self, repository: str, digest: str) -> int:
        return self.http.head(f"/v2/{repository}/blobs/{digest}").status_code

    def check_image(self, image: Image) -> None:
        """Assert the image pulls back byte for byte, by tag and by digest."""
        for reference in (image.tag, image.digest):
            response = self.get_manifest(image.repository, reference)
            assert response.status_code == 200, explain(response)
            assert response.content == image.manifest, f"{image.repository}:{reference} changed"
            assert response.headers["Docker-Content-Digest"] == image.digest
        for blob in image.blobs:
            digest = sha256_digest(blob)
            pulled = self.get_blob(image.repository, digest)
            assert sha256_digest(pulled) == digest, f"{image.repository}@{digest} corrupt"


def explain(response: httpx.Response) -> str:
    """``METHOD /path -> status body`` for assertion messages."""
    request = response.request
    body = response.text[:500] if not response.is_success else ""
    return f"{request.method} {request.url.path} -> {response.status_code} {body}"


def with_digest(location: str, digest: str) -> str:
    """An upload's Location with ``digest=`` added to its query: a Location may carry a
    query of its own (Dockyard's data-port links are signed there, Distribution's carry
    ``_state``), which the final PUT must keep."""
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={digest}"
