"""docker (engine 20.10): load + tag + push, mount into a second repository, pull, and
``docker run --network none`` of the pulled images (busybox prints the files we check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.client_logs import (
    docker_layer_results,
    docker_pulled_digest,
    docker_pushed_digest,
)
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.daemons import Dockerd
from tests.e2e.images import (
    DOCKER_ARCHIVE_TAG,
    HELLO_PATH,
    HELLO_TEXT,
    LARGE_PATH,
    PLATFORM_PATH,
    ImageSet,
)
from tests.e2e.layout import DOCKER_MANIFEST
from tests.e2e.registry_api import (
    RegistryAPI,
    assert_downloaded_through_redirect,
    assert_uploaded_through_data_port,
)
from tests.support.processes import Server

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("docker")]


@pytest.fixture
def local_tags(clean_dockerd: Dockerd) -> Iterator[list[str]]:
    """Image references this test created in the shared dockerd; removed afterwards."""
    tags: list[str] = []
    yield tags
    if tags:
        clean_dockerd.docker("rmi", "--force", *tags, check=False)


def pull(dockerd: Dockerd, ref: str) -> str:
    """``docker pull`` into a daemon without the image's layers; returns the digest."""
    output = dockerd.docker("pull", ref).stdout
    assert "Already exists" not in output, output
    return docker_pulled_digest(output)


def run_in(dockerd: Dockerd, image: str, *command: str) -> str:
    return dockerd.docker("run", "--rm", "--network", "none", image, *command).stdout


def test_load_push_pull_run(
    dockerd: Dockerd,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    local_tags: list[str],
) -> None:
    dockerd.docker("load", "--input", str(images.docker_archive))
    first, second = repo("first"), repo("second")
    ref, ref2 = f"{registry.host}/{first}:v1", f"{registry.host}/{second}:v1"
    local_tags += [ref, ref2]
    dockerd.docker("tag", DOCKER_ARCHIVE_TAG, ref)
    dockerd.docker("tag", DOCKER_ARCHIVE_TAG, ref2)

    # docker recompresses the layers: compare with the digest it reports.
    pushed = dockerd.docker("push", ref).stdout
    digest = docker_pushed_digest(pushed)
    served = api.verify(first, "v1", digest)
    assert served.media_type == DOCKER_MANIFEST
    assert served.parsed["config"]["digest"] == images.multi.config_digest
    assert api.read_file(first, "v1", HELLO_PATH) == HELLO_TEXT.encode()
    # docker streams each layer in one chunked PATCH to the upload's Location
    assert_uploaded_through_data_port(registry, first)

    # Into a second repository the layers are mounted, not uploaded again.
    pushed2 = dockerd.docker("push", ref2).stdout
    assert docker_pushed_digest(pushed2) == digest
    results = docker_layer_results(pushed2)
    assert len(results) == 2, pushed2
    assert all(r.startswith("Mounted from ") for r in results.values()), pushed2
    api.verify(second, "v1", digest)

    dockerd.docker("rmi", ref, ref2, DOCKER_ARCHIVE_TAG)
    assert pull(dockerd, ref) == digest
    assert run_in(dockerd, ref, "cat", f"/{HELLO_PATH}") == HELLO_TEXT


def test_pull_and_run_oci_index(
    dockerd: Dockerd,
    tools: ContainersTools,
    images: ImageSet,
    registry: Server,
    repo: Callable[[str], str],
    local_tags: list[str],
) -> None:
    ref = f"{registry.host}/{repo('index')}:v1"
    local_tags.append(ref)
    tools.copy(images.oci("index"), f"docker://{ref}", "--all")

    assert pull(dockerd, ref) == images.index.digest
    image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    assert image_id == images.index.children["linux/amd64"].config_digest
    assert run_in(dockerd, ref, "cat", f"/{PLATFORM_PATH}") == "linux/amd64\n"


def test_pull_and_run_large_layer(
    dockerd: Dockerd,
    tools: ContainersTools,
    images: ImageSet,
    registry: Server,
    repo: Callable[[str], str],
    local_tags: list[str],
) -> None:
    ref = f"{registry.host}/{repo('large')}:v1"
    local_tags.append(ref)
    tools.copy(images.oci("large"), f"docker://{ref}")

    assert pull(dockerd, ref) == images.large.digest
    output = run_in(dockerd, ref, "sha256sum", f"/{LARGE_PATH}")
    assert output.split()[0] == images.large_content_digest.split(":", 1)[1]
    assert_downloaded_through_redirect(registry, repo("large"))
