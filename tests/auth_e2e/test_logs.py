"""Secrets stay secret: the first administrator's generated password is shown once, and no
password, robot secret, access token, refresh token or JWT ever reaches the server's
standard output or error (access log, application log) or is stored readable in the
database, whatever the requests, right or wrong, and at the debug log level too.

(The shared registries of the suite are searched the same way when they stop; see
conftest.py.)"""

from __future__ import annotations

import base64
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth_e2e.accounts import Login
from tests.auth_e2e.registry import AuthRegistry, show
from tests.support.processes import start_dockyard


@pytest.fixture
def debug_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    server = start_dockyard(tmp_path / "data", "--log-level", "debug", auth=True)
    registry = AuthRegistry.started(server)
    try:
        yield registry
    finally:
        registry.close()
        server.stop()


def stored_anywhere(data_dir: Path, secret: str) -> list[str]:
    """Files of the data directory (database, its WAL, keys ...) holding ``secret``."""
    needle = secret.encode()
    return [
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


def test_secrets_never_reach_the_logs_or_the_database(debug_registry: AuthRegistry) -> None:
    registry = debug_registry
    accounts = registry.accounts
    user = accounts.user("owner", "correct-horse-battery-staple")
    robot = accounts.robot("owner", "ci", "owner/*:pull,push")
    pat = accounts.access_token("owner", "laptop")
    secrets = [user.secret, robot.secret, pat.secret]
    wrong = [
        Login("owner", "wrong-horse-battery-staple"),
        Login(robot.username, robot.secret[:-3] + "xyz"),
        Login("owner", pat.secret[:-3] + "xyz"),
        Login("nobody-at-all", "a-password-for-nobody"),
    ]
    secrets += [w.secret for w in wrong]

    # right credentials, each way they are accepted
    for login in (user, robot, pat):
        grant = registry.token(login, "repository:owner/app:pull,push", offline=True)
        assert grant.refresh_token
        secrets += [grant.token, grant.refresh_token]
        assert registry.http.get("/v2/", headers=login.basic).status_code == 200
        posted = registry.oauth(
            {"grant_type": "password", "username": login.username, "password": login.secret,
             "client_id": "logs", "access_type": "offline"},
        )  # fmt: skip
        assert posted.status_code == 200, show(posted)
        secrets += [posted.json()["access_token"], posted.json()["refresh_token"]]
        refreshed = registry.oauth(
            {"grant_type": "refresh_token", "refresh_token": grant.refresh_token,
             "client_id": "logs", "scope": "repository:owner/app:pull"},
        )  # fmt: skip
        assert refreshed.status_code == 200, show(refreshed)
        secrets.append(refreshed.json()["access_token"])
        upload = registry.http.post("/v2/owner/app/blobs/uploads/", headers=grant.bearer)
        assert upload.status_code == 202, show(upload)

    # wrong credentials, malformed ones, and secrets where they do not belong
    for index, login in enumerate(wrong):
        source = registry.seen_from(f"127.0.8.{index + 1}")  # no brake in the way
        assert source.token_response(login).status_code == 401
        assert source.http.get("/v2/", headers=login.basic).status_code == 401
        source.close()
    source = registry.seen_from("127.0.8.100")
    malformed = [
        {"Authorization": "Basic " + base64.b64encode(user.secret.encode()).decode()},
        {"Authorization": f"Basic {user.secret}"},
        {"Authorization": f"Bearer {robot.secret}"},
        {"Authorization": f"Token {pat.secret}"},
        {"Authorization": "Bearer " + grant.token[:-10] + "AAAAAAAAAA"},
    ]
    for headers in malformed:
        response = source.http.get("/v2/owner/app/tags/list", headers=headers)
        assert response.status_code == 401, show(response)
    refresh_as_password = source.oauth(
        {"grant_type": "refresh_token", "refresh_token": pat.secret, "client_id": "logs"}
    )
    assert refresh_as_password.status_code == 401
    source.close()
    accounts.revoke_robot(robot.username)
    assert registry.token_response(robot).status_code == 401

    registry.server.stop(signal.SIGTERM)  # every line flushed
    log = registry.server.log()
    logged = registry.access_log()
    assert len([e for e in logged if e["path"] == "/auth/token"]) >= 15  # the log is whole
    leaked = [s[:12] + "..." for s in set(secrets) | registry.secrets if s in log]
    assert not leaked, f"secrets in the server log: {leaked}"
    stored = {s[:12] + "...": stored_anywhere(registry.server.data_dir, s) for s in secrets}
    assert not {k: v for k, v in stored.items() if v}, stored


def test_first_admin_password_is_printed_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_dockyard(data_dir, auth=True)
    try:
        registry = AuthRegistry.started(server)
        password = registry.admin.secret
        assert len(password) >= 16
        grant = registry.token(registry.admin, "registry:catalog:*")
        assert grant.access == {"registry:catalog": {"*"}}  # a site administrator
        registry.close()
    finally:
        server.stop()
    assert server.log().count(password) == 1

    # a second start creates no other administrator and prints no password
    again = start_dockyard(data_dir, auth=True)
    try:
        log = again.log()  # the log of this start alone
        assert password not in log
        assert not re.findall(r"^\s*password:", log, re.MULTILINE), log
        registry = AuthRegistry(again, again.url, Login("admin", password), None)
        assert registry.token(registry.admin).claims["sub"] == "admin"
        users = registry.accounts.cli("user", "list")
        assert users.count('"name"') == 1
        registry.close()
    finally:
        again.stop()
