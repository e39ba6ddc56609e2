"""Blobs as a repository sees them: stat, serve, delete, mount."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from dockyard.db import blobs as blob_db
from dockyard.db import repositories as repo_db
from dockyard.oci.digest import parse_digest
from dockyard.oci.errors import BlobUnknown
from dockyard.registry.context import Context
from dockyard.registry.lifecycle import enforce_quota


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int
    path: str | None  # a local file to send zero-copy, when the store has one


class Blobs:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def stat(self, name: str, digest: str) -> BlobInfo:
        """The blob as served from repository ``name``, or ``BlobUnknown``."""
        parse_digest(digest)

        def lookup(conn: Connection) -> int | None:
            repository_id = repo_db.get_id(conn, name)
            if repository_id is None:
                return None
            return blob_db.linked_size(conn, repository_id, digest)

        size = await self.ctx.cached_read(("blob", name, digest), lookup)
        if size is None:
            raise BlobUnknown(detail={"digest": digest})
        return BlobInfo(digest, size, self.ctx.store.blob_path(digest))

    async def delete(self, name: str, digest: str) -> None:
        """Unlink the blob from the repository; its bytes go when nothing references them."""
        parse_digest(digest)

        def unlink(conn: Connection) -> bool:
            repository_id = repo_db.get_id(conn, name)
            return repository_id is not None and blob_db.unlink(conn, repository_id, digest)

        if not await self.ctx.write(unlink):
            raise BlobUnknown(detail={"digest": digest})

    async def mount(self, name: str, digest: str, source: str) -> bool:
        """Link a blob of ``source`` into ``name``; False when ``source`` does not have it."""
        parse_digest(digest)

        def link(conn: Connection) -> bool:
            source_id = repo_db.get_id(conn, source)
            if source_id is None or blob_db.linked_size(conn, source_id, digest) is None:
                return False
            blob_db.link(conn, repo_db.ensure(conn, name), digest)
            enforce_quota(conn, name)
            return True

        return await self.ctx.write(link)
