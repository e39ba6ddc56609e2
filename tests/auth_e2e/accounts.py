"""Users, organizations, robots and personal access tokens, made with Dockyard's own command
line (``dockyard user|org|robot|token|repo``) on the data directory of a running server.

The commands run in this process through click's runner by default: the same code as the
``dockyard`` executable, without a second or two of interpreter start-up per command (the
suite makes dozens). ``run_cli_process`` runs the real executable where that matters.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from tests.support.processes import dockyard_command


@dataclass(frozen=True)
class Login:
    """A user name and the secret that goes with it (password, robot secret or personal
    access token)."""

    username: str
    secret: str
    credential_id: str | None = None  # robots and access tokens

    @property
    def basic(self) -> dict[str, str]:
        """The ``Authorization`` header of these credentials."""
        raw = f"{self.username}:{self.secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    @property
    def pair(self) -> tuple[str, str]:
        return (self.username, self.secret)

    @property
    def colon(self) -> str:
        """``user:secret`` as skopeo ``--creds`` and ctr ``--user`` take it."""
        return f"{self.username}:{self.secret}"


class CommandError(AssertionError):
    pass


def htpasswd_line(name: str, password: str) -> str:
    """What ``htpasswd -nbB name password`` (apache2-utils) prints: bcrypt, ``$2y$``."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{name}:$2y${hashed[4:]}"


def run_cli_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``dockyard`` executable itself; raises with its output when it fails."""
    proc = subprocess.run(
        [*dockyard_command(), *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise CommandError(
            f"dockyard {' '.join(args)} exited with {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class Accounts:
    """Identity management on one server's data directory. Every secret it creates is
    handed to ``remember`` (the log checks look for them)."""

    data_dir: Path
    remember: Callable[[str], None]
    _runner: Any = field(default=None, init=False, repr=False)

    def cli(self, *args: str) -> str:
        """Run ``dockyard ARGS --data-dir D`` in this process; its standard output."""
        from click.testing import CliRunner

        from dockyard.cli import main

        if self._runner is None:
            self._runner = CliRunner()
        result = self._runner.invoke(main, [*args, "--data-dir", str(self.data_dir)])
        if result.exit_code != 0:
            raise CommandError(
                f"dockyard {' '.join(args)} exited with {result.exit_code}:\n{result.output}"
                + (f"\n{result.exception!r}" if result.exception else "")
            )
        return str(result.output)

    # users and organizations

    def user(self, name: str, password: str | None = None, admin: bool = False) -> Login:
        password = password or f"pw-{name}-{time.time_ns()}"
        self.remember(password)
        self.cli("user", "add", name, "--password", password, *(["--admin"] if admin else []))
        return Login(name, password)

    def set_user(self, name: str, *flags: str) -> None:
        """``dockyard user set NAME --disabled`` and the like."""
        self.cli("user", "set", name, *flags)

    def org(self, name: str, owner: str | None = None, public: bool = False) -> None:
        args = ["org", "create", name]
        if owner:
            args += ["--owner", owner]
        if public:
            args.append("--public")
        self.cli(*args)

    def member(self, org: str, user: str, role: str) -> None:
        self.cli("org", "member", org, user, role)

    def visibility(self, repository: str, visibility: str) -> None:
        self.cli("repo", "visibility", repository, visibility)

    # robots and personal access tokens

    def robot(
        self, namespace: str, name: str, *permissions: str, expires_in_days: float | None = None
    ) -> Login:
        args = ["robot", "create", namespace, name]
        for permission in permissions:
            args += ["--permission", permission]
        if expires_in_days is not None:
            args += ["--expires-in-days", repr(expires_in_days)]
        output = self.cli(*args)
        username = _field(output, "username")
        secret = _field(output, "secret")
        self.remember(secret)
        return Login(username, secret, self.robot_id(username))

    def robot_id(self, login_name: str) -> str:
        namespace = login_name.removeprefix("robot$").split("+", 1)[0]
        for entry in json.loads(self.cli("robot", "list", "--namespace", namespace)):
            if entry["name"] == login_name:
                return str(entry["id"])
        raise AssertionError(f"{login_name} is not in `dockyard robot list`")

    def revoke_robot(self, login_name: str) -> None:
        self.cli("robot", "revoke", login_name)

    def access_token(
        self, user: str, name: str, *permissions: str, expires_in_days: float | None = None
    ) -> Login:
        args = ["token", "create", user, name]
        for permission in permissions:
            args += ["--permission", permission]
        if expires_in_days is not None:
            args += ["--expires-in-days", repr(expires_in_days)]
        output = self.cli(*args)
        secret = _field(output, "token")
        self.remember(secret)
        return Login(user, secret, _field(output, "id"))

    def revoke_token(self, credential_id: str) -> None:
        self.cli("token", "revoke", credential_id)

    def expire(self, credential_id: str) -> None:
        """Move a robot's or token's expiry into the past, as if its days had gone by.

        No command changes an expiry, so this writes the row itself, then announces the
        change the way every Dockyard writer does (the shared generation counter beside the
        SQLite file), so that running servers drop what they cached.
        """
        from dockyard.db.changes import ChangeWatcher

        database = self.data_dir / "dockyard.db"
        conn = sqlite3.connect(database, timeout=30)
        try:
            with conn:
                changed = conn.execute(
                    "UPDATE credentials SET expires_at = ? WHERE id = ?",
                    (time.time() - 60, credential_id),
                ).rowcount
        finally:
            conn.close()
        assert changed == 1, f"no credential {credential_id}"
        watcher = ChangeWatcher(f"sqlite:///{database.resolve()}")
        watcher.bump()
        watcher.close()

    def import_htpasswd(self, path: Path) -> str:
        """``dockyard user import-htpasswd FILE``, the executable; its output."""
        args = ["user", "import-htpasswd", str(path), "--data-dir", str(self.data_dir)]
        return run_cli_process(*args).stdout

    def password_hash(self, user: str) -> str:
        conn = sqlite3.connect(self.data_dir / "dockyard.db", timeout=30)
        try:
            row = conn.execute("SELECT password_hash FROM users WHERE name = ?", (user,)).fetchone()
        finally:
            conn.close()
        assert row is not None, f"no user {user}"
        return str(row[0])


def _field(output: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(\S+)\s*$", output, re.MULTILINE)
    assert match, f"no {name!r} in the command's output:\n{output}"
    return match.group(1)
