"""Manifests: push (validate, check references, store, tag), pull, delete."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from dockyard.db import blobs as blob_db
from dockyard.db import manifests as manifest_db
from dockyard.db import repositories as repo_db
from dockyard.db import tags as tag_db
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import is_digest, parse_digest
from dockyard.oci.errors import (
    ManifestBlobUnknown,
    ManifestTooLarge,
    ManifestUnknown,
)
from dockyard.oci.manifests import ParsedManifest, check_digest_matches, parse_manifest
from dockyard.oci.names import validate_tag
from dockyard.registry.context import Context
from dockyard.registry.lifecycle import enforce_quota, refuse_if_immutable
from dockyard.registry.repositories import require_id


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None
    tags: tuple[str, ...]


class Manifests:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def put(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: list[str] | None = None,
        verify_references: bool = True,
    ) -> PushedManifest:
        """Store a manifest. ``verify_references=False`` is for a pull-through cache, whose
        repositories get blobs and child manifests lazily, when they are first pulled."""
        if len(body) > self.ctx.limits.max_manifest_bytes:
            raise ManifestTooLarge(
                f"manifest is {len(body)} bytes; the limit is {self.ctx.limits.max_manifest_bytes}"
            )
        algorithm = parse_digest(reference).algorithm if is_digest(reference) else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if is_digest(reference):
            check_digest_matches(reference, digest)
        tags = [] if is_digest(reference) else [validate_tag(reference)]
        tags += [validate_tag(tag) for tag in extra_tags or [] if tag not in tags]
        parsed = parse_manifest(body, content_type)

        def store(conn: Connection) -> None:
            repository_id = repo_db.ensure(conn, name)
            if verify_references:
                _check_references(conn, repository_id, parsed)
            manifest_id = manifest_db.store(
                conn,
                repository_id,
                digest=digest,
                media_type=parsed.media_type,
                artifact_type=parsed.effective_artifact_type,
                subject_digest=parsed.subject.digest if parsed.subject else None,
                annotations=parsed.annotations or None,
                content=body,
                blob_digests=[d.digest for d in parsed.blob_references],
                manifest_digests=[d.digest for d in parsed.manifests],
            )
            for tag in sorted(tags):  # one order: concurrent pushes lock tags alike
                current = tag_db.claim(conn, repository_id, tag, manifest_id)
                if current is None:
                    continue  # a new tag
                if current != manifest_id:
                    refuse_if_immutable(conn, name, tag, "moving it to another manifest")
                tag_db.set_tag(conn, repository_id, tag, manifest_id)
            enforce_quota(conn, name)

        await self.ctx.write(store)
        return PushedManifest(
            digest, parsed.subject.digest if parsed.subject else None, tuple(tags)
        )

    async def get(
        self, name: str, reference: str, accept: Callable[[], list[str]] | None = None
    ) -> Manifest:
        """The manifest; ``accept`` gives the client's media types when negotiation is
        needed (only for an index asked for by tag)."""

        def lookup(conn: Connection) -> Manifest | None:
            repository_id = require_id(conn, name)
            if is_digest(reference):
                stored = manifest_db.by_digest(conn, repository_id, reference)
            else:
                stored = manifest_db.by_tag(conn, repository_id, reference)
            return Manifest(stored.digest, stored.media_type, stored.content) if stored else None

        if is_digest(reference):
            parse_digest(reference)
        manifest = await self.ctx.cached_read(("manifest", name, reference), lookup)
        if manifest is None:
            raise ManifestUnknown(detail={"reference": reference[:200]})
        if accept is not None and manifest.media_type in mt.INDEXES and not is_digest(reference):
            return await self._negotiate(name, manifest, accept())
        return manifest

    async def _negotiate(self, name: str, manifest: Manifest, accept: list[str]) -> Manifest:
        """Serve an old client that accepts image manifests but not indexes the
        linux/amd64 image of an index, as Distribution does; otherwise the stored bytes."""
        accepted = set(accept)
        if (
            not accepted
            or accepted & (mt.INDEXES | {"*/*", "application/*", "application/json"})
            or not accepted & mt.IMAGE_MANIFESTS
        ):
            return manifest
        try:
            document = json.loads(manifest.content)
            for entry in document.get("manifests", []):
                platform = entry.get("platform") or {}
                if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                    child = await self.get(name, entry["digest"])
                    if child.media_type in accepted:
                        return child
        except (ValueError, AttributeError, KeyError, TypeError, ManifestUnknown):
            pass
        return manifest

    async def delete(self, name: str, reference: str) -> None:
        """By tag: remove the tag. By digest: remove the manifest and every tag on it."""
        if is_digest(reference):
            parse_digest(reference)
        else:
            validate_tag(reference)

        def remove(conn: Connection) -> bool:
            repository_id = require_id(conn, name)
            if not is_digest(reference):
                if manifest_db.by_tag(conn, repository_id, reference) is not None:
                    refuse_if_immutable(conn, name, reference, "deleting it")
                return tag_db.remove(conn, repository_id, reference)
            # locked: a concurrent push tagging it waits, and then stores it anew
            stored = manifest_db.by_digest(conn, repository_id, reference, lock=True)
            if stored is None:
                return False
            for tag in manifest_db.tags_of(conn, stored.id):
                refuse_if_immutable(conn, name, tag, "deleting its manifest")
            manifest_db.remove(conn, stored.id)
            return True

        if not await self.ctx.write(remove):
            raise ManifestUnknown(detail={"reference": reference[:200]})


def _check_references(conn: Connection, repository_id: int, parsed: ParsedManifest) -> None:
    blob_digests = [d.digest for d in parsed.blob_references]
    # locked until the manifest is stored: the garbage collector cannot take them meanwhile
    linked = blob_db.linked_digests(conn, repository_id, blob_digests, lock=True)
    missing = [d for d in blob_digests if d not in linked]
    child_digests = [d.digest for d in parsed.manifests]
    present = manifest_db.existing_digests(conn, repository_id, child_digests, lock=True)
    missing += [d for d in child_digests if d not in present]
    if missing:
        raise ManifestBlobUnknown(
            f"manifest references {len(missing)} blob(s) or manifest(s) not in this "
            f"repository: {', '.join(missing[:5])}",
            detail={"missing": missing[:100]},
        )
