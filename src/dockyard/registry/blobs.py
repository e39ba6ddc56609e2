"""Blobs as a repository sees them: stat, serve, delete, mount."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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

    async def url(self, digest: str) -> str | None:
        """Where to redirect a GET of the blob (a presigned URL), or None to serve it here:
        redirects are off or the store has no URLs."""
        seconds = self.ctx.redirect_seconds
        if seconds <= 0:
            return None
        return await self.ctx.run(lambda: self.ctx.store.blob_url(digest, seconds))

    async def read(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        """The blob's bytes ``[start, end)``, read from the store on a thread (a store without
        local files, such as S3, answers over the network)."""
        pieces = iter(self.ctx.store.read_blob(digest, start, end))
        done = object()
        try:
            while True:
                piece = await self.ctx.run(lambda: next(pieces, done))
                if piece is done:
                    return
                assert isinstance(piece, bytes)
                yield piece
        finally:
            # closing the reader ends its request to the store; not while a thread is in it
            await asyncio.shield(self.ctx.run(lambda: _close(pieces)))

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
            if source_id is None:
                return False
            # the source's link stays locked until the new one is committed, so the
            # garbage collector cannot take the blob in between
            if blob_db.linked_size(conn, source_id, digest, lock=True) is None:
                return False
            blob_db.link(conn, repo_db.ensure(conn, name), digest)
            enforce_quota(conn, name)
            return True

        return await self.ctx.write(link)


def _close(pieces: object) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        # ValueError: still running in a thread of a cancelled request; it ends on its own
        with contextlib.suppress(ValueError):
            close()
