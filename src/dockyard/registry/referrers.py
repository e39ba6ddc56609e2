"""The referrers API: manifests whose ``subject`` is a given digest, as an OCI index."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection

from dockyard.db import manifests as manifest_db
from dockyard.db import repositories as repo_db
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import parse_digest
from dockyard.registry.context import Context

PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    body: bytes
    next_last: str | None  # digest to continue after, when another page follows


class Referrers:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def list(
        self, name: str, digest: str, artifact_type: str | None, last: str | None = None
    ) -> ReferrersPage:
        parse_digest(digest)

        def query(conn: Connection) -> list[manifest_db.Referrer]:
            repository_id = repo_db.get_id(conn, name)
            if repository_id is None:
                return []
            return manifest_db.referrers(
                conn, repository_id, digest, artifact_type, last, PAGE_SIZE + 1
            )

        rows = await self.ctx.read(query)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        descriptors = []
        for row in rows:
            descriptor: dict[str, object] = {
                "mediaType": row.media_type,
                "digest": row.digest,
                "size": row.size,
            }
            if row.artifact_type:
                descriptor["artifactType"] = row.artifact_type
            if row.annotations:
                descriptor["annotations"] = row.annotations
            descriptors.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
        return ReferrersPage(
            json.dumps(index, separators=(",", ":")).encode(),
            rows[-1].digest if more and rows else None,
        )
