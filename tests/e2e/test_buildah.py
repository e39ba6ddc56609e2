"""buildah: build from scratch and on a pulled base, commit, push (chunked uploads and
mounts of the base layers), pull back and read the files through ``buildah mount``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.client_logs import assert_mounted
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.images import HELLO_PATH, HELLO_TEXT, ImageSet
from tests.e2e.registry_api import RegistryAPI, assert_uploaded_through_data_port
from tests.support.processes import Server

pytestmark = pytest.mark.e2e

BUILT_PATH = "etc/dockyard/buildah.txt"


def build(tools: ContainersTools, base: str, content: Path) -> str:
    """``buildah from base`` + copy + commit; returns the local image name."""
    container = f"e2e-{uuid.uuid4().hex[:12]}"
    image = f"localhost/{container}:v1"
    tools.buildah("from", "--tls-verify=false", "--name", container, base)
    tools.buildah("copy", container, str(content), f"/{BUILT_PATH}")
    tools.buildah("config", "--cmd", "/bin/sh", "--label", "dockyard.e2e=yes", container)
    tools.buildah("commit", "--rm", "--format", "oci", container, image)
    return image


def push(tools: ContainersTools, image: str, dest: str, tmp_path: Path) -> tuple[str, str]:
    digestfile = tmp_path / f"{uuid.uuid4().hex}.digest"
    result = tools.buildah(
        "--log-level=debug", "push", "--tls-verify=false", "--digestfile", str(digestfile),
        image, f"docker://{dest}",
    )  # fmt: skip
    return digestfile.read_text().strip(), result.stderr


def read_through_mount(tools: ContainersTools, image: str, path: str) -> bytes:
    container = f"e2e-{uuid.uuid4().hex[:12]}"
    tools.buildah("from", "--pull-never", "--name", container, image)
    try:
        root = Path(tools.buildah("mount", container).stdout.strip())
        return (root / path).read_bytes()
    finally:
        tools.buildah("umount", container)
        tools.buildah("rm", container)


def test_from_scratch_push_and_pull(
    clean_store: ContainersTools,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tools = clean_store
    content = tmp_path / "buildah.txt"
    content.write_bytes(f"built by buildah {uuid.uuid4()}\n".encode())
    image = build(tools, "scratch", content)

    name = repo("scratch")
    dest = f"{registry.host}/{name}:v1"
    digest, _ = push(tools, image, dest, tmp_path)
    served = api.verify(name, "v1", digest)
    assert len(served.parsed["layers"]) == 1
    assert api.read_file(name, "v1", BUILT_PATH) == content.read_bytes()
    config = api.blob(name, served.parsed["config"]["digest"])
    assert b'"dockyard.e2e":"yes"' in config
    assert_uploaded_through_data_port(registry, name, len(config))

    tools.buildah("rmi", "--force", image)
    pulled_log = tools.buildah("pull", "--tls-verify=false", dest).stderr
    assert "already exists" not in pulled_log, pulled_log
    pulled = tools.buildah("inspect", "--type", "image", "--format", "{{.FromImageDigest}}", dest)
    assert pulled.stdout.strip() == digest
    assert read_through_mount(tools, dest, BUILT_PATH) == content.read_bytes()
    tools.buildah("rmi", "--force", dest)


def test_layer_on_pulled_base(
    clean_store: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tools = clean_store
    base_name = repo("base")
    base = f"{registry.host}/{base_name}:v1"
    tools.copy(images.oci("multi"), f"docker://{base}")
    content = tmp_path / "buildah.txt"
    content.write_bytes(b"a layer on top of the pulled base\n")
    image = build(tools, base, content)

    name = repo("derived")
    digest, log = push(tools, image, f"{registry.host}/{name}:v1", tmp_path)
    served = api.verify(name, "v1", digest)
    layers = [layer["digest"] for layer in served.parsed["layers"]]
    assert layers[:2] == list(images.multi.layer_digests)
    assert len(layers) == 3
    assert_mounted(log, images.multi.layer_digests, "... mount OK")
    assert api.read_file(name, "v1", HELLO_PATH) == HELLO_TEXT.encode()
    assert api.read_file(name, "v1", BUILT_PATH) == content.read_bytes()
    tools.buildah("rmi", "--force", image, base)
