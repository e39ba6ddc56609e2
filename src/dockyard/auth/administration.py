"""Managing identities on someone's behalf: who may see and change which users,
organizations, members, robot accounts, access tokens, repository settings and audit
entries, and the guards that keep a registry manageable (its last site administrator, an
organization's last owner, a namespace that still holds repositories).

Each operation takes the acting identity first and runs inside one transaction: the
permission check and the change see the same data. The operations themselves are those of
``management``; the management API calls these, the command line (run by the operator on
the database itself) calls ``management`` directly.

Only a user signed in with a password (Basic, or a Bearer token obtained with one) may
change anything. Personal access tokens and robots may read what concerns them: who they
are, the repositories they may pull, the organizations they may see.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dockyard.auth import management as mgmt
from dockyard.auth.identities import ROBOT_PREFIX, Identity, Permission
from dockyard.auth.management import ConflictError, ManagementError, NotFoundError
from dockyard.auth.policy import (
    MANAGING_ROLES,
    Rules,
    can_manage,
    namespace_of,
    repository_actions,
)
from dockyard.db import identities as id_db
from dockyard.db import namespaces as ns_db
from dockyard.db import repositories as repo_db
from dockyard.db.dialect import take_turns
from dockyard.oci.errors import NameInvalid
from dockyard.oci.names import validate_name


class ForbiddenError(ManagementError):
    """The caller is known but may not do this."""

    status = 403


_KIND_WORDS = {
    "token": "a personal access token",
    "robot": "a robot account",
    "anonymous": "an anonymous caller",
}
# The patterns the API documents (NAME_PATTERN is ``management.check_name``'s).
NAME_PATTERN = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"
ROBOT_NAME_PATTERN = NAME_PATTERN
MAX_ROBOT_NAME = 48
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@/+-]{0,39}$"
GLOB_PATTERN = r"^[a-z0-9._/*?-]+$"
# (matched with fullmatch: "$" also matches before a trailing newline)
_NAME_RE = re.compile(NAME_PATTERN)
_TOKEN_NAME_RE = re.compile(TOKEN_NAME_PATTERN)
_GLOB_RE = re.compile(GLOB_PATTERN)
_ROBOT_NAME_RE = re.compile(ROBOT_NAME_PATTERN)

# What an audit entry names as its resource: repositories by their name, the rest by kind.


def user_resource(name: str) -> str:
    return f"user:{name}"


def org_resource(name: str) -> str:
    return f"org:{name}"


def robot_resource(namespace: str, name: str) -> str:
    return f"{ROBOT_PREFIX}{namespace}+{name}"


def token_resource(credential_id: str) -> str:
    return f"token:{credential_id}"


# -- who may ------------------------------------------------------------------------------


def is_site_admin(identity: Identity) -> bool:
    return identity.kind == "user" and identity.is_admin


def require_password_user(identity: Identity, doing: str) -> None:
    if identity.kind != "user" or identity.user_id is None:
        what = _KIND_WORDS.get(identity.kind, "this kind of credential")
        raise ForbiddenError(
            f"{doing} needs a user signed in with a password, not {what}"
            + (" (a token cannot create tokens)" if identity.kind == "token" else "")
        )


def require_site_admin(identity: Identity, doing: str) -> None:
    require_password_user(identity, doing)
    if not identity.is_admin:
        raise ForbiddenError(f"only site administrators may {doing}")


def require_manager(conn: Connection, identity: Identity, namespace: str, doing: str) -> None:
    """The caller manages ``namespace`` (its own, an organization it owns or administers,
    or any as a site administrator)."""
    require_password_user(identity, doing)
    if not can_manage(conn, identity, namespace):
        where = f"of {namespace!r}" if namespace else "of repositories without a namespace"
        raise ForbiddenError(
            f"{doing} needs the owner or admin role {where} (or a site administrator)"
        )


def require_namespace(conn: Connection, namespace: str) -> None:
    if id_db.user_by_name(conn, namespace) is None and id_db.org_by_name(conn, namespace) is None:
        raise NotFoundError(f"no user or organization {namespace[:70]!r}")


def managed_namespaces(conn: Connection, identity: Identity) -> list[str]:
    """The namespaces a (non-admin) user manages: their own and the organizations in which
    they are owner or admin."""
    if identity.kind != "user" or identity.user_id is None:
        return []
    names = [identity.name]
    for org, role in ns_db.memberships(conn, identity.user_id):
        if role in MANAGING_ROLES:
            names.append(org.name)
    return names


# -- checks on input ----------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """``management.check_name``, without its hole: its ``re.match`` with ``$`` takes
    ``"alice\n"`` for a valid name."""
    mgmt.check_name(name, what)
    if not _NAME_RE.fullmatch(name):
        raise ManagementError(
            f"invalid {what} name {name[:70]!r}: 2-64 lowercase letters, digits and . _ - "
            "(not at either end); it becomes a namespace of repository names"
        )
    return name


def check_token_name(name: str) -> str:
    if not _TOKEN_NAME_RE.fullmatch(name):
        raise ManagementError(
            f"invalid token name {name[:50]!r}: 1-40 letters, digits, spaces and . _ @ / + -, "
            "starting with a letter or digit"
        )
    return name


def check_robot_name(name: str) -> str:
    if len(name) > MAX_ROBOT_NAME or not _ROBOT_NAME_RE.fullmatch(name):
        raise ManagementError(
            f"invalid robot name {name[:60]!r}: 1-{MAX_ROBOT_NAME} lowercase letters, digits "
            "and . _ - (not at either end)"
        )
    return name


def check_globs(permissions: list[Permission], namespace: str | None = None) -> None:
    """Repository globs use the characters of repository names and ``*`` / ``?``; a robot's
    stay inside its namespace."""
    for permission in permissions:
        glob = permission.repository
        if not _GLOB_RE.fullmatch(glob):
            raise ManagementError(
                f"invalid repository glob {glob[:80]!r}: use lowercase letters, digits, "
                ". _ - / and the wildcards * and ?"
            )
        if namespace is not None and not glob.startswith(f"{namespace}/"):
            raise ManagementError(
                f"a robot of {namespace!r} can only be given repositories under {namespace}/ "
                f"(got {glob[:80]!r})"
            )


def check_expiry(days: float | None) -> float | None:
    if days is not None and (not math.isfinite(days) or not 0 < days <= 3650):
        raise ManagementError("expires_in_days must be more than 0 and at most 3650")
    return days


def check_repository_name(name: str) -> str:
    try:
        return validate_name(name)
    except NameInvalid as exc:
        raise ManagementError(exc.message) from None


# -- users --------------------------------------------------------------------------------


def list_users(conn: Connection, actor: Identity) -> list[dict[str, Any]]:
    require_site_admin(actor, "list users")
    return [mgmt.user_json(u) for u in id_db.list_users(conn)]


def create_user(
    conn: Connection, actor: Identity, name: str, password: str, admin: bool
) -> dict[str, Any]:
    require_site_admin(actor, "create users")
    check_name(name, "user")
    try:
        mgmt.create_user(conn, name, password, admin)
    except IntegrityError:
        raise ConflictError(f"the name {name!r} is taken") from None
    return user_view(conn, mgmt.require_user(conn, name))


def user_view(conn: Connection, user: id_db.UserRow) -> dict[str, Any]:
    return {
        **mgmt.user_json(user),
        "organizations": [
            {"name": org.name, "role": role} for org, role in ns_db.memberships(conn, user.id)
        ],
    }


def get_user(conn: Connection, actor: Identity, name: str) -> dict[str, Any]:
    own = actor.kind in ("user", "token") and actor.name == name
    if not own:
        require_site_admin(actor, "read other users")
    return user_view(conn, mgmt.require_user(conn, name))


def whoami(conn: Connection, actor: Identity) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if actor.user_id is not None:
        user = id_db.user_by_id(conn, actor.user_id)
        if user is not None:
            view.update(user_view(conn, user))
    view.update(name=actor.name, kind=actor.kind, admin=actor.is_admin)
    if actor.namespace is not None:
        view["namespace"] = actor.namespace
    if actor.permissions is not None:
        view["permissions"] = [p.to_json() for p in actor.permissions]
    if actor.credential_id is not None:
        view["credential_id"] = actor.credential_id
    return view


def _keeps_an_admin(conn: Connection, user: id_db.UserRow, doing: str) -> None:
    take_turns(conn, "administrators")  # two admins demoting each other at once: one stays
    if user.is_admin and not user.disabled and ns_db.count_active_admins(conn) <= 1:
        raise ConflictError(
            f"{user.name!r} is the last active site administrator; make another user an "
            f"administrator before you {doing}"
        )


def update_user(
    conn: Connection,
    actor: Identity,
    name: str,
    *,
    password: str | None = None,
    admin: bool | None = None,
    disabled: bool | None = None,
) -> dict[str, Any]:
    """A user may change their own password; site administrators may change anything."""
    require_password_user(actor, "changing a user")
    if not actor.is_admin:
        if actor.name != name:
            raise ForbiddenError("only site administrators may change other users")
        if admin is not None or disabled is not None:
            raise ForbiddenError("only site administrators may change 'admin' or 'disabled'")
    user = mgmt.require_user(conn, name)
    if admin is False or disabled is True:
        _keeps_an_admin(conn, user, "take their rights away")
    if password is not None:
        mgmt.set_password(conn, name, password)
    mgmt.update_user(conn, name, is_admin=admin, disabled=disabled)
    return user_view(conn, mgmt.require_user(conn, name))


def _last_owner_of(conn: Connection, user: id_db.UserRow) -> list[str]:
    take_turns(conn, "owners")
    return [
        org.name
        for org, role in ns_db.memberships(conn, user.id)
        if role == "owner" and ns_db.count_role(conn, org.id, "owner") <= 1
    ]


def _refuse_if_holding_repositories(conn: Connection, namespace: str, what: str) -> None:
    held = ns_db.repository_names(conn, namespace, 3)
    if held:
        raise ConflictError(
            f"{what} still holds repositories ({', '.join(held)}"
            f"{' ...' if len(held) == 3 else ''}); delete them first"
            + (", or disable the user instead" if what.startswith("user") else "")
            + ": whoever takes the name next would own them"
        )


def _revoke_robots(conn: Connection, namespace: str) -> int:
    ids = ns_db.active_robot_ids(conn, namespace)
    for credential_id in ids:
        id_db.revoke_credential(conn, credential_id)
    return len(ids)


def delete_user(conn: Connection, actor: Identity, name: str) -> dict[str, Any]:
    """Delete a user with their tokens and memberships, and revoke the robots of their
    namespace. Refused for the last administrator, an organization's last owner, and a
    user whose namespace still holds repositories."""
    require_site_admin(actor, "delete users")
    user = mgmt.require_user(conn, name)
    _keeps_an_admin(conn, user, "delete them")
    orphaned = _last_owner_of(conn, user)
    if orphaned:
        raise ConflictError(
            f"{name!r} is the last owner of {', '.join(orphaned)}; give "
            f"{'it' if len(orphaned) == 1 else 'them'} another owner first"
        )
    _refuse_if_holding_repositories(conn, name, f"user {name!r}")
    revoked = _revoke_robots(conn, name)
    mgmt.delete_user(conn, name)
    return {"robots_revoked": revoked}


# -- organizations ------------------------------------------------------------------------


def _role(conn: Connection, actor: Identity, org: id_db.OrganizationRow) -> str | None:
    if actor.user_id is None:
        return None
    return id_db.role_of(conn, org.id, actor.user_id)


def _org_view(
    conn: Connection, org: id_db.OrganizationRow, role: str | None, members: bool
) -> dict[str, Any]:
    view = (
        mgmt.org_json(conn, org)
        if members
        else {
            "name": org.name,
            "public": org.public,
            "created_at": org.created_at,
        }
    )
    view["role"] = role
    return view


def create_org(conn: Connection, actor: Identity, name: str, public: bool) -> dict[str, Any]:
    """Any user may create an organization; they become its owner."""
    require_password_user(actor, "creating an organization")
    check_name(name, "organization")
    try:
        mgmt.create_org(conn, name, actor.name, public)
    except IntegrityError:
        raise ConflictError(f"the name {name!r} is taken") from None
    return _org_view(conn, mgmt.require_org(conn, name), "owner", True)


def list_orgs(conn: Connection, actor: Identity) -> list[dict[str, Any]]:
    """Site administrators: all. Others: those they belong to, and the public ones."""
    roles = (
        {org.name: role for org, role in ns_db.memberships(conn, actor.user_id)}
        if actor.user_id is not None
        else {}
    )
    admin = is_site_admin(actor)
    return [
        _org_view(conn, org, roles.get(org.name), False)
        for org in id_db.list_orgs(conn)
        if admin or org.public or org.name in roles
    ]


def get_org(conn: Connection, actor: Identity, name: str) -> dict[str, Any]:
    """Members and site administrators see the members; anyone sees a public one."""
    org = mgmt.require_org(conn, name)
    role = _role(conn, actor, org)
    insider = role is not None or is_site_admin(actor)
    if not insider and not org.public:
        raise ForbiddenError(f"organization {name!r} is private to its members")
    return _org_view(conn, org, role, insider)


def set_org_public(conn: Connection, actor: Identity, name: str, public: bool) -> dict[str, Any]:
    org = mgmt.require_org(conn, name)
    require_manager(conn, actor, name, "changing an organization")
    id_db.update_org(conn, org.id, public=int(public))
    return _org_view(conn, mgmt.require_org(conn, name), _role(conn, actor, org), True)


def delete_org(conn: Connection, actor: Identity, name: str) -> dict[str, Any]:
    """Delete an organization and its memberships, revoking its robots; refused while it
    holds repositories."""
    org = mgmt.require_org(conn, name)
    require_manager(conn, actor, name, "deleting an organization")
    _refuse_if_holding_repositories(conn, name, f"organization {name!r}")
    revoked = _revoke_robots(conn, name)
    id_db.delete_org(conn, org.id)
    return {"robots_revoked": revoked}


def list_members(conn: Connection, actor: Identity, org_name: str) -> list[dict[str, str]]:
    org = mgmt.require_org(conn, org_name)
    if _role(conn, actor, org) is None and not is_site_admin(actor):
        raise ForbiddenError(f"only members of {org_name!r} see its members")
    return [{"user": u, "role": r} for u, r in id_db.list_members(conn, org.id)]


def _keeps_an_owner(conn: Connection, org: id_db.OrganizationRow, user: id_db.UserRow) -> None:
    take_turns(conn, "owners")  # two owners removed at once: one stays
    if (
        id_db.role_of(conn, org.id, user.id) == "owner"
        and ns_db.count_role(conn, org.id, "owner") <= 1
    ):
        raise ConflictError(
            f"{user.name!r} is the last owner of {org.name!r}; make someone else owner first"
        )


def set_member(
    conn: Connection, actor: Identity, org_name: str, user_name: str, role: str
) -> dict[str, str]:
    org = mgmt.require_org(conn, org_name)
    require_manager(conn, actor, org_name, "changing members")
    user = mgmt.require_user(conn, user_name)
    if role != "owner":
        _keeps_an_owner(conn, org, user)
    mgmt.set_member(conn, org_name, user_name, role)
    return {"user": user_name, "role": role}


def remove_member(conn: Connection, actor: Identity, org_name: str, user_name: str) -> None:
    """Managers remove anyone; a member may leave."""
    org = mgmt.require_org(conn, org_name)
    leaving = actor.kind == "user" and actor.name == user_name
    if not leaving:
        require_manager(conn, actor, org_name, "removing members")
    user = mgmt.require_user(conn, user_name)
    _keeps_an_owner(conn, org, user)
    mgmt.remove_member(conn, org_name, user_name)


# -- robots -------------------------------------------------------------------------------


def list_robots(conn: Connection, actor: Identity, namespace: str) -> list[dict[str, Any]]:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "listing robots")
    return [mgmt.credential_json(r) for r in id_db.list_credentials(conn, "robot", None, namespace)]


@dataclass(frozen=True, slots=True)
class NewCredential:
    view: dict[str, Any]
    secret: str


def create_robot(
    conn: Connection,
    actor: Identity,
    namespace: str,
    name: str,
    permissions: list[Permission],
    expires_in_days: float | None,
) -> NewCredential:
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "creating robots")
    check_robot_name(name)
    check_globs(permissions, namespace)
    check_expiry(expires_in_days)
    try:
        row, secret = mgmt.create_robot(conn, namespace, name, permissions, expires_in_days)
    except IntegrityError:
        raise ConflictError(f"robot {robot_resource(namespace, name)} exists") from None
    return NewCredential(mgmt.credential_json(row), secret)


def revoke_robot(conn: Connection, actor: Identity, namespace: str, name: str) -> dict[str, Any]:
    """``name`` is the robot's own name (``ci``) or its login name (``robot$team+ci``)."""
    require_namespace(conn, namespace)
    require_manager(conn, actor, namespace, "revoking robots")
    short = name.removeprefix(f"{ROBOT_PREFIX}{namespace}+")
    row = id_db.credential_by_name(conn, "robot", f"{namespace}+{short}")
    if row is None or not id_db.revoke_credential(conn, row.id):
        raise NotFoundError(f"no active robot {robot_resource(namespace, short)[:120]!r}")
    revoked = id_db.credential(conn, row.id)
    assert revoked is not None
    return mgmt.credential_json(revoked)


