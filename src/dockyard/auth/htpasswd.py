"""Importing users from an htpasswd file, as registry:2 deployments use (bcrypt only)."""

from __future__ import annotations

from sqlalchemy import Connection

from dockyard.auth.management import ConflictError, check_name
from dockyard.db import identities as id_db


def import_htpasswd(conn: Connection, text: str) -> list[str]:
    """Create a user for each ``name:$2y$...`` line; their bcrypt hash is kept as it is and
    verified on login. Existing users are left alone; an organization's name is refused."""
    imported = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2a$", "$2b$")):
            raise ConflictError(f"line {number}: only bcrypt entries (htpasswd -B) are supported")
        check_name(name, "user")
        if id_db.user_by_name(conn, name) is not None:
            continue
        if id_db.org_by_name(conn, name) is not None:
            raise ConflictError(f"line {number}: {name!r} is the name of an organization")
        id_db.create_user(conn, name, hashed, False)
        imported.append(name)
    return imported
