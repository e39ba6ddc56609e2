"""Access decisions: which actions an identity may take on a repository.

Namespaces: ``<user>/...`` belongs to that user; ``<org>/...`` to an organization whose
members hold roles. A name without a slash belongs to the site admins. Repositories are
public or private (a repository's own setting, else its organization's, else private).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from dockyard.auth.identities import ACTIONS, Identity
from dockyard.db import identities as id_db

ALL = frozenset(ACTIONS)
ROLES: dict[str, frozenset[str]] = {
    "owner": ALL,
    "admin": ALL,
    "maintainer": ALL,
    "developer": frozenset({"pull", "push"}),
    "reader": frozenset({"pull"}),
}
MANAGING_ROLES = frozenset({"owner", "admin"})


# The registry mirror's view of a name (dockyard.mirror.service.ProxyService.access_alias):
# the proxied repository it stands for and whether its upstream is public, or None.
ProxyAlias = Callable[[Connection, str], "tuple[str, bool] | None"]


@dataclass(frozen=True, slots=True)
class Rules:
    anonymous_pull: bool = True  # anonymous users may pull public repositories
    anonymous_push: bool = False  # anyone may push anywhere: only for closed networks
    proxy_alias: ProxyAlias | None = None  # access to proxied repositories (the mirror)


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0] if "/" in repository else ""


def is_public(conn: Connection, repository: str) -> bool:
    own = id_db.repository_public(conn, repository)
    if own is not None:
        return own
    org = id_db.org_by_name(conn, namespace_of(repository))
    return bool(org and org.public)


def namespace_actions(conn: Connection, identity: Identity, namespace: str) -> frozenset[str]:
    """What an identity may do in a whole namespace, before repository visibility."""
    if identity.is_admin:
        return ALL
    if identity.kind == "robot":
        return ALL if identity.namespace == namespace and namespace else frozenset()
    if identity.user_id is None or not namespace:
        return frozenset()
    if namespace == identity.name:
        return ALL
    org = id_db.org_by_name(conn, namespace)
    if org is None:
        return frozenset()
    role = id_db.role_of(conn, org.id, identity.user_id)
    return ROLES.get(role or "", frozenset())


def can_manage(conn: Connection, identity: Identity, namespace: str) -> bool:
    """May change members, robots and settings of the namespace."""
    if identity.kind != "user" or identity.user_id is None:
        return False  # robots and (even an admin's) access tokens manage nothing
    if identity.is_admin:
        return True
    if namespace == identity.name:
        return True
    org = id_db.org_by_name(conn, namespace)
    if org is None:
        return False
    return id_db.role_of(conn, org.id, identity.user_id) in MANAGING_ROLES


def repository_actions(
    conn: Connection, identity: Identity, repository: str, rules: Rules
) -> frozenset[str]:
    proxy_public = False
    if rules.proxy_alias is not None:
        alias = rules.proxy_alias(conn, repository)
        if alias is not None:  # decided as for the proxied repository, public if upstream is
            repository, proxy_public = alias
    actions = set(namespace_actions(conn, identity, namespace_of(repository)))
    if rules.anonymous_push:
        actions |= {"pull", "push"}
    public = proxy_public or is_public(conn, repository)
    if public and (not identity.anonymous or rules.anonymous_pull):
        actions.add("pull")
    if identity.permissions is not None:
        # robots and tokens act only within their grant (public content stays pullable)
        granted: set[str] = set()
        for permission in identity.permissions:
            if permission.covers(repository):
                granted |= permission.actions
        actions = (actions & granted) | ({"pull"} if public else set())
    return frozenset(actions)