# -- personal access tokens ---------------------------------------------------------------


def list_tokens(conn: Connection, actor: Identity) -> list[dict[str, Any]]:
    if actor.kind not in ("user", "token") or actor.user_id is None:
        raise ForbiddenError("only users have personal access tokens")
    return [
        mgmt.credential_json(r)
        for r in id_db.list_credentials(conn, "token", owner_user_id=actor.user_id)
    ]


def create_token(
    conn: Connection,
    actor: Identity,
    name: str,
    permissions: list[Permission] | None,
    expires_in_days: float | None,
) -> NewCredential:
    require_password_user(actor, "creating an access token")
    check_token_name(name)
    if permissions is not None:
        check_globs(permissions)
    check_expiry(expires_in_days)
    row, secret = mgmt.create_access_token(conn, actor.name, name, permissions, expires_in_days)
    return NewCredential(mgmt.credential_json(row), secret)


def revoke_token(conn: Connection, actor: Identity, credential_id: str) -> dict[str, Any]:
    require_password_user(actor, "revoking an access token")
    row = id_db.credential(conn, credential_id) if len(credential_id) <= 32 else None
    if (
        row is None
        or row.kind != "token"
        or row.owner_user_id != actor.user_id
        or not id_db.revoke_credential(conn, row.id)
    ):
        raise NotFoundError(f"you have no active access token {credential_id[:40]!r}")
    revoked = id_db.credential(conn, row.id)
    assert revoked is not None
    return mgmt.credential_json(revoked)


