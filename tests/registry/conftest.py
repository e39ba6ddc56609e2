from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.registry.service import Registry
from dockyard.server import prepare


def open_registry(data_dir: Path) -> Registry:
    settings = Settings(data_dir=data_dir)
    prepare(settings)
    return Registry.from_settings(settings)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def registry(data_dir: Path) -> Iterator[Registry]:
    reg = open_registry(data_dir)
    yield reg
    reg.close()


@pytest.fixture
def other_process(data_dir: Path, registry: Registry) -> Iterator[Registry]:
    """A second registry over the same data: what another worker process sees."""
    reg = open_registry(data_dir)
    yield reg
    reg.close()
