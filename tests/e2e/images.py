"""The test images of the e2e suite, built offline from busybox-static.

One OCI image layout holds three references:

* ``multi``: linux/amd64, two layers (busybox, then ``/etc/dockyard/hello.txt``);
* ``index``: an OCI index of linux/amd64 (busybox + ``/etc/dockyard/platform.txt``) and
  linux/arm64 (only ``platform.txt``; distinct content, it never runs here);
* ``large``: busybox + a ~100 MiB random (incompressible) layer.

A docker-archive tarball of ``multi`` is written beside it for ``docker load``, and an OCI
archive of ``multi`` and ``index`` for ``ctr images import``. The set is
built once per test run and shared by the xdist workers (a file lock guards the build).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.e2e.layout import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DockerArchiveImage,
    LayoutWriter,
    PackedLayer,
    compact_json,
    sha256_file,
    write_docker_archive,
    write_oci_archive,
    write_tree,
)

BUSYBOX = Path("/bin/busybox")
HELLO_PATH = "etc/dockyard/hello.txt"
HELLO_TEXT = "hello from the dockyard e2e extra layer\n"
PLATFORM_PATH = "etc/dockyard/platform.txt"
LARGE_PATH = "data/random.bin"
LARGE_SIZE = 100 * 1024 * 1024
DOCKER_ARCHIVE_TAG = "dockyard-e2e/multi:latest"
EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class ImageRef:
    """A single-platform image manifest in the layout."""

    digest: str
    size: int
    media_type: str
    config_digest: str
    layer_digests: tuple[str, ...]
    platform: str

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)


@dataclass(frozen=True)
class IndexRef:
    """An image index in the layout, with its children by platform (``linux/amd64``)."""

    digest: str
    size: int
    children: dict[str, ImageRef]


@dataclass(frozen=True)
class ImageSet:
    """Everything the e2e tests need to know about the images built for this run."""

    layout_dir: Path
    docker_archive: Path
    oci_archive: Path
    multi: ImageRef
    index: IndexRef
    large: ImageRef
    large_content_digest: str

    def oci(self, tag: str) -> str:
        """The containers/image reference of a tag in the layout (``oci:DIR:TAG``)."""
        return f"oci:{self.layout_dir}:{tag}"

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.layout_dir / "blobs" / algorithm / hex_digest

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["layout_dir"] = str(self.layout_dir)
        out["docker_archive"] = str(self.docker_archive)
        out["oci_archive"] = str(self.oci_archive)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageSet:
        def image(d: dict[str, Any]) -> ImageRef:
            return ImageRef(**{**d, "layer_digests": tuple(d["layer_digests"])})

        index = data["index"]
        return cls(
            layout_dir=Path(data["layout_dir"]),
            docker_archive=Path(data["docker_archive"]),
            oci_archive=Path(data["oci_archive"]),
            multi=image(data["multi"]),
            index=IndexRef(
                index["digest"],
                index["size"],
                {k: image(v) for k, v in index["children"].items()},
            ),
            large=image(data["large"]),
            large_content_digest=data["large_content_digest"],
        )


def require_static_busybox() -> None:
    if not BUSYBOX.exists():
        raise RuntimeError(f"{BUSYBOX} is missing: install the Debian package busybox-static")
    ldd = subprocess.run(["ldd", str(BUSYBOX)], capture_output=True, text=True)
    if ldd.returncode == 0 and "=>" in ldd.stdout:
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install busybox-static")


def image_config(arch: str, layers: list[PackedLayer], notes: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": EPOCH, "created_by": note} for note in notes],
    }
    if arch == "arm64":
        config["variant"] = "v8"
    return config


class _Builder:
    def __init__(self, root: Path) -> None:
        self.work = root / "work"
        self.work.mkdir(parents=True)
        self.layout = LayoutWriter(root / "layout")

    def layer(
        self, name: str, files: dict[str, bytes], symlinks: dict[str, str] | None = None
    ) -> PackedLayer:
        rootfs = self.work / f"{name}-rootfs"
        write_tree(rootfs, files, symlinks)
        layer = self.layout.add_layer(rootfs, self.work, name)
        shutil.rmtree(rootfs)
        return layer

    def image(
        self, arch: str, layers: list[PackedLayer], notes: list[str]
    ) -> tuple[ImageRef, Descriptor, bytes]:
        config_bytes = compact_json(image_config(arch, layers, notes))
        config = self.layout.add_bytes(config_bytes, OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
        descriptor = self.layout.add_json(manifest, OCI_MANIFEST)
        variant = "/v8" if arch == "arm64" else ""
        ref = ImageRef(
            digest=descriptor.digest,
            size=descriptor.size,
            media_type=OCI_MANIFEST,
            config_digest=config.digest,
            layer_digests=tuple(layer.descriptor.digest for layer in layers),
            platform=f"linux/{arch}{variant}",
        )
        return ref, descriptor, config_bytes


def build_image_set(root: Path) -> ImageSet:
    """Build the layout and the docker archive under ``root`` (which must not exist yet)."""
    require_static_busybox()
    b = _Builder(root)
    busybox = b.layer(
        "busybox",
        {"bin/busybox": BUSYBOX.read_bytes()},
        {f"bin/{applet}": "busybox" for applet in ("cat", "echo", "ls", "sh", "sha256sum")},
    )
    hello = b.layer("hello", {HELLO_PATH: HELLO_TEXT.encode()})

    multi, multi_desc, multi_config = b.image(
        "amd64", [busybox, hello], ["busybox-static", "hello.txt"]
    )
    b.layout.tag("multi", multi_desc)

    children: dict[str, ImageRef] = {}
    manifests = []
    for arch, layers in (("amd64", [busybox]), ("arm64", [])):
        platform_layer = b.layer(f"platform-{arch}", {PLATFORM_PATH: f"linux/{arch}\n".encode()})
        notes = ["busybox-static"] * len(layers) + ["platform.txt"]
        child, child_desc, _ = b.image(arch, [*layers, platform_layer], notes)
        platform = {"architecture": arch, "os": "linux"}
        if arch == "arm64":
            platform["variant"] = "v8"
        manifests.append({**child_desc.to_json(), "platform": platform})
        children[f"linux/{arch}"] = child
    index_desc = b.layout.add_json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX
    )
    b.layout.tag("index", index_desc)

    random_file = b.work / "random.bin"
    random_file.write_bytes(os.urandom(LARGE_SIZE))
    large_content_digest = sha256_file(random_file)
    large_rootfs = b.work / "large-rootfs"
    (large_rootfs / "data").mkdir(parents=True)
    random_file.rename(large_rootfs / LARGE_PATH)
    (large_rootfs / LARGE_PATH).chmod(0o644)
    write_tree(large_rootfs, {})
    large_layer = b.layout.add_layer(large_rootfs, b.work, "large")
    shutil.rmtree(large_rootfs)
    large_layer.tar_path.unlink()
    large, large_desc, _ = b.image("amd64", [busybox, large_layer], ["busybox-static", "random"])
    b.layout.tag("large", large_desc)
    b.layout.finish()

    archive = root / "multi-docker-archive.tar"
    write_docker_archive(
        archive, DockerArchiveImage(DOCKER_ARCHIVE_TAG, multi_config, [busybox, hello])
    )
    oci_archive = root / "multi-index-oci-archive.tar"
    write_oci_archive(b.layout.root, ["multi", "index"], oci_archive)
    shutil.rmtree(b.work)
    return ImageSet(
        layout_dir=b.layout.root,
        docker_archive=archive,
        oci_archive=oci_archive,
        multi=multi,
        index=IndexRef(index_desc.digest, index_desc.size, children),
        large=large,
        large_content_digest=large_content_digest,
    )


def shared_image_set(base: Path) -> ImageSet:
    """Build the image set under ``base/images`` once; other processes wait and reuse it."""
    base.mkdir(parents=True, exist_ok=True)
    catalog = base / "images.json"
    with (base / "images.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not catalog.exists():
            target = base / "images"
            if target.exists():  # a build that died half-way
                shutil.rmtree(target)
            images = build_image_set(target)
            catalog.write_text(json.dumps(images.to_json()))
        return ImageSet.from_json(json.loads(catalog.read_text()))