# -- repositories -------------------------------------------------------------------------


def _repository_view(conn: Connection, name: str, actions: frozenset[str]) -> dict[str, Any]:
    own = id_db.repository_public(conn, name)
    if own is not None:
        public, source = own, "repository"
    else:
        org = id_db.org_by_name(conn, namespace_of(name))
        public, source = (org.public, "organization") if org else (False, "default")
    return {
        "name": name,
        "visibility": "public" if public else "private",
        "visibility_source": source,
        "actions": sorted(actions),
    }


def get_repository(conn: Connection, actor: Identity, name: str, rules: Rules) -> dict[str, Any]:
    """Whoever may pull a repository sees it (and may not tell an absent one from a
    forbidden one otherwise, as on /v2)."""
    check_repository_name(name)
    actions = repository_actions(conn, actor, name, rules)
    if "pull" not in actions:
        raise ForbiddenError(f"you may not pull {name!r}")
    if repo_db.get_id(conn, name) is None:
        raise NotFoundError(f"no repository {name!r}")
    return _repository_view(conn, name, actions)


def set_visibility(
    conn: Connection, actor: Identity, name: str, public: bool, rules: Rules
) -> dict[str, Any]:
    """Managers of the namespace set it, also before the first push."""
    check_repository_name(name)
    namespace = namespace_of(name)
    require_manager(conn, actor, namespace, "changing a repository's visibility")
    if namespace:
        require_namespace(conn, namespace)
    id_db.set_repository_public(conn, name, public)
    return _repository_view(conn, name, repository_actions(conn, actor, name, rules))


