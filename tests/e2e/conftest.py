"""Fixtures of the end-to-end suite: the test images (built once per run), the private
client environments and the shared daemons (once per xdist worker), unique repositories."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.containers_tools import ContainersTools, make_containers_tools
from tests.e2e.daemons import Containerd, Dockerd, running_containerd, running_dockerd
from tests.e2e.images import ImageSet, shared_image_set
from tests.e2e.registry_api import RegistryAPI
from tests.support.processes import Server


def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory shared by all xdist workers of this run (the basetemp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return shared_image_set(_run_dir(tmp_path_factory) / "e2e-images")


@pytest.fixture(scope="session")
def api(registry: Server) -> Iterator[RegistryAPI]:
    client = RegistryAPI(registry.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory, registry: Server) -> ContainersTools:
    """skopeo / podman / buildah with a private store and configuration."""
    return make_containers_tools(tmp_path_factory.mktemp("containers"), registry.host)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory, registry: Server) -> Iterator[Dockerd]:
    with running_dockerd(tmp_path_factory.mktemp("dockerd"), [registry.host]) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with running_containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique repository names for this test: ``repo("a")`` -> ``e2e/<test>-<id>/a``."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    unique = uuid.uuid4().hex[:8]
    return lambda name: f"e2e/{slug}-{unique}/{name}"


@pytest.fixture
def namespace(containerd: Containerd) -> Iterator[str]:
    """A containerd namespace of this test alone. containerd shares blobs between
    namespaces, so its images are removed afterwards (with a synchronous garbage
    collection) to make the next test's pulls download again."""
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    yield name
    refs = containerd.ctr(name, "images", "ls", "--quiet").stdout.split()
    if refs:
        containerd.ctr(name, "images", "rm", "--sync", *refs)


@pytest.fixture
def clean_store(tools: ContainersTools) -> ContainersTools:
    """The podman/buildah store emptied first, so pulls download every blob again (the
    store is this xdist worker's own; its tests run one at a time)."""
    tools.buildah("rm", "--all")
    tools.podman("rmi", "--all", "--force")
    return tools


@pytest.fixture
def clean_dockerd(dockerd: Dockerd) -> Dockerd:
    """The shared dockerd with no images left by earlier tests of this worker, so pulls
    download every layer."""
    dockerd.docker("image", "prune", "--all", "--force")
    return dockerd
