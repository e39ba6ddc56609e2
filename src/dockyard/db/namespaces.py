"""Queries across a namespace (a user's or an organization's): the organizations a user
belongs to, owners and site admins counted, the repositories under a namespace, and audit
entries whose resource lies in given namespaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, exists, func, or_, select

from dockyard.db.identities import OrganizationRow, audit_entries
from dockyard.db.schema import (
    audit_log,
    credentials,
    manifests,
    members,
    organizations,
    repositories,
    users,
)


def memberships(conn: Connection, user_id: int) -> list[tuple[OrganizationRow, str]]:
    """The organizations a user is a member of, with the user's role, by name."""
    rows = conn.execute(
        select(
            organizations.c.id,
            organizations.c.name,
            organizations.c.public,
            organizations.c.created_at,
            members.c.role,
        )
        .join(members, members.c.organization_id == organizations.c.id)
        .where(members.c.user_id == user_id)
        .order_by(organizations.c.name)
    )
    return [(OrganizationRow(r[0], r[1], bool(r[2]), r[3]), r[4]) for r in rows]


def count_role(conn: Connection, org_id: int, role: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(members)
            .where(members.c.organization_id == org_id, members.c.role == role)
        ).scalar()
        or 0
    )


def count_active_admins(conn: Connection) -> int:
    """Site administrators who are not disabled."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(users)
            .where(users.c.is_admin != 0, users.c.disabled == 0)
        ).scalar()
        or 0
    )


def repository_names(conn: Connection, namespace: str, limit: int) -> list[str]:
    """Repositories named ``<namespace>/...`` that hold at least one manifest."""
    return list(
        conn.execute(
            select(repositories.c.name)
            .where(
                repositories.c.name.startswith(f"{namespace}/", autoescape=True),
                exists().where(manifests.c.repository_id == repositories.c.id),
            )
            .order_by(repositories.c.name)
            .limit(limit)
        ).scalars()
    )


def active_robot_ids(conn: Connection, namespace: str) -> list[str]:
    return list(
        conn.execute(
            select(credentials.c.id).where(
                credentials.c.kind == "robot",
                credentials.c.namespace == namespace,
                credentials.c.revoked_at.is_(None),
            )
        ).scalars()
    )


def audit_entries_within(
    conn: Connection,
    *,
    prefixes: Sequence[str],
    names: Sequence[str],
    actor: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    since: float | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Audit entries (newest first) whose resource starts with one of ``prefixes`` or is
    one of ``names``; the other filters as in ``identities.audit_entries``."""
    within = [audit_log.c.resource.startswith(p, autoescape=True) for p in prefixes]
    if names:
        within.append(audit_log.c.resource.in_(list(names)))
    if not within:
        return []
    return audit_entries(
        conn,
        actor=actor,
        action=action,
        resource=resource,
        since=since,
        limit=limit,
        before_id=before_id,
        within=or_(*within),
    )
