"""Queries on users, organizations, members, credentials, repository visibility and the
audit log."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from dockyard.db.dialect import upsert
from dockyard.db.schema import (
    audit_log,
    credentials,
    login_failures,
    members,
    organizations,
    repository_settings,
    users,
)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    name: str
    password_hash: str
    is_admin: bool
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class CredentialRow:
    id: str
    kind: str
    name: str
    owner_user_id: int | None
    namespace: str | None
    permissions: list[dict[str, Any]]
    secret_hash: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


_USER_COLUMNS = (
    users.c.id,
    users.c.name,
    users.c.password_hash,
    users.c.is_admin,
    users.c.disabled,
    users.c.created_at,
)


def _user(row: Any) -> UserRow:
    return UserRow(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5])


def user_by_name(conn: Connection, name: str) -> UserRow | None:
    row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
    return _user(row) if row else None


def user_by_id(conn: Connection, user_id: int) -> UserRow | None:
    row = conn.execute(select(*_USER_COLUMNS).where(users.c.id == user_id)).first()
    return _user(row) if row else None


def list_users(conn: Connection) -> list[UserRow]:
    return [_user(r) for r in conn.execute(select(*_USER_COLUMNS).order_by(users.c.name))]


def count_users(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(users)).scalar() or 0)


def create_user(conn: Connection, name: str, password_hash: str, is_admin: bool) -> int:
    result = conn.execute(
        insert(users).values(
            name=name,
            password_hash=password_hash,
            is_admin=int(is_admin),
            disabled=0,
            created_at=time.time(),
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def update_user(conn: Connection, user_id: int, **values: Any) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(**values))


def delete_user(conn: Connection, user_id: int) -> None:
    conn.execute(delete(credentials).where(credentials.c.owner_user_id == user_id))
    conn.execute(delete(members).where(members.c.user_id == user_id))
    conn.execute(delete(users).where(users.c.id == user_id))


@dataclass(frozen=True, slots=True)
class OrganizationRow:
    id: int
    name: str
    public: bool
    created_at: float


def org_by_name(conn: Connection, name: str) -> OrganizationRow | None:
    row = conn.execute(
        select(
            organizations.c.id,
            organizations.c.name,
            organizations.c.public,
            organizations.c.created_at,
        ).where(organizations.c.name == name)
    ).first()
    return OrganizationRow(row[0], row[1], bool(row[2]), row[3]) if row else None


def list_orgs(conn: Connection) -> list[OrganizationRow]:
    rows = conn.execute(
        select(
            organizations.c.id,
            organizations.c.name,
            organizations.c.public,
            organizations.c.created_at,
        ).order_by(organizations.c.name)
    )
    return [OrganizationRow(r[0], r[1], bool(r[2]), r[3]) for r in rows]


def create_org(conn: Connection, name: str, public: bool) -> int:
    result = conn.execute(
        insert(organizations).values(name=name, public=int(public), created_at=time.time())
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def update_org(conn: Connection, org_id: int, **values: Any) -> None:
    conn.execute(update(organizations).where(organizations.c.id == org_id).values(**values))


def delete_org(conn: Connection, org_id: int) -> None:
    conn.execute(delete(members).where(members.c.organization_id == org_id))
    conn.execute(delete(organizations).where(organizations.c.id == org_id))


def role_of(conn: Connection, org_id: int, user_id: int) -> str | None:
    return conn.execute(
        select(members.c.role).where(
            members.c.organization_id == org_id, members.c.user_id == user_id
        )
    ).scalar()


def set_member(conn: Connection, org_id: int, user_id: int, role: str) -> None:
    upsert(
        conn,
        members,
        {"organization_id": org_id, "user_id": user_id, "role": role},
        ["organization_id", "user_id"],
        ["role"],
    )


def remove_member(conn: Connection, org_id: int, user_id: int) -> bool:
    result = conn.execute(
        delete(members).where(members.c.organization_id == org_id, members.c.user_id == user_id)
    )
    return result.rowcount > 0


def list_members(conn: Connection, org_id: int) -> list[tuple[str, str]]:
    rows = conn.execute(
        select(users.c.name, members.c.role)
        .join(users, users.c.id == members.c.user_id)
        .where(members.c.organization_id == org_id)
        .order_by(users.c.name)
    )
    return [(r[0], r[1]) for r in rows]


_CREDENTIAL_COLUMNS = (
    credentials.c.id,
    credentials.c.kind,
    credentials.c.name,
    credentials.c.owner_user_id,
    credentials.c.namespace,
    credentials.c.permissions,
    credentials.c.secret_hash,
    credentials.c.created_at,
    credentials.c.expires_at,
    credentials.c.revoked_at,
    credentials.c.last_used_at,
)


def _credential(row: Any) -> CredentialRow:
    values = list(row)
    values[5] = json.loads(values[5])
    return CredentialRow(*values)


def credential(conn: Connection, credential_id: str) -> CredentialRow | None:
    row = conn.execute(
        select(*_CREDENTIAL_COLUMNS).where(credentials.c.id == credential_id)
    ).first()
    return _credential(row) if row else None


def credential_by_name(conn: Connection, kind: str, name: str) -> CredentialRow | None:
    row = conn.execute(
        select(*_CREDENTIAL_COLUMNS).where(credentials.c.kind == kind, credentials.c.name == name)
    ).first()
    return _credential(row) if row else None


def list_credentials(
    conn: Connection, kind: str, owner_user_id: int | None = None, namespace: str | None = None
) -> list[CredentialRow]:
    query = select(*_CREDENTIAL_COLUMNS).where(credentials.c.kind == kind)
    if owner_user_id is not None:
        query = query.where(credentials.c.owner_user_id == owner_user_id)
    if namespace is not None:
        query = query.where(credentials.c.namespace == namespace)
    return [_credential(r) for r in conn.execute(query.order_by(credentials.c.name))]


def create_credential(conn: Connection, row: CredentialRow) -> None:
    conn.execute(
        insert(credentials).values(
            id=row.id,
            kind=row.kind,
            name=row.name,
            owner_user_id=row.owner_user_id,
            namespace=row.namespace,
            permissions=json.dumps(row.permissions),
            secret_hash=row.secret_hash,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=None,
            last_used_at=None,
        )
    )


def revoke_credential(conn: Connection, credential_id: str) -> bool:
    result = conn.execute(
        update(credentials)
        .where(credentials.c.id == credential_id, credentials.c.revoked_at.is_(None))
        .values(revoked_at=time.time())
    )
    return result.rowcount > 0


def repository_public(conn: Connection, name: str) -> bool | None:
    value = conn.execute(
        select(repository_settings.c.public).where(repository_settings.c.name == name)
    ).scalar()
    return None if value is None else bool(value)


def set_repository_public(conn: Connection, name: str, public: bool) -> None:
    upsert(conn, repository_settings, {"name": name, "public": int(public)}, ["name"], ["public"])


def record_audit(
    conn: Connection,
    actor: str,
    action: str,
    resource: str | None,
    client: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(audit_log).values(
            ts=time.time(),
            actor=actor,
            action=action,
            resource=resource,
            client=client,
            detail=json.dumps(detail) if detail else None,
        )
    )


def audit_entries(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    since: float | None = None,
    limit: int = 100,
    before_id: int | None = None,
    within: Any = None,
) -> list[dict[str, Any]]:
    """Audit entries, newest first, filtered; ``within`` is an extra SQL condition."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if within is not None:
        query = query.where(within)
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if action:
        query = query.where(audit_log.c.action == action)
    if resource:
        query = query.where(audit_log.c.resource == resource)
    if since is not None:
        query = query.where(audit_log.c.ts >= since)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    return [
        {
            "id": r.id,
            "ts": r.ts,
            "actor": r.actor,
            "action": r.action,
            "resource": r.resource,
            "client": r.client,
            "detail": json.loads(r.detail) if r.detail else None,
        }
        for r in conn.execute(query)
    ]


def recent_failures(conn: Connection, key: str, since: float) -> list[float]:
    rows = conn.execute(
        select(login_failures.c.ts)
        .where(login_failures.c.key == key, login_failures.c.ts >= since)
        .order_by(login_failures.c.ts)
    )
    return [float(r[0]) for r in rows]


def add_failure(conn: Connection, key: str, ts: float, forget_before: float) -> None:
    conn.execute(
        delete(login_failures).where(
            login_failures.c.key == key, login_failures.c.ts < forget_before
        )
    )
    conn.execute(insert(login_failures).values(key=key, ts=ts))


def clear_failures(conn: Connection, key: str) -> None:
    conn.execute(delete(login_failures).where(login_failures.c.key == key))
