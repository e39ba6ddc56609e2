"""Checks through the registry's HTTP API (httpx), independent of the client under test:
the manifest bytes served hash to the digest the client reported, and every blob GET's
bytes hash to its digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.layout import DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, OCI_INDEX, OCI_MANIFEST
from tests.support.processes import Server

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
TARGET = os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")


def assert_downloaded_through_redirect(registry: Server, name: str) -> None:
    """On Dockyard's defaults, blob GETs of 8 MiB and more in repository ``name`` were
    answered with a redirect to the zero-copy download port (checked in the access log;
    Distribution and the scale-out setup, with S3 redirects off, send blobs directly)."""
    if TARGET == "dockyard":
        statuses = registry.blob_get_statuses(name)
        assert 307 in statuses, statuses


def assert_uploaded_through_data_port(registry: Server, name: str, min_bytes: int = 1) -> None:
    """On Dockyard's defaults, uploads to repository ``name`` went to the data port the
    upload's Location named (its access-log route), and it received at least ``min_bytes``
    of blob content there."""
    if TARGET == "dockyard":
        entries = registry.access_log("dataport-upload", name)
        assert any(e["method"] == "PUT" and e["status"] == 201 for e in entries), entries
        assert sum(e["bytes_in"] for e in entries) >= min_bytes, entries


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest_header: str | None

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    @property
    def parsed(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def child(self, platform: str) -> dict[str, Any]:
        """The index entry for ``os/arch[/variant]``."""
        for entry in self.parsed["manifests"]:
            p = entry.get("platform", {})
            name = "/".join(filter(None, [p.get("os"), p.get("architecture"), p.get("variant")]))
            if name == platform or name.startswith(platform + "/"):
                return dict(entry)
        raise AssertionError(f"no {platform} entry in index {self.body!r}")


class RegistryAPI:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def get_manifest(self, repo: str, ref: str) -> httpx.Response:
        return self.http.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})

    def manifest(self, repo: str, ref: str) -> Manifest:
        response = self.get_manifest(repo, ref)
        assert response.status_code == 200, f"GET manifest {repo}:{ref}: {_show(response)}"
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Manifest(response.content, media_type, response.headers.get("docker-content-digest"))

    def head_blob(self, repo: str, digest: str) -> httpx.Response:
        return self.http.head(f"/v2/{repo}/blobs/{digest}")

    def blob(self, repo: str, digest: str) -> bytes:
        response = self.http.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 200, f"GET blob {repo}@{digest}: {_show(response)}"
        actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
        assert actual == digest, f"blob {repo}@{digest} served bytes hashing to {actual}"
        return response.content

    def check_blob(self, repo: str, digest: str, size: int) -> None:
        """Stream the blob, hash it, compare digest, size and Docker-Content-Digest."""
        hasher = hashlib.sha256()
        received = 0
        with self.http.stream("GET", f"/v2/{repo}/blobs/{digest}") as response:
            assert response.status_code == 200, f"GET blob {repo}@{digest}: {_show(response)}"
            header = response.headers.get("docker-content-digest")
            assert header in (None, digest), f"blob {digest}: Docker-Content-Digest {header}"
            for chunk in response.iter_bytes(1 << 20):
                hasher.update(chunk)
                received += len(chunk)
        assert "sha256:" + hasher.hexdigest() == digest, f"blob {repo}@{digest}: wrong bytes"
        assert received == size, f"blob {repo}@{digest}: {received} bytes, descriptor says {size}"

    def verify(self, repo: str, ref: str, expected_digest: str) -> Manifest:
        """GET ``repo:ref`` and check it is ``expected_digest``, then every child and blob."""
        manifest = self.manifest(repo, ref)
        assert manifest.digest == expected_digest, (
            f"{repo}:{ref} served bytes hashing to {manifest.digest}, "
            f"the client reported {expected_digest}"
        )
        assert manifest.digest_header == expected_digest, (
            f"{repo}:{ref}: Docker-Content-Digest {manifest.digest_header}, "
            f"expected {expected_digest}"
        )
        parsed = manifest.parsed
        if manifest.is_index:
            for child in parsed["manifests"]:
                self.verify(repo, child["digest"], child["digest"])
        else:
            for descriptor in [parsed["config"], *parsed["layers"]]:
                self.check_blob(repo, descriptor["digest"], descriptor["size"])
        return manifest

    def read_file(self, repo: str, ref: str, path: str, platform: str = "linux/amd64") -> bytes:
        """The content of ``path`` in the image's filesystem (upper layers win)."""
        manifest = self.manifest(repo, ref)
        if manifest.is_index:
            manifest = self.manifest(repo, manifest.child(platform)["digest"])
        for layer in reversed(manifest.parsed["layers"]):
            content = file_in_layer(self.blob(repo, layer["digest"]), path)
            if content is not None:
                return content
        raise AssertionError(f"{path} is in no layer of {repo}:{ref}")

    def tags(self, repo: str) -> list[str]:
        response = self.http.get(f"/v2/{repo}/tags/list")
        assert response.status_code == 200, _show(response)
        return list(response.json().get("tags") or [])

    def mount(self, repo: str, digest: str, source: str) -> httpx.Response:
        return self.http.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source}
        )

    def referrers(self, repo: str, digest: str, artifact_type: str | None = None) -> httpx.Response:
        params = {"artifactType": artifact_type} if artifact_type else {}
        return self.http.get(f"/v2/{repo}/referrers/{digest}", params=params)


def file_in_layer(blob: bytes, path: str) -> bytes | None:
    """Extract ``path`` from a (possibly gzipped) layer tarball; None when absent."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    wanted = path.strip("/")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as archive:
        for member in archive:
            if member.name.removeprefix("./").strip("/") == wanted and member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                return extracted.read()
    return None


def _show(response: httpx.Response) -> str:
    request = response.request
    body = ""
    if request.method != "HEAD":
        try:
            body = response.read()[:2000].decode(errors="replace")
        except httpx.HTTPError as error:
            body = f"<body unreadable: {error}>"
    return (
        f"{request.method} {request.url} -> {response.status_code} {dict(response.headers)} {body}"
    )
