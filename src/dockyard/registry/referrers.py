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
MAX_PAGE_BYTES = 4 * 1024 * 1024 - 1024


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
        descriptors: list[bytes] = []
        size = len(_HEAD) + len(_TAIL)
        next_last = None
        for i, row in enumerate(rows):
            encoded = _descriptor(row)
            # A page stays under the manifest size limit clients accept (4 MiB).
            if i == PAGE_SIZE or (descriptors and size + len(encoded) + 1 > MAX_PAGE_BYTES):
                next_last = rows[i - 1].digest
                break
            descriptors.append(encoded)
            size += len(encoded) + 1
        return ReferrersPage(_HEAD + b",".join(descriptors) + _TAIL, next_last)


_HEAD = b'{"schemaVersion":2,"mediaType":"' + mt.OCI_INDEX.encode() + b'","manifests":['
_TAIL = b"]}"


def _descriptor(row: manifest_db.Referrer) -> bytes:
    descriptor: dict[str, object] = {
        "mediaType": row.media_type,
        "digest": row.digest,
        "size": row.size,
    }
    if row.artifact_type:
        descriptor["artifactType"] = row.artifact_type
    if row.annotations:
        descriptor["annotations"] = row.annotations
    return json.dumps(descriptor, separators=(",", ":")).encode()
