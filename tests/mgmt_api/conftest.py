"""Fixtures of the management API tests.

One Dockyard with ``--auth`` per xdist worker (session scope); its first site administrator
is the one the server makes on its first start. Tests make their own users, organizations and robots
with unique names, so they never step on each other.

Failed logins slow down every later login from the same address (the login brake), and
every test talks from 127.0.0.1: tests that send wrong credentials (or use a revoked or
disabled one) take a server of their own (``own_server``), a handful of failures each.

When a server stops, its log is searched for every secret handed out during the tests
(but the first administrator's password, which it prints once by design).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.mgmt_api.api import Api, Registry
from tests.support.processes import start_dockyard


def start_registry(data_dir: Path, *extra: str) -> Registry:
    """Dockyard with ``--auth``; its first administrator's password, printed once on
    stderr, is read from the server's log."""
    server = start_dockyard(data_dir, "--auth", "--workers", "1", *extra)
    found = re.search(r"user: +admin\n +password: +(\S+)", server.log())
    assert found, server.log()
    return Registry(server, found[1])


def stop_registry(registry: Registry) -> None:
    registry.close()
    registry.server.stop()
    log = registry.server.log()
    leaked = [s[:12] + "..." for s in registry.secrets if s in log]
    assert not leaked, f"secrets in the server log: {leaked}"
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The shared server (never send it wrong credentials)."""
    reg = start_registry(tmp_path_factory.mktemp("mgmt") / "data")
    try:
        yield reg
    finally:
        stop_registry(reg)


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[Registry]:
    """A server for one test (for wrong, revoked or disabled credentials)."""
    reg = start_registry(tmp_path / "data")
    try:
        yield reg
    finally:
        stop_registry(reg)


@pytest.fixture
def admin(registry: Registry) -> Api:
    return registry.admin()


@pytest.fixture
def anonymous(registry: Registry) -> Api:
    return registry.api()


@pytest.fixture(scope="module")
def shared_user(registry: Registry) -> Api:
    """An ordinary user for the tests of a module that change nothing of theirs (bad
    input, refusals)."""
    return registry.new_user(registry.admin())


@pytest.fixture
def user(registry: Registry, admin: Api) -> Api:
    """A fresh ordinary user."""
    return registry.new_user(admin)


@pytest.fixture
def other(registry: Registry, admin: Api) -> Api:
    """Another fresh ordinary user."""
    return registry.new_user(admin)


@pytest.fixture
def http(registry: Registry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        yield client
