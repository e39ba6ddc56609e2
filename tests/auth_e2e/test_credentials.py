"""Robot accounts and personal access tokens: they work until revoked or expired, and then
fail everywhere a secret is accepted: the token endpoint (GET with Basic, OAuth2 POST) and
Basic credentials on /v2. Users imported from a registry:2 htpasswd file log in with
their old passwords."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth_e2e.accounts import CommandError, Login, htpasswd_line
from tests.auth_e2e.conftest import People
from tests.auth_e2e.registry import AuthRegistry, challenge, next_loopback_address, show
from tests.support.oci_client import random_image
from tests.support.processes import wait_until


def oauth_password(registry: AuthRegistry, login: Login) -> httpx.Response:
    return registry.oauth(
        {
            "grant_type": "password",
            "username": login.username,
            "password": login.secret,
            "client_id": "auth-e2e",
        }
    )


def base_with_basic(registry: AuthRegistry, login: Login) -> httpx.Response:
    return registry.http.get("/v2/", headers=login.basic)


def assert_accepted(registry: AuthRegistry, login: Login, repository: str) -> None:
    grant = registry.token(login, f"repository:{repository}:pull,push")
    assert f"repository:{repository}" in grant.access, grant.claims
    assert oauth_password(registry, login).status_code == 200
    response = base_with_basic(registry, login)
    assert response.status_code == 200, show(response)
    uploads = registry.http.post(f"/v2/{repository}/blobs/uploads/", headers=login.basic)
    assert uploads.status_code == 202, show(uploads)


def assert_refused(registry: AuthRegistry, login: Login, repository: str) -> None:
    """Refused at the token endpoint (both flavours) and with Basic credentials on /v2,
    each a 401 with a challenge, never a token.

    These are three failed logins, from an address of their own: a user name may fail five
    times before its logins are braked, correct ones included (a success clears the count)."""
    registry = registry.seen_from(next_loopback_address())
    try:
        token = registry.token_response(login, f"repository:{repository}:pull,push")
        assert token.status_code == 401, show(token)
        assert "token" not in token.json()
        assert challenge(token)["scheme"] == "Basic"
        posted = oauth_password(registry, login)
        assert posted.status_code == 401, show(posted)
        assert "access_token" not in posted.text
        response = registry.http.post(f"/v2/{repository}/blobs/uploads/", headers=login.basic)
        assert response.status_code == 401, show(response)
        assert challenge(response)["scheme"] == "Bearer"
    finally:
        registry.close()


def test_revoked_robot_is_refused(plain: AuthRegistry, unique: Callable[[str], str]) -> None:
    owner = plain.accounts.user(unique("rv"))
    repository = f"{owner.username}/app"
    robot = plain.accounts.robot(owner.username, "ci", f"{owner.username}/*:pull,push")
    assert_accepted(plain, robot, repository)
    before = plain.token(robot, f"repository:{repository}:pull")

    plain.accounts.revoke_robot(robot.username)
    assert_refused(plain, robot, repository)
    # an access token issued before lives until it expires, for what it holds, and no more
    response = plain.http.post(f"/v2/{repository}/blobs/uploads/", headers=before.bearer)
    assert response.status_code == 401, show(response)
    assert challenge(response).get("error") == "invalid_token"


def test_expired_robot_is_refused(plain: AuthRegistry, unique: Callable[[str], str]) -> None:
    owner = plain.accounts.user(unique("ex"))
    ns = owner.username
    repository = f"{ns}/app"
    # the same robot twice: one that expires in a month (the control) and one whose
    # 8.64 milliseconds have passed by the time it is used
    lasting = plain.accounts.robot(ns, "lasting", f"{ns}/*:pull,push", expires_in_days=30)
    brief = plain.accounts.robot(ns, "brief", f"{ns}/*:pull,push", expires_in_days=1e-7)
    listed = {r["name"]: r for r in robot_list(plain, ns)}
    expires_at = listed[brief.username]["expires_at"]
    assert expires_at - listed[brief.username]["created_at"] < 0.01
    wait_until(lambda: time.time() > expires_at, 5, "8.64 ms to pass")
    assert_accepted(plain, lasting, repository)
    assert_refused(plain, brief, repository)

    # and one that expires while in use (its expiry moved into the past)
    assert lasting.credential_id is not None
    plain.accounts.expire(lasting.credential_id)
    assert_refused(plain, lasting, repository)


def robot_list(registry: AuthRegistry, namespace: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(
        registry.accounts.cli("robot", "list", "--namespace", namespace)
    )
    return value


def test_robot_secret_only_for_its_own_name(
    plain: AuthRegistry, unique: Callable[[str], str]
) -> None:
    owner = plain.accounts.user(unique("rn"))
    ns = owner.username
    one = plain.accounts.robot(ns, "one", f"{ns}/*:pull")
    two = plain.accounts.robot(ns, "two", f"{ns}/*:pull")
    swapped = Login(two.username, one.secret)
    assert plain.token_response(swapped).status_code == 401
    assert base_with_basic(plain, swapped).status_code == 401
    as_owner = Login(owner.username, one.secret)
    assert plain.token_response(as_owner).status_code == 401


def test_personal_access_token(plain: AuthRegistry, unique: Callable[[str], str]) -> None:
    owner = plain.accounts.user(unique("pat"))
    ns = owner.username
    full = plain.accounts.access_token(ns, "full")
    narrow = plain.accounts.access_token(ns, "narrow", f"{ns}/read-*:pull")
    image = random_image(f"{ns}/read-me", "v1")
    with plain.pusher(full, image.repository) as client:  # a token, not the password
        client.push_image(image)

    assert_accepted(plain, full, f"{ns}/app")
    # narrowed: pull in read-*, nothing else, whatever the user may do
    assert plain.token(narrow, f"repository:{image.repository}:pull,push").access == {
        f"repository:{image.repository}": {"pull"}
    }
    assert plain.token(narrow, f"repository:{ns}/app:pull,push").access == {}
    refused = plain.http.post(f"/v2/{ns}/app/blobs/uploads/", headers=narrow.basic)
    assert refused.status_code == 403, show(refused)
    pulled = plain.http.get(f"/v2/{image.repository}/manifests/v1", headers=narrow.basic)
    assert pulled.status_code == 200 and pulled.content == image.manifest
    # a token belongs to its user: with another name it is nothing
    other = plain.accounts.user(unique("other"))
    assert plain.token_response(Login(other.username, full.secret)).status_code == 401

    assert full.credential_id is not None
    plain.accounts.revoke_token(full.credential_id)
    assert_refused(plain, full, f"{ns}/app")
    assert plain.token(narrow, f"repository:{image.repository}:pull").access  # unaffected
    assert narrow.credential_id is not None
    plain.accounts.expire(narrow.credential_id)
    assert_refused(plain, narrow, f"{ns}/app")


def test_disabled_user_is_refused(plain: AuthRegistry, unique: Callable[[str], str]) -> None:
    user = plain.accounts.user(unique("off"))
    pat = plain.accounts.access_token(user.username, "ci")
    repository = f"{user.username}/app"
    assert_accepted(plain, user, repository)
    plain.accounts.set_user(user.username, "--disabled")
    assert_refused(plain, user, repository)
    # a disabled user's tokens go with them (the fourth failed login of this name)
    assert plain.token_response(pat).status_code == 401
    plain.accounts.set_user(user.username, "--enabled")
    assert_accepted(plain, pat, repository)


# migrating from registry:2


def test_htpasswd_users_log_in(plain: AuthRegistry, htpasswd_users: list[Login]) -> None:
    first, second = htpasswd_users
    assert plain.accounts.password_hash(first.username).startswith("$2y$")
    repository = f"{first.username}/app"
    assert_accepted(plain, first, repository)
    assert plain.token_response(Login(first.username, second.secret)).status_code == 401
    image = random_image(repository, "v1")
    with plain.pusher(first, repository) as client:
        client.push_image(image)
        client.check_image(image)


def test_htpasswd_import_refuses_other_hashes(
    plain: AuthRegistry, unique: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique("md5")
    htpasswd = tmp_path / "htpasswd"
    # an Apache MD5 entry (htpasswd -m): not importable, and nothing of the file is
    htpasswd.write_text(
        htpasswd_line(unique("ok"), "fine-password") + "\n"
        f"{name}:$apr1$abcdefgh$0123456789abcdefghijkl\n"
    )
    with pytest.raises(CommandError, match="bcrypt"):
        plain.accounts.import_htpasswd(htpasswd)
    users = plain.accounts.cli("user", "list")
    assert name not in users and unique("ok") not in users


def test_htpasswd_import_does_not_take_an_organizations_name(
    plain: AuthRegistry, people: People, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """A user and an organization never share a name: the name is a namespace, and a user
    may do everything in the namespace of their name. An htpasswd entry named like an
    existing organization must not become a user (who would then own the organization's
    repositories)."""
    org = unique("team")
    plain.accounts.org(org, owner=people["alice"].username)
    secret_image = random_image(f"{org}/internal", "v1")
    with plain.pusher(people["alice"], secret_image.repository) as client:
        client.push_image(secret_image)
    intruder = Login(org, f"htpasswd-pw-{time.time_ns()}")
    plain.remember(intruder.secret)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line(*intruder.pair) + "\n")
    try:
        output = plain.accounts.import_htpasswd(htpasswd)
    except CommandError as refused:
        output = str(refused)
    grant = plain.token_response(intruder, f"repository:{secret_image.repository}:pull,push")
    if grant.status_code == 200:
        access = plain.grant_of(grant).access
        assert access == {}, f"the imported user {org!r} got {access} in the organization"
    else:
        assert grant.status_code == 401, show(grant)
    assert f"imported 1 users: {org}" not in output
