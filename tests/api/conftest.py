"""Fixtures for the HTTP API tests.

The tests encode the specs (OCI distribution 1.1 and its unreleased additions, Docker
Registry API v2), not Dockyard's code: with ``DOCKYARD_TEST_TARGET=distribution`` they run
against CNCF Distribution 2.8.2. Tests marked ``dockyard_only`` cover what Distribution
2.8.2 does not do (referrers, ``?tag=``, 416 on out-of-order chunks ...); they are skipped
there and always run against Dockyard (``DOCKYARD_TEST_RUN_ALL=1`` runs them against
Distribution as well, to check that each marker is still needed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.content import make_image
from tests.api.protocol import Sentinel, new_repo, push_image, registry_client
from tests.support.processes import Server, start_distribution, start_dockyard

TARGET = os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")
# Run the dockyard_only tests against Distribution too, to see whether a marker still holds.
RUN_ALL = os.environ.get("DOCKYARD_TEST_RUN_ALL") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dockyard_only(reason): required of Dockyard, but not done by Distribution 2.8.2 "
        "(skipped when DOCKYARD_TEST_TARGET=distribution)",
    )


@pytest.fixture(autouse=True)
def _skip_dockyard_only(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("dockyard_only")
    if marker is not None and TARGET == "distribution" and not RUN_ALL:
        reason = marker.args[0] if marker.args else "not supported by Distribution 2.8.2"
        pytest.skip(f"Distribution 2.8.2: {reason}")


@pytest.fixture
def client(registry: Server) -> Iterator[httpx.Client]:
    with registry_client(registry.url) as session:
        yield session


@pytest.fixture
def repo() -> str:
    return new_repo()


@pytest.fixture(scope="session")
def sentinel(registry: Server) -> Sentinel:
    image = make_image(layer_count=2, layer_size=4096)
    repo = new_repo("sentinel")
    with registry_client(registry.url) as session:
        push_image(session, repo, image, "stable")
    return Sentinel(repo, "stable", image)


def start_target(data_dir: Path) -> Server:
    if TARGET == "distribution":
        return start_distribution(data_dir)
    return start_dockyard(data_dir)


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A registry of the module's own (for tests that need to know all of its content,
    like the catalog)."""
    server = start_target(tmp_path_factory.mktemp("module-registry") / "data")
    try:
        yield server
    finally:
        server.stop()
