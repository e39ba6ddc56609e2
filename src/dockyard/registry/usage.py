"""Storage usage: per repository (logical), per namespace (deduplicated within it, and
logical) and for the registry (deduplicated: the bytes on disk; logical: the sum over
repositories). Computed from the metadata, so it is exact after deletes and garbage
collection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dockyard.db import lifecycle as life_db
from dockyard.registry.lifecycle import namespace_of


@dataclass(frozen=True)
class Usage:
    stored_bytes: int  # distinct blobs + manifests: what the registry holds
    logical_bytes: int  # each repository counted in full
    repositories: list[dict[str, Any]]
    namespaces: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "stored_bytes": self.stored_bytes,
            "logical_bytes": self.logical_bytes,
            "namespaces": self.namespaces,
            "repositories": self.repositories,
        }


def usage(conn: Connection) -> Usage:
    per_repository = life_db.repository_usage(conn)
    blob_total, manifest_total = life_db.stored_bytes(conn)
    quotas = {q.namespace: q for q in life_db.list_quotas(conn)}
    namespaces = sorted({namespace_of(name) for name, _, _ in per_repository} | set(quotas))
    logical: dict[str, int] = {}
    for name, b, m in per_repository:
        logical[namespace_of(name)] = logical.get(namespace_of(name), 0) + b + m
    namespace_rows = []
    for namespace in namespaces:
        quota = quotas.get(namespace)
        namespace_rows.append(
            {
                "namespace": namespace,
                "stored_bytes": life_db.namespace_bytes(conn, namespace),
                "logical_bytes": logical.get(namespace, 0),
                "repositories": life_db.namespace_repository_count(conn, namespace),
                "quota": None
                if quota is None
                else {"bytes": quota.max_bytes, "repositories": quota.max_repositories},
            }
        )
    return Usage(
        stored_bytes=blob_total + manifest_total,
        logical_bytes=sum(b + m for _, b, m in per_repository),
        repositories=[
            {"repository": name, "bytes": b + m, "blob_bytes": b, "manifest_bytes": m}
            for name, b, m in per_repository
        ],
        namespaces=namespace_rows,
    )
