"""Managing identities: users, organizations and members, robot accounts, personal access
tokens, refresh tokens, repository visibility. Used by the CLI and the management API;
callers check who may do what (``policy.can_manage``) before calling."""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dockyard.auth.identities import (
    ACTIONS,
    ROBOT_PREFIX,
    ROBOT_SECRET_PREFIX,
    TOKEN_PREFIX,
    Identity,
    LoginFailed,
    Permission,
    hash_secret,
    resolve,
    split_secret,
)
from dockyard.auth.passwords import hash_password, new_secret, same
from dockyard.auth.policy import ROLES
from dockyard.db import identities as id_db
from dockyard.db.dialect import take_turns

_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_ROBOT_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
MIN_PASSWORD_LENGTH = 8
REFRESH_PREFIX = "dyf_"


class ManagementError(Exception):
    """A request that cannot be done as asked; the message says why."""

    status = 400


class NotFoundError(ManagementError):
    status = 404


class ConflictError(ManagementError):
    status = 409


def check_name(name: str, what: str) -> str:
    if not 2 <= len(name) <= 64 or not _NAME_RE.fullmatch(name):
        raise ManagementError(
            f"invalid {what} name {name[:70]!r}: 2-64 lowercase letters, digits and . _ - "
            "(not at either end); it becomes a namespace of repository names"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH or len(password) > 1024:
        raise ManagementError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _namespace_taken(conn: Connection, name: str) -> bool:
    take_turns(conn, "namespaces")  # a user and an organization of one name at once: one
    return id_db.user_by_name(conn, name) is not None or id_db.org_by_name(conn, name) is not None


def create_user(conn: Connection, name: str, password: str, is_admin: bool = False) -> int:
    check_name(name, "user")
    check_password(password)
    if _namespace_taken(conn, name):
        raise ConflictError(f"the name {name!r} is taken by a user or an organization")
    try:
        return id_db.create_user(conn, name, hash_password(password), is_admin)
    except IntegrityError:
        raise ConflictError(f"the name {name!r} is taken") from None


def require_user(conn: Connection, name: str) -> id_db.UserRow:
    user = id_db.user_by_name(conn, name)
    if user is None:
        raise NotFoundError(f"no user {name!r}")
    return user


def set_password(conn: Connection, name: str, password: str) -> None:
    """Change the password and end the user's refresh tokens (what `docker login` keeps)."""
    user = require_user(conn, name)
    id_db.update_user(conn, user.id, password_hash=hash_password(check_password(password)))
    for row in id_db.list_credentials(conn, "refresh", owner_user_id=user.id):
        id_db.revoke_credential(conn, row.id)


def update_user(
    conn: Connection, name: str, *, is_admin: bool | None = None, disabled: bool | None = None
) -> None:
    user = require_user(conn, name)
    values: dict[str, Any] = {}
    if is_admin is not None:
        values["is_admin"] = int(is_admin)
    if disabled is not None:
        values["disabled"] = int(disabled)
    if values:
        id_db.update_user(conn, user.id, **values)


def delete_user(conn: Connection, name: str) -> None:
    """Delete a user; the robots of their namespace stop working too."""
    user = require_user(conn, name)
    for row in id_db.list_credentials(conn, "robot", namespace=name):
        id_db.revoke_credential(conn, row.id)
    id_db.delete_user(conn, user.id)


def user_json(user: id_db.UserRow) -> dict[str, Any]:
    return {
        "name": user.name,
        "admin": user.is_admin,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


def create_org(conn: Connection, name: str, owner: str | None, public: bool = False) -> int:
    check_name(name, "organization")
    if _namespace_taken(conn, name):
        raise ConflictError(f"the name {name!r} is taken by a user or an organization")
    org_id = id_db.create_org(conn, name, public)
    if owner is not None:
        id_db.set_member(conn, org_id, require_user(conn, owner).id, "owner")
    return org_id


def require_org(conn: Connection, name: str) -> id_db.OrganizationRow:
    org = id_db.org_by_name(conn, name)
    if org is None:
        raise NotFoundError(f"no organization {name!r}")
    return org


def org_json(conn: Connection, org: id_db.OrganizationRow) -> dict[str, Any]:
    return {
        "name": org.name,
        "public": org.public,
        "created_at": org.created_at,
        "members": [{"user": u, "role": r} for u, r in id_db.list_members(conn, org.id)],
    }


def set_member(conn: Connection, org: str, user: str, role: str) -> None:
    if role not in ROLES:
        raise ManagementError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    id_db.set_member(conn, require_org(conn, org).id, require_user(conn, user).id, role)


def remove_member(conn: Connection, org: str, user: str) -> None:
    if not id_db.remove_member(conn, require_org(conn, org).id, require_user(conn, user).id):
        raise NotFoundError(f"{user!r} is not a member of {org!r}")


def parse_permissions(value: Any) -> list[Permission]:
    """``[{"repository": "team/*", "actions": ["pull", "push"]}]``, validated."""
    if not isinstance(value, list) or not value:
        raise ManagementError("permissions must be a non-empty list")
    permissions = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ManagementError("each permission is {repository, actions}")
        repository = entry.get("repository")
        actions = entry.get("actions")
        if not isinstance(repository, str) or not repository or len(repository) > 255:
            raise ManagementError("a permission needs a repository name or glob")
        if (
            not isinstance(actions, list)
            or not actions
            or not all(isinstance(a, str) and a in ACTIONS for a in actions)
        ):
            raise ManagementError(f"actions must be a non-empty list of {', '.join(ACTIONS)}")
        permissions.append(Permission(repository, frozenset(actions)))
    return permissions


def _expiry(expires_in_days: float | None) -> float | None:
    if expires_in_days is None:
        return None
    if not math.isfinite(expires_in_days) or not 0 < expires_in_days <= 3650:
        raise ManagementError("expiry must be between 0 and 3650 days")
    return time.time() + expires_in_days * 86400


def create_robot(
    conn: Connection,
    namespace: str,
    name: str,
    permissions: list[Permission],
    expires_in_days: float | None,
) -> tuple[id_db.CredentialRow, str]:
    """A robot acting in ``namespace``; returns it and its secret (shown once)."""
    if not _ROBOT_NAME_RE.fullmatch(name) or len(name) > 48:
        raise ManagementError("invalid robot name")
    if not _namespace_taken(conn, namespace):
        raise NotFoundError(f"no user or organization {namespace!r}")
    for permission in permissions:
        if not permission.repository.startswith(f"{namespace}/"):
            raise ManagementError(
                f"a robot of {namespace!r} can only be given repositories under {namespace}/"
            )
    full_name = f"{namespace}+{name}"
    if id_db.credential_by_name(conn, "robot", full_name) is not None:
        raise ConflictError(f"robot {ROBOT_PREFIX}{full_name} exists")
    return _new_credential(
        conn,
        ROBOT_SECRET_PREFIX,
        kind="robot",
        name=lambda _: full_name,
        owner_user_id=None,
        namespace=namespace,
        permissions=[p.to_json() for p in permissions],
        expires_at=_expiry(expires_in_days),
    )


def create_access_token(
    conn: Connection,
    user: str,
    name: str,
    permissions: list[Permission] | None,
    expires_in_days: float | None,
) -> tuple[id_db.CredentialRow, str]:
    """A personal access token: the user's rights, narrowed to ``permissions``."""
    owner = require_user(conn, user)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._@/+-]{0,39}", name):
        raise ManagementError("a token name is 1-40 letters, digits, spaces and . _ @ / + -")
    grants = permissions or [Permission("*", frozenset(ACTIONS))]
    return _new_credential(
        conn,
        TOKEN_PREFIX,
        kind="token",
        name=lambda credential_id: f"{user}:{name}:{credential_id}",
        owner_user_id=owner.id,
        namespace=None,
        permissions=[p.to_json() for p in grants],
        expires_at=_expiry(expires_in_days),
    )


def _new_credential(
    conn: Connection,
    prefix: str,
    *,
    kind: str,
    name: Callable[[str], str],
    owner_user_id: int | None,
    namespace: str | None,
    permissions: list[dict[str, Any]],
    expires_at: float | None,
) -> tuple[id_db.CredentialRow, str]:
    """Store a credential with a fresh id and secret (``<prefix><id>_<random>``, kept only
    as a hash); return it and the secret, to be shown once."""
    credential_id = secrets.token_hex(8)
    secret = f"{prefix}{credential_id}_{new_secret()}"
    row = id_db.CredentialRow(
        id=credential_id,
        kind=kind,
        name=name(credential_id),
        owner_user_id=owner_user_id,
        namespace=namespace,
        permissions=permissions,
        secret_hash=hash_secret(secret),
        created_at=time.time(),
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )
    id_db.create_credential(conn, row)
    return row, secret


def credential_json(row: id_db.CredentialRow) -> dict[str, Any]:
    name = f"{ROBOT_PREFIX}{row.name}" if row.kind == "robot" else row.name.split(":")[1]
    return {
        "id": row.id,
        "kind": row.kind,
        "name": name,
        "namespace": row.namespace,
        "permissions": row.permissions,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked": row.revoked_at is not None,
    }


def create_refresh_token(conn: Connection, identity: Identity, expires_at: float) -> str:
    _, secret = _new_credential(
        conn,
        REFRESH_PREFIX,
        kind="refresh",
        name=lambda credential_id: f"{identity.subject}:{credential_id}",
        owner_user_id=identity.user_id,
        namespace=identity.subject,
        permissions=[identity.claim()],
        expires_at=expires_at,
    )
    return secret


def identity_of_refresh_token(conn: Connection, token: str) -> Identity | None:
    parts = split_secret(token, REFRESH_PREFIX)
    if parts is None:
        raise LoginFailed
    row = id_db.credential(conn, parts[0])
    if (
        row is None
        or row.kind != "refresh"
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at < time.time())
        or not same(row.secret_hash, hash_secret(token))
    ):
        raise LoginFailed
    return resolve(conn, row.namespace or "", row.permissions[0] if row.permissions else None)


def ensure_first_admin(conn: Connection) -> str | None:
    """On a registry without users, create ``admin`` with a random password and return it
    (to be shown once); otherwise None."""
    take_turns(conn, "first administrator")  # nodes starting together: one creates it
    if id_db.count_users(conn):
        return None
    password = new_secret(18)
    id_db.create_user(conn, "admin", hash_password(password), True)
    return password
