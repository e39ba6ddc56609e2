"""Fixtures of the authentication end-to-end suite.

Per xdist worker (session scope): a Dockyard with ``--auth`` over plain HTTP on 127.0.0.1,
another over TLS (certificate from a private CA), the test images, and, for the tests that
need them, a private dockerd (trusting the CA) and containerd. Tests make their own users,
robots and tokens with unique names, so they never step on each other.

When a shared registry stops, its whole log is searched for every secret the tests handed
out or received (passwords, robot secrets, access and refresh tokens): finding one is an
error of the last test that used it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.auth_e2e.accounts import Login, htpasswd_line
from tests.auth_e2e.certificates import Certificates, make_certificates, outward_address
from tests.auth_e2e.registry import AuthRegistry, next_loopback_address
from tests.e2e.containers_tools import ContainersTools, make_containers_tools
from tests.e2e.daemons import Containerd, Dockerd, running_containerd, running_dockerd
from tests.e2e.images import ImageSet, shared_image_set
from tests.support.processes import free_port, start_dockyard


def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory shared by all xdist workers of this run (the basetemp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def assert_no_secret_in_log(registry: AuthRegistry) -> None:
    leaked = registry.leaked()
    assert not leaked, f"secrets in the log of {registry.url}: {leaked}"


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return shared_image_set(_run_dir(tmp_path_factory) / "e2e-images")


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    address = outward_address()
    return make_certificates(
        tmp_path_factory.mktemp("tls"), ["127.0.0.1", *([address] if address else [])]
    )


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Dockyard with ``--auth`` on http://127.0.0.1:PORT."""
    server = start_dockyard(tmp_path_factory.mktemp("plain") / "data", auth=True)
    registry = AuthRegistry.started(server)
    try:
        yield registry
    finally:
        registry.close()
        server.stop()
    assert_no_secret_in_log(registry)


@pytest.fixture(scope="session")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[AuthRegistry]:
    """Dockyard with ``--auth`` over HTTPS, reached through this machine's non-loopback
    address when it has one (see certificates.py), else through 127.0.0.1."""
    port = free_port()
    server = start_dockyard(
        tmp_path_factory.mktemp("tls") / "data",
        "--listen", f"0.0.0.0:{port}",
        "--tls-cert", str(certificates.cert),
        "--tls-key", str(certificates.key),
        port=port,
        auth=True,
    )  # fmt: skip
    address = outward_address() or "127.0.0.1"
    registry = AuthRegistry.started(server, f"https://{address}:{port}", str(certificates.ca))
    try:
        yield registry
    finally:
        registry.close()
        server.stop()
    assert_no_secret_in_log(registry)


@pytest.fixture
def plain(plain_registry: AuthRegistry) -> Iterator[AuthRegistry]:
    """The plain registry, with this test's httpx requests coming from an address of its
    own (logins are braked per client address)."""
    registry = plain_registry.seen_from(next_loopback_address())
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def tls(tls_registry: AuthRegistry) -> Iterator[AuthRegistry]:
    """The TLS registry, with an httpx client of this test's own."""
    registry = tls_registry.seen_from(None)
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(params=["http", "tls"])
def target(request: pytest.FixtureRequest) -> AuthRegistry:
    """Each client test runs against both registries."""
    registry: AuthRegistry = request.getfixturevalue("plain" if request.param == "http" else "tls")
    return registry


class People:
    """Users of one registry, created on first use and shared by the tests of a worker
    (argon2 makes each one cost a noticeable fraction of a second)."""

    def __init__(self, registry: AuthRegistry) -> None:
        self.registry = registry
        self._made: dict[str, Login] = {}

    def __getitem__(self, name: str) -> Login:
        if name not in self._made:
            self._made[name] = self.registry.accounts.user(name)
        return self._made[name]


@pytest.fixture(scope="session")
def people(plain_registry: AuthRegistry) -> People:
    """alice, bob, carol ... on the plain registry: never disabled, deleted or renamed, and
    never given a wrong password (five of those would brake their logins for everyone)."""
    return People(plain_registry)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names of this test alone: ``unique("org")`` -> ``org-<test>-<id>`` (lower case, valid
    as a user, organization or repository name component)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].strip("-")
    token = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{slug}-{token}"


@pytest.fixture
def htpasswd_users(
    plain: AuthRegistry, unique: Callable[[str], str], tmp_path: Path
) -> list[Login]:
    """Two users of a registry:2 htpasswd file, imported by ``dockyard user import-htpasswd``
    (the executable)."""
    logins = [Login(unique("ht1"), f"old-pw-{time.time_ns()}"),
              Login(unique("ht2"), f"other-pw-{time.time_ns()}")]  # fmt: skip
    for login in logins:
        plain.remember(login.secret)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        "# registry:2 users\n" + "".join(htpasswd_line(*lg.pair) + "\n" for lg in logins)
    )
    output = plain.accounts.import_htpasswd(htpasswd)
    assert f"imported 2 users: {logins[0].username}, {logins[1].username}" in output
    return logins


# daemons and client configuration


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables while the block runs: running_dockerd starts dockerd with
    this process's environment."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def dockerd(
    tmp_path_factory: pytest.TempPathFactory,
    plain_registry: AuthRegistry,
    certificates: Certificates,
) -> Iterator[Dockerd]:
    """A private dockerd that trusts the test CA. dockerd reads registry CAs only from the
    machine-wide /etc/docker/certs.d; Go's TLS stack also honours SSL_CERT_FILE as the
    system roots, which is per process."""
    root = tmp_path_factory.mktemp("dockerd")
    with contextlib.ExitStack() as stack:
        with _environment(SSL_CERT_FILE=str(certificates.ca)):
            daemon = stack.enter_context(running_dockerd(root, [plain_registry.host]))
        yield daemon


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with running_containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon


@pytest.fixture
def namespace(containerd: Containerd) -> Iterator[str]:
    """A containerd namespace of this test alone, emptied afterwards (synchronous garbage
    collection) so that the next test's pulls download every blob again."""
    name = f"auth-{uuid.uuid4().hex[:12]}"
    yield name
    refs = containerd.ctr(name, "images", "ls", "--quiet").stdout.split()
    if refs:
        containerd.ctr(name, "images", "rm", "--sync", *refs)


@pytest.fixture(scope="session")
def tools(
    tmp_path_factory: pytest.TempPathFactory, plain_registry: AuthRegistry
) -> ContainersTools:
    """skopeo and podman with a private store, auth file and configuration (the plain
    registry is marked insecure there; the TLS one is reached with ``--cert-dir``)."""
    return make_containers_tools(tmp_path_factory.mktemp("containers"), plain_registry.host)
