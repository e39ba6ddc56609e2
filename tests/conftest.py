"""Shared fixtures: a Dockyard server per test session (or per test where a test needs its
own), started as a real process on a free port.

Set ``DOCKYARD_TEST_TARGET=distribution`` to run the API tests against CNCF Distribution
2.8.2 instead: a quick way to check that a test encodes the spec, not our implementation.
``DOCKYARD_TEST_TARGET=scaleout`` runs them against two Dockyard nodes on PostgreSQL,
SeaweedFS S3 and Redis behind a round-robin balancer (tests/support/scaleout.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import postgres_empty_url, postgres_server, postgres_url
from tests.support.processes import Server, start_distribution, start_dockyard
from tests.support.seaweed import seaweed  # noqa: F401  (SeaweedFS S3, for tests that ask)

# PostgreSQL for the tests that ask for it (tests/support/postgres.py)
__all__ = ["postgres_empty_url", "postgres_server", "postgres_url"]

TARGET = os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")

# The protocol, client and lifecycle tests run an open registry (as a bare registry:2 is):
# every server a test starts inherits this unless it passes --auth, as the tests of
# authentication do.
os.environ.setdefault("DOCKYARD_AUTH", "false")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One registry shared by the tests of a session (each test uses its own repositories)."""
    root = tmp_path_factory.mktemp("registry")
    if TARGET == "scaleout":
        from tests.support.scaleout import running_cluster

        with running_cluster(root) as cluster:
            yield cluster.as_server()
        return
    if TARGET == "distribution":
        server = start_distribution(root / "data")
    else:
        server = start_dockyard(root / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[Server]:
    """A registry for one test alone (for tests that restart, kill or fill it)."""
    server = start_dockyard(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()
