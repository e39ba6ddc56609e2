"""OCI image layouts and docker-archive tarballs, written with the standard tools (tar, gzip)
so the e2e tests can build images without any network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
REF_NAME = "org.opencontainers.image.ref.name"

TAR_FLAGS = ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner"]


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True)
class PackedLayer:
    """A layer as a gzip blob (``descriptor``) plus its uncompressed tar (for docker-archive)."""

    descriptor: Descriptor
    diff_id: str
    tar_path: Path


def write_tree(root: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> None:
    """Create ``files`` (path -> content) and ``symlinks`` (path -> target) under ``root`` with
    fixed modes, so the tarball does not depend on the umask."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o755 if rel.startswith("bin/") else 0o644)
    for rel, target in (symlinks or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for dirpath, _dirs, _files in os.walk(root):
        Path(dirpath).chmod(0o755)


def pack_layer(rootfs: Path, work: Path, name: str) -> tuple[Path, Path]:
    """Tar ``rootfs`` reproducibly and gzip it (``gzip -n``); return (tar, tar.gz) paths."""
    tar_path = work / f"{name}.tar"
    gz_path = work / f"{name}.tar.gz"
    entries = sorted(os.listdir(rootfs))
    subprocess.run(
        ["tar", *TAR_FLAGS, "-C", str(rootfs), "-cf", str(tar_path), *entries], check=True
    )
    with gz_path.open("wb") as out:
        subprocess.run(["gzip", "-n", "-c", str(tar_path)], stdout=out, check=True)
    return tar_path, gz_path


class LayoutWriter:
    """Writes blobs and tagged references into an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[dict[str, Any]] = []

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.root / "blobs" / algorithm / hex_digest

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_bytes(data)
        self.blob_path(digest).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_json(self, value: Any, media_type: str) -> Descriptor:
        return self.add_bytes(compact_json(value), media_type)

    def add_file(self, path: Path, media_type: str) -> Descriptor:
        digest = sha256_file(path)
        size = path.stat().st_size
        target = self.blob_path(digest)
        if not target.exists():
            shutil.copyfile(path, target)
        return Descriptor(media_type, digest, size)

    def add_layer(self, rootfs: Path, work: Path, name: str) -> PackedLayer:
        tar_path, gz_path = pack_layer(rootfs, work, name)
        descriptor = self.add_file(gz_path, OCI_LAYER_GZIP)
        gz_path.unlink()
        return PackedLayer(descriptor, sha256_file(tar_path), tar_path)

    def tag(self, name: str, descriptor: Descriptor) -> None:
        self.refs.append({**descriptor.to_json(), "annotations": {REF_NAME: name}})

    def finish(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.root / "index.json").write_bytes(compact_json(index))


@dataclass
class DockerArchiveImage:
    """One image for a ``docker load`` tarball."""

    repo_tag: str
    config: bytes
    layers: list[PackedLayer] = field(default_factory=list)


def write_docker_archive(path: Path, image: DockerArchiveImage) -> None:
    """Write the classic ``docker save`` format: manifest.json, config, uncompressed layers."""
    config_name = sha256_bytes(image.config).split(":", 1)[1] + ".json"
    layer_names = [f"{layer.diff_id.split(':', 1)[1]}/layer.tar" for layer in image.layers]
    manifest = [{"Config": config_name, "RepoTags": [image.repo_tag], "Layers": layer_names}]
    with tarfile.open(path, "w") as archive:
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(archive, config_name, image.config)
        for name, layer in zip(layer_names, image.layers, strict=True):
            archive.add(layer.tar_path, arcname=name)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def reachable_blobs(layout_dir: Path, digest: str) -> list[str]:
    """``digest`` and every blob it references (children of an index, config, layers)."""
    blob = json.loads((layout_dir / "blobs" / Path(*digest.split(":", 1))).read_bytes())
    found = [digest]
    for child in blob.get("manifests", []):
        found += reachable_blobs(layout_dir, child["digest"])
    for descriptor in [blob.get("config"), *blob.get("layers", [])]:
        if descriptor:
            found.append(descriptor["digest"])
    return found


def write_oci_archive(layout_dir: Path, tags: list[str], path: Path) -> None:
    """A tarball of the layout holding only ``tags`` (for ``ctr images import``)."""
    index = json.loads((layout_dir / "index.json").read_bytes())
    refs = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) in tags]
    blobs = sorted({d for ref in refs for d in reachable_blobs(layout_dir, ref["digest"])})
    with tarfile.open(path, "w") as archive:
        _add_bytes(archive, "oci-layout", (layout_dir / "oci-layout").read_bytes())
        _add_bytes(archive, "index.json", compact_json({**index, "manifests": refs}))
        for digest in blobs:
            rel = Path("blobs", *digest.split(":", 1))
            archive.add(layout_dir / rel, arcname=str(rel))