def list_repositories(
    conn: Connection, actor: Identity, rules: Rules, last: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The repositories (holding a manifest) the caller may pull, in name order after
    ``last``; and whether more follow."""
    found: list[dict[str, Any]] = []
    cursor = last
    batch = max(limit + 1, 200)
    while len(found) <= limit:
        names = repo_db.list_names(conn, cursor, batch)
        for name in names:
            actions = repository_actions(conn, actor, name, rules)
            if "pull" in actions:
                found.append(_repository_view(conn, name, actions))
                if len(found) > limit:
                    break
        if len(names) < batch:
            break
        cursor = names[-1]
    return found[:limit], len(found) > limit


# -- audit --------------------------------------------------------------------------------


def audit_entries(
    conn: Connection,
    actor: Identity,
    *,
    actor_name: str | None,
    action: str | None,
    resource: str | None,
    since: float | None,
    limit: int,
    before_id: int | None,
) -> list[dict[str, Any]]:
    """Site administrators read everything; a user reads what happened in the namespaces
    they manage (repositories, the organization, its robots, their own account)."""
    filters: dict[str, Any] = {
        "actor": actor_name,
        "action": action,
        "resource": resource,
        "since": since,
        "limit": limit,
        "before_id": before_id,
    }
    if is_site_admin(actor):
        return id_db.audit_entries(conn, **filters)
    require_password_user(actor, "reading the audit log")
    namespaces = managed_namespaces(conn, actor)
    prefixes = [p for ns in namespaces for p in (f"{ns}/", f"{ROBOT_PREFIX}{ns}+")]
    names = [org_resource(ns) for ns in namespaces] + [user_resource(actor.name)]
    return ns_db.audit_entries_within(conn, prefixes=prefixes, names=names, **filters)
