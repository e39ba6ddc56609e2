"""A real PostgreSQL server for the tests, from the Debian binaries.

One server per pytest session (per xdist worker): ``initdb`` into a temporary directory,
then ``postgres`` on a free port of 127.0.0.1 with its socket in that directory, fsync off
(the tests never survive a power cut anyway). Each test that wants PostgreSQL gets a fresh
database in it (``CREATE DATABASE t_<random>``), dropped afterwards: ``postgres_url`` one
already migrated (cloned from a template database migrated once per session; the next one
is made in the background while a test runs, as creating a database takes a second),
``postgres_empty_url`` an empty one, for the tests of migrations themselves.

PostgreSQL refuses to run as root: as root (CI), initdb and postgres run as the
``postgres`` system user, owner of the directories; otherwise as the current user.

The cluster collates with ICU's ``en`` locale, as a production database made with a
language locale does (not bytewise like SQLite): ordering bugs show up here, not there.

Set ``DOCKYARD_TEST_POSTGRES_URL`` to an existing server's URL (a role allowed to create
databases) to use it instead of starting one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.processes import ProcessDied, free_port, wait_until

_BINARIES = Path("/usr/lib/postgresql")


def postgres_bin_dir() -> Path | None:
    """``/usr/lib/postgresql/<highest version>/bin``, when PostgreSQL is installed."""
    if not _BINARIES.is_dir():
        return None
    versions = [
        p for p in _BINARIES.iterdir() if p.name.isdigit() and (p / "bin" / "postgres").is_file()
    ]
    if not versions:
        return None
    return max(versions, key=lambda p: int(p.name)) / "bin"


@dataclass
class PostgresServer:
    """A running server: ``url(database)`` names one of its databases."""

    host: str
    port: int
    user: str
    password: str | None
    proc: subprocess.Popen[bytes] | None
    log_path: Path | None
    _template: str | None = None
    _spare: Future[str] | None = None
    _maker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def url(self, database: str = "postgres") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{secrets.token_hex(6)}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return name

    def migrated_database(self) -> str:
        """A new database with Dockyard's schema up to date."""
        if self._template is None:
            from dockyard.db.engine import Database

            self._template = f"template_{secrets.token_hex(4)}"
            with self.admin() as conn:
                conn.execute(f'CREATE DATABASE "{self._template}"')
            database = Database(self.url(self._template))
            try:
                database.upgrade()
            finally:
                database.dispose()
        spare, self._spare = self._spare, self._maker.submit(self.create_database, self._template)
        return spare.result() if spare is not None else self.create_database(self._template)

    def close(self) -> None:
        """Drop what this session made that no test took (an external server lives on)."""
        if self._spare is not None:
            with contextlib.suppress(Exception):
                self.drop_database(self._spare.result())
            self._spare = None
        self._maker.shutdown(wait=True)
        if self._template is not None:
            with contextlib.suppress(Exception), self.admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._template}" WITH (FORCE)')
            self._template = None

    def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"t_[0-9a-f]+", name):
            raise ValueError(f"not a test database: {name}")
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL if it does not go in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)


def _run_as() -> tuple[str, int | None, int | None]:
    """(user name, uid, gid) to run the server as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, PostgreSQL needs the `postgres` system user (Debian package "
            "postgresql creates it)"
        ) from None
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def start_postgres(root: Path, timeout: float = 60) -> PostgresServer:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            f"PostgreSQL is not installed (no {_BINARIES}/<version>/bin/postgres); "
            "apt-get install postgresql"
        )
    user, uid, gid = _run_as()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    sockets = root / "sockets"
    sockets.mkdir(exist_ok=True)
    if uid is not None and gid is not None:
        # the postgres user must reach the directories: each parent of a pytest tmp dir is
        # 0700 and root's, so the server's files live in a directory of their own under /tmp
        for path in (root, sockets):
            os.chown(path, uid, gid)
    log_path = root / "postgres.log"
    as_user: dict[str, Any] = {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    initdb = subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--locale-provider=icu",
            "--icu-locale=en",
            "--no-sync",
        ],
        capture_output=True,
        cwd=root,
        env=env,
        **as_user,
    )
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{initdb.stdout.decode()}{initdb.stderr.decode()}")
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-k",
                str(sockets),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,
            **as_user,
        )
    server = PostgresServer("127.0.0.1", port, user, None, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise ProcessDied(f"postgres exited with {proc.returncode}:\n{server.log()}")
        with psycopg.connect(server.url(), connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    try:
        wait_until(ready, timeout, f"postgres on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A server for as long as the block runs, in a directory of its own that goes with it."""
    external = os.environ.get("DOCKYARD_TEST_POSTGRES_URL")
    if external:
        info = psycopg.conninfo.conninfo_to_dict(external)
        yield PostgresServer(
            str(info.get("host", "127.0.0.1")),
            int(info.get("port", 5432)),
            str(info.get("user", "postgres")),
            str(info["password"]) if info.get("password") else None,
            None,
            None,
        )
        return
    root = Path(tempfile.mkdtemp(prefix="dockyard-pg-"))
    try:
        server = start_postgres(root)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each xdist worker has its own)."""
    with running_postgres() as server:
        try:
            yield server
        finally:
            server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test, schema up to date: its ``postgresql://`` URL."""
    name = postgres_server.migrated_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def postgres_empty_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test: its ``postgresql://`` URL."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
