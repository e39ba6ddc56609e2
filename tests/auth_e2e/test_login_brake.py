"""Brute force slows down: after five failed logins of a user name or from an address,
every login of that name or from that address (the correct one too) is answered
``429 TOOMANYREQUESTS`` with ``Retry-After`` until the brake lifts, and each further failure
doubles the wait. Rate limits (when configured) answer the same way, per client address
and per identity. Each test has a registry of its own: the brake would slow the other
tests' logins down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth_e2e.accounts import Login
from tests.auth_e2e.registry import AuthRegistry, show
from tests.support.processes import start_dockyard, wait_until

FREE_FAILURES = 5
ATTACKER, ELSEWHERE = "127.0.9.1", "127.0.9.2"


def own_registry(root: Path, *args: str) -> Iterator[AuthRegistry]:
    server = start_dockyard(root / "data", *args, auth=True)
    registry = AuthRegistry.started(server)
    try:
        yield registry
    finally:
        registry.close()
        server.stop()


@pytest.fixture
def one_process(tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry with one server process (the brake's counts live in each process)."""
    yield from own_registry(tmp_path, "--workers", "1")


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[AuthRegistry]:
    yield from own_registry(tmp_path, "--workers", "2")


def token_status(client: httpx.Client, login: Login) -> httpx.Response:
    return client.get("/auth/token", params={"service": "dockyard"}, headers=login.basic)


def assert_too_many(response: httpx.Response) -> int:
    """A 429 TOOMANYREQUESTS with a Retry-After in whole seconds; returns it."""
    assert response.status_code == 429, show(response)
    assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 301
    return retry_after


def test_repeated_failures_brake_logins(one_process: AuthRegistry) -> None:
    registry = one_process
    accounts = registry.accounts
    victim, bystander = accounts.user("victim"), accounts.user("bystander")
    robot = accounts.robot("bystander", "ci", "bystander/*:pull")
    early = registry.token(victim, "repository:victim/app:pull,push")  # before the attack
    wrong = Login(victim.username, "guess-" + victim.secret)
    registry.remember(wrong.secret)
    attacker = registry.seen_from(ATTACKER)
    elsewhere = registry.seen_from(ELSEWHERE)

    statuses = [token_status(attacker.http, wrong).status_code for _ in range(FREE_FAILURES)]
    assert statuses == [401] * FREE_FAILURES  # a few typos cost nothing
    first_wait = assert_too_many(token_status(attacker.http, wrong))

    # while the brake holds, even the right password is refused: for this user name from
    # anywhere, and for anyone from this address, at the token endpoint and on /v2
    assert_too_many(token_status(attacker.http, victim))
    assert_too_many(token_status(elsewhere.http, victim))
    assert_too_many(token_status(attacker.http, bystander))
    assert_too_many(token_status(attacker.http, robot))
    assert_too_many(attacker.http.get("/v2/", headers=victim.basic))
    posted = attacker.http.post(
        "/auth/token",
        data={"grant_type": "password", "username": bystander.username,
              "password": bystander.secret, "service": "dockyard", "client_id": "x"},
    )  # fmt: skip
    assert_too_many(posted)
    # other names from other addresses log in; tokens already issued keep working
    assert token_status(elsewhere.http, bystander).status_code == 200
    uploads = attacker.http.post("/v2/victim/app/blobs/uploads/", headers=early.bearer)
    assert uploads.status_code == 202, show(uploads)

    # the brake lifts after Retry-After ...
    wait_until(
        lambda: token_status(elsewhere.http, victim).status_code == 200,
        first_wait + 5,
        "the brake on the victim's name to lift",
    )
    # ... and from the attacker's address each new failure doubles the wait
    wait_until(
        lambda: token_status(attacker.http, wrong).status_code == 401,
        first_wait + 5,
        "the brake on the attacker's address to lift",
    )
    assert assert_too_many(token_status(attacker.http, wrong)) > first_wait


def test_brake_counts_failures_across_server_processes(two_processes: AuthRegistry) -> None:
    """A registry serves with several processes (one per CPU by default). The failures an
    attacker makes must count wherever they land: on fresh connections, spread over the
    processes, five free failures are still five."""
    registry = two_processes
    victim = registry.accounts.user("victim")
    wrong = Login(victim.username, "guess-" + victim.secret)
    registry.remember(wrong.secret)
    attacker = registry.seen_from(ATTACKER)
    answers = []
    for _ in range(4 * FREE_FAILURES):
        with attacker.new_http() as client:  # a new connection each time
            answers.append(token_status(client, wrong).status_code)
    refused_as_wrong = answers.count(401)
    assert refused_as_wrong <= FREE_FAILURES + 1, (
        f"{refused_as_wrong} wrong passwords were checked before the brake held: {answers}"
    )


@pytest.fixture
def rate_limited(tmp_path: Path) -> Iterator[AuthRegistry]:
    """Three requests per identity and per address, then one every 100 seconds."""
    server = start_dockyard(
        tmp_path / "data",
        "--workers", "1",
        env={"DOCKYARD_RATE_LIMIT_PER_SECOND": "0.01", "DOCKYARD_RATE_LIMIT_BURST": "3"},
        auth=True,
    )  # fmt: skip
    registry = AuthRegistry.started(server)
    try:
        yield registry
    finally:
        registry.close()
        server.stop()


def test_rate_limit_per_address_and_identity(rate_limited: AuthRegistry) -> None:
    registry = rate_limited
    grant = registry.token(registry.admin, "repository:admin/app:pull")
    anonymous, holder, elsewhere, other = (
        registry.seen_from(address) for address in ("127.0.7.1", "127.0.7.2", "127.0.7.3",
                                                    "127.0.7.4")
    )  # fmt: skip
    assert [anonymous.http.get("/v2/").status_code for _ in range(3)] == [401] * 3
    assert_too_many(anonymous.http.get("/v2/"))  # the address's bucket is empty
    statuses = [holder.http.get("/v2/", headers=grant.bearer).status_code for _ in range(3)]
    assert statuses == [200] * 3
    # the identity's bucket is empty too, from any address
    assert_too_many(elsewhere.http.get("/v2/", headers=grant.bearer))
    # other addresses and identities are not limited by them
    assert other.http.get("/v2/").status_code == 401
