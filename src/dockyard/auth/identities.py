"""Who is calling: users (passwords), robot accounts and personal access tokens (random
secrets), or nobody (anonymous)."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection

from dockyard.auth.passwords import same, verify_password
from dockyard.db import identities as id_db

Kind = Literal["anonymous", "user", "robot", "token"]
ACTIONS = ("pull", "push", "delete")
ROBOT_PREFIX = "robot$"
TOKEN_PREFIX = "dyt_"
ROBOT_SECRET_PREFIX = "dyr_"


@dataclass(frozen=True, slots=True)
class Permission:
    """Actions on the repositories whose full name matches a glob (``team/*``)."""

    repository: str
    actions: frozenset[str]

    def covers(self, repository: str) -> bool:
        return fnmatch.fnmatchcase(repository, self.repository)

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "actions": sorted(self.actions)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Permission:
        return cls(str(value["repository"]), frozenset(value["actions"]))


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Kind
    name: str  # user name, robot login name, or (for a token) its owner's name
    user_id: int | None = None
    is_admin: bool = False
    namespace: str | None = None  # a robot's namespace
    permissions: tuple[Permission, ...] | None = None  # limits of a robot or a token
    credential_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    @property
    def subject(self) -> str:
        return "" if self.anonymous else self.name

    def claim(self) -> dict[str, Any]:
        """What a token remembers of its subject, to resolve it again on a denial."""
        return {"kind": self.kind, "credential": self.credential_id}


ANONYMOUS = Identity("anonymous", "")


class LoginFailed(Exception):
    """Wrong, unknown, disabled, expired or revoked credentials (never says which)."""


def hash_secret(secret: str) -> str:
    """Robot and token secrets are long and random: SHA-256 is the right hash for them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_secret(secret: str, prefix: str) -> tuple[str, str] | None:
    """``dyt_<id>_<random>`` -> (id, whole secret)."""
    if not secret.startswith(prefix):
        return None
    credential_id, sep, rest = secret[len(prefix) :].partition("_")
    if not sep or not credential_id or not rest or len(credential_id) > 32:
        return None
    return credential_id, secret


def _active(row: id_db.CredentialRow | None) -> bool:
    return (
        row is not None
        and row.revoked_at is None
        and (row.expires_at is None or row.expires_at >= time.time())
    )


def _usable(row: id_db.CredentialRow | None, secret: str) -> id_db.CredentialRow:
    if row is None or not same(row.secret_hash, hash_secret(secret)) or not _active(row):
        raise LoginFailed
    return row


def _robot(login_name: str, row: id_db.CredentialRow) -> Identity:
    return Identity(
        "robot",
        login_name,
        namespace=row.namespace,
        permissions=tuple(Permission.from_json(p) for p in row.permissions),
        credential_id=row.id,
    )


def _token(user: id_db.UserRow, row: id_db.CredentialRow) -> Identity:
    return Identity(
        "token",
        user.name,
        user_id=user.id,
        is_admin=user.is_admin,
        permissions=tuple(Permission.from_json(p) for p in row.permissions),
        credential_id=row.id,
    )


def authenticate(conn: Connection, username: str, secret: str) -> Identity:
    """Check a user name and password, robot secret or personal access token."""
    if not username or not secret or len(username) > 256 or len(secret) > 1024:
        raise LoginFailed
    if username.startswith(ROBOT_PREFIX):
        robot = id_db.credential_by_name(conn, "robot", username[len(ROBOT_PREFIX) :])
        return _robot(username, _usable(robot, secret))
    user = id_db.user_by_name(conn, username)
    token = split_secret(secret, TOKEN_PREFIX)
    if token is not None:
        row = _usable(id_db.credential(conn, token[0]), secret)
        if row.kind != "token" or user is None or row.owner_user_id != user.id or user.disabled:
            raise LoginFailed
        return _token(user, row)
    if not verify_password(user.password_hash if user else None, secret):
        raise LoginFailed
    assert user is not None
    if user.disabled:
        raise LoginFailed
    return Identity("user", user.name, user_id=user.id, is_admin=user.is_admin)


def resolve(conn: Connection, subject: str, claim: dict[str, Any] | None) -> Identity | None:
    """The identity a token was issued to, as it stands now (None when gone, disabled,
    revoked or expired)."""
    if not subject:
        return ANONYMOUS
    kind = (claim or {}).get("kind", "user")
    credential_id = (claim or {}).get("credential")
    if kind == "robot" or subject.startswith(ROBOT_PREFIX):
        row = id_db.credential_by_name(conn, "robot", subject[len(ROBOT_PREFIX) :])
        return _robot(subject, row) if row is not None and _active(row) else None
    user = id_db.user_by_name(conn, subject)
    if user is None or user.disabled:
        return None
    if kind == "token" and isinstance(credential_id, str):
        cred = id_db.credential(conn, credential_id)
        return _token(user, cred) if cred is not None and _active(cred) else None
    return Identity("user", user.name, user_id=user.id, is_admin=user.is_admin)
