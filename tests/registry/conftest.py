"""The registry core over each metadata backend: every test here runs on SQLite (the
embedded default) and on PostgreSQL (a fresh database in the session's server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.registry.service import Registry
from dockyard.server import prepare

BACKENDS = ["sqlite", "postgresql"]


def open_registry(data_dir: Path, database_url: str | None = None) -> Registry:
    settings = Settings(data_dir=data_dir, database_url=database_url)
    prepare(settings)
    return Registry.from_settings(settings)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (in the data directory), else a fresh PostgreSQL database."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def registry(data_dir: Path, database_url: str | None) -> Iterator[Registry]:
    reg = open_registry(data_dir, database_url)
    yield reg
    reg.close()


@pytest.fixture
def other_process(
    data_dir: Path, database_url: str | None, registry: Registry
) -> Iterator[Registry]:
    """A second registry over the same data: what another worker process sees."""
    reg = open_registry(data_dir, database_url)
    yield reg
    reg.close()
