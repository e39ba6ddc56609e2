"""Repository lookups shared by the other registry services."""

from __future__ import annotations

from sqlalchemy import Connection

from dockyard.db import repositories as repo_db
from dockyard.oci.errors import NameUnknown
from dockyard.oci.names import validate_name


def require_id(conn: Connection, name: str) -> int:
    repository_id = repo_db.get_id(conn, name)
    if repository_id is None:
        raise NameUnknown(f"repository {name!r} is not known to the registry", {"name": name})
    return repository_id


__all__ = ["require_id", "validate_name"]
