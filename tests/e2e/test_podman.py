"""podman: pull (single image, index, a large layer) and push, with mounts from its blob cache.
(``podman run`` cannot work on these machines: no CAP_SYS_RESOURCE.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.client_logs import assert_mounted
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.images import HELLO_PATH, HELLO_TEXT, PLATFORM_PATH, ImageSet
from tests.e2e.registry_api import RegistryAPI, assert_downloaded_through_redirect
from tests.support.processes import Server

pytestmark = pytest.mark.e2e


def inspect(tools: ContainersTools, image: str, field: str) -> str:
    return tools.podman("image", "inspect", "--format", f"{{{{{field}}}}}", image).stdout.strip()


def pull(tools: ContainersTools, image: str, *flags: str) -> None:
    """``podman pull`` into the emptied store: every blob must come from the registry."""
    result = tools.podman("pull", "--tls-verify=false", *flags, image)
    assert "already exists" not in result.stderr, result.stderr


def push(tools: ContainersTools, image: str, dest: str, tmp_path: Path) -> tuple[str, str]:
    """``podman push``; returns (the digest podman reports, its debug log)."""
    digestfile = tmp_path / f"{dest.replace('/', '_')}.digest"
    result = tools.podman(
        "--log-level=debug", "push", "--tls-verify=false", "--digestfile", str(digestfile),
        image, f"docker://{dest}",
    )  # fmt: skip
    return digestfile.read_text().strip(), result.stderr


def test_pull_then_push(
    clean_store: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tools = clean_store
    source = f"{registry.host}/{repo('source')}:v1"
    tools.copy(images.oci("multi"), f"docker://{source}")

    pull(tools, source)
    assert inspect(tools, source, ".Digest") == images.multi.digest
    assert inspect(tools, source, ".Id") == images.multi.config_digest.split(":", 1)[1]

    # podman re-serializes the manifest: compare with the digest it reports.
    first = repo("pushed")
    digest, _ = push(tools, source, f"{registry.host}/{first}:v1", tmp_path)
    served = api.verify(first, "v1", digest)
    assert served.parsed["config"]["digest"] == images.multi.config_digest
    assert api.read_file(first, "v1", HELLO_PATH) == HELLO_TEXT.encode()

    # Pushing the same image into another repository mounts its layers from the first.
    second = repo("again")
    again, log = push(tools, source, f"{registry.host}/{second}:v1", tmp_path)
    assert again == digest
    layers = [layer["digest"] for layer in served.parsed["layers"]]
    assert_mounted(log, layers, "... mount OK")
    api.verify(second, "v1", again)

    # And pull it back by digest after removing the local copies.
    tools.podman("rmi", "--force", source)
    by_digest = f"{registry.host}/{second}@{again}"
    pull(tools, by_digest)
    assert inspect(tools, by_digest, ".Digest") == again
    tools.podman("rmi", "--force", by_digest)


def test_pull_large_layer(
    clean_store: ContainersTools,
    images: ImageSet,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    """The ~100 MiB layer: on Dockyard's defaults it comes from the download port through a
    redirect, which podman follows."""
    tools = clean_store
    name = repo("large")
    ref = f"{registry.host}/{name}:v1"
    tools.copy(images.oci("large"), f"docker://{ref}")
    pull(tools, ref)
    assert inspect(tools, ref, ".Digest") == images.large.digest
    assert inspect(tools, ref, ".Id") == images.large.config_digest.split(":", 1)[1]
    assert_downloaded_through_redirect(registry, name)
    tools.podman("rmi", "--force", ref)


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_pull_index_platform(
    arch: str,
    clean_store: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tools = clean_store
    name = repo("index")
    source = f"{registry.host}/{name}:v1"
    tools.copy(images.oci("index"), f"docker://{source}", "--all")
    child = images.index.children[f"linux/{arch}"]

    variant = ["--variant", "v8"] if arch == "arm64" else []
    pull(tools, source, "--arch", arch, *variant)
    assert inspect(tools, source, ".Digest") == images.index.digest
    assert inspect(tools, source, ".Architecture") == arch
    assert f"{registry.host}/{name}@{child.digest}" in inspect(tools, source, ".RepoDigests")
    assert inspect(tools, source, ".Id") == child.config_digest.split(":", 1)[1]

    pushed = repo("pushed")
    digest, _ = push(tools, source, f"{registry.host}/{pushed}:v1", tmp_path)
    served = api.verify(pushed, "v1", digest)
    assert not served.is_index  # podman pushes the one image it pulled
    assert served.parsed["config"]["digest"] == child.config_digest
    assert api.read_file(pushed, "v1", PLATFORM_PATH) == f"linux/{arch}\n".encode()
    tools.podman("rmi", "--force", source)
