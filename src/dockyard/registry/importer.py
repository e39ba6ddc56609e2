"""``dockyard import``: bring a CNCF Distribution (registry:2, 2.x) filesystem storage root
into Dockyard — repositories, tags, manifests, blobs and the links between them — with the
result a push of the same content would have produced.

Distribution's layout (its ``registry/storage/paths.go``), under ``<root>/docker/registry/v2``::

    blobs/<algorithm>/<first two hex>/<hex>/data                    every blob and manifest
    repositories/<name>/_layers/<algorithm>/<hex>/link               blobs of the repository
    repositories/<name>/_manifests/revisions/<algorithm>/<hex>/link  manifests of the repository
    repositories/<name>/_manifests/tags/<tag>/current/link           the manifest a tag names
    repositories/<name>/_uploads/                                    uploads in progress (ignored)

A ``<name>`` with slashes is a nest of directories; a repository is a directory with a
``_manifests`` or ``_layers`` child. Deleting a manifest or a layer link in Distribution
removes the ``link`` file and leaves its directory, so a directory without one is skipped.

One repository at a time: first the blobs linked to it that Dockyard lacks, each hashed
while it is hard-linked, copied or streamed into the blob store and published, recorded and
linked under the blob's lock only when the hash matches its digest (as an upload is); then
its manifests through :meth:`Manifests.put`, children before the indexes that list them,
each with the tags that name it. A manifest whose blobs or children could not be imported
is skipped with its tags, so everything imported is complete. What Dockyard already has is
neither read nor written again: a second run changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection

from dockyard.db import blobs as blob_db
from dockyard.db import manifests as manifest_db
from dockyard.db import repositories as repo_db
from dockyard.oci.digest import compute_digest, is_valid_digest
from dockyard.oci.errors import RegistryError
from dockyard.oci.manifests import ParsedManifest, parse_manifest
from dockyard.oci.names import is_valid_tag, validate_name
from dockyard.registry.context import Context
from dockyard.registry.lifecycle import enforce_quota
from dockyard.registry.manifests import Manifests

_CHUNK = 8 * 1024 * 1024
_LINK_FILE_MAX = 1024  # a link file holds one digest
_PARALLEL_BLOBS = 4


class SourceInvalid(Exception):
    """The path given is not a Distribution storage root."""


@runtime_checkable
class LinkingStore(Protocol):
    """A blob store on the local filesystem that can adopt a file as an upload."""

    def link_upload(self, upload_id: str, source: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Skipped:
    kind: str  # repository, tag, manifest or blob
    repository: str | None
    reference: str
    reason: str
    corrupt: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "repository": self.repository,
            "reference": self.reference,
            "reason": self.reason,
            "corrupt": self.corrupt,
        }


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    dry_run: bool
    repositories: int = 0
    repositories_changed: int = 0
    tags_imported: int = 0
    tags_present: int = 0
    manifests_imported: int = 0
    manifests_present: int = 0
    blobs_imported: int = 0
    blobs_present: int = 0
    blob_methods: dict[str, int] = field(
        default_factory=lambda: {"linked": 0, "copied": 0, "uploaded": 0}
    )
    bytes_imported: int = 0
    byte_methods: dict[str, int] = field(
        default_factory=lambda: {"linked": 0, "copied": 0, "uploaded": 0}
    )
    links_added: int = 0  # blobs newly linked to a repository
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def corrupt(self) -> int:
        return sum(1 for s in self.skipped if s.corrupt)

    @property
    def changed(self) -> bool:
        return bool(
            self.tags_imported or self.manifests_imported or self.blobs_imported or self.links_added
        )

    def change_counts(self) -> tuple[int, int, int, int]:
        """Manifests, tags and blobs imported and blob links added, so far."""
        return (self.manifests_imported, self.tags_imported, self.blobs_imported, self.links_added)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "repositories": {"found": self.repositories, "changed": self.repositories_changed},
            "tags": {
                "imported": self.tags_imported,
                "already_present": self.tags_present,
                "skipped": self._skipped_count("tag"),
            },
            "manifests": {
                "imported": self.manifests_imported,
                "already_present": self.manifests_present,
                "skipped": self._skipped_count("manifest"),
            },
            "blobs": {
                "imported": self.blobs_imported,
                **self.blob_methods,
                "already_present": self.blobs_present,
                "skipped": self._skipped_count("blob"),
            },
            "bytes": {"imported": self.bytes_imported, **self.byte_methods},
            "repository_blob_links_added": self.links_added,
            "corrupt": self.corrupt,
            "skipped": [s.to_json() for s in self.skipped],
        }

    def _skipped_count(self, kind: str) -> int:
        return sum(1 for s in self.skipped if s.kind == kind)

    def summary(self) -> list[str]:
        verb = "would import" if self.dry_run else "imported"
        methods = ", ".join(f"{count} {how}" for how, count in self.blob_methods.items())
        lines = [
            f"repositories: {self.repositories} found, {self.repositories_changed} "
            f"{'would change' if self.dry_run else 'changed'}",
            f"tags:         {self.tags_imported} {verb}, {self.tags_present} already present, "
            f"{self._skipped_count('tag')} skipped",
            f"manifests:    {self.manifests_imported} {verb}, {self.manifests_present} already "
            f"present, {self._skipped_count('manifest')} skipped",
            f"blobs:        {self.blobs_imported} {verb}"
            + ("" if self.dry_run else f" ({methods})")
            + f", {self.blobs_present} already present, {self._skipped_count('blob')} skipped",
            f"bytes:        {self.bytes_imported} {verb}"
            + ("" if self.dry_run else f" ({self.byte_methods['linked']} hard-linked)"),
        ]
        for skipped in self.skipped:
            where = f"{skipped.repository}: " if skipped.repository else ""
            mark = "CORRUPT " if skipped.corrupt else ""
            lines.append(
                f"skipped {mark}{skipped.kind} {where}{skipped.reference}: {skipped.reason}"
            )
        if not self.changed and not self.skipped:
            lines.append("nothing to import: everything was already there")
        return lines


@dataclass
class SourceRepository:
    name: str
    tags: dict[str, str]  # tag -> manifest digest
    revisions: list[str]  # manifest digests
    layers: list[str]  # blob digests linked to the repository


class _SourceProblem(Exception):
    def __init__(self, reason: str, corrupt: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.corrupt = corrupt


class DistributionRoot:
    """A Distribution filesystem storage root, read-only."""

    def __init__(self, path: Path) -> None:
        # the configured rootdirectory, or its docker/registry/v2 directory itself
        for candidate in (path / "docker" / "registry" / "v2", path):
            if (candidate / "repositories").is_dir() or (candidate / "blobs").is_dir():
                self.v2 = candidate
                return
        raise SourceInvalid(
            f"{path} is not a Distribution storage root: it has neither "
            "docker/registry/v2/repositories nor docker/registry/v2/blobs"
        )

    def blob_file(self, digest: str) -> Path:
        algorithm, _, hex_part = digest.partition(":")
        return self.v2 / "blobs" / algorithm / hex_part[:2] / hex_part / "data"

    def repository_dirs(self) -> Iterator[tuple[str, Path]]:
        """``(name, directory)`` of every repository, in lexical order of the path."""
        root = self.v2 / "repositories"
        if not root.is_dir():
            return
        for dirpath, dirnames, _files in os.walk(root):
            here = Path(dirpath)
            if "_manifests" in dirnames or "_layers" in dirnames:
                yield here.relative_to(root).as_posix(), here
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("_"))

    def read_repository(
        self, name: str, directory: Path, skip: Callable[[Skipped], None]
    ) -> SourceRepository:
        tags: dict[str, str] = {}
        for tag_dir in _subdirs(directory / "_manifests" / "tags"):
            tag = tag_dir.name
            if not is_valid_tag(tag):
                skip(Skipped("tag", name, _printable(tag[:200]), "not a valid tag name"))
                continue
            target = _read_link(tag_dir / "current" / "link")
            if target is None:
                skip(Skipped("tag", name, tag, "has no current/link (deleted or half-written)"))
            elif not is_valid_digest(target):
                skip(Skipped("tag", name, tag, f"current/link holds {target[:100]!r}, no digest"))
            else:
                tags[tag] = target
        return SourceRepository(
            name=name,
            tags=tags,
            revisions=self._linked(name, directory / "_manifests" / "revisions", skip),
            layers=self._linked(name, directory / "_layers", skip),
        )

    def _linked(self, name: str, directory: Path, skip: Callable[[Skipped], None]) -> list[str]:
        """Digests of the ``<directory>/<algorithm>/<hex>/link`` files that exist."""
        kind = "blob" if directory.name == "_layers" else "manifest"
        digests = []
        for algorithm_dir in _subdirs(directory):
            for hex_dir in _subdirs(algorithm_dir):
                link = _read_link(hex_dir / "link")
                if link is None:
                    continue  # deleted in Distribution: the directory stays, the link goes
                digest = f"{algorithm_dir.name}:{hex_dir.name}"
                if not is_valid_digest(digest):
                    reason = "not a sha256 or sha512 digest"
                    skip(Skipped(kind, name, _printable(digest[:200]), reason))
                elif link != digest:
                    skip(Skipped(kind, name, digest, f"its link holds {link[:100]!r}"))
                else:
                    digests.append(digest)
        return digests


def _subdirs(directory: Path) -> list[Path]:
    try:
        return sorted(
            Path(entry.path)
            for entry in os.scandir(directory)
            if entry.is_dir(follow_symlinks=False)
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _printable(name: str) -> str:
    """A file name as text that can be printed (undecodable bytes become U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_link(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(_LINK_FILE_MAX).decode("utf-8", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


@dataclass
class _RepositoryState:
    """What Dockyard already holds for one repository."""

    linked: set[str]
    manifests: set[str]
    tags: dict[str, str]  # tag -> digest, for the tags the source has
    recorded: dict[str, int]  # blob digest -> recorded size, for the source's layers


def _repository_state(conn: Connection, source: SourceRepository) -> _RepositoryState:
    recorded = {}
    for digest in source.layers:
        size = blob_db.size(conn, digest)
        if size is not None:
            recorded[digest] = size
    repository_id = repo_db.get_id(conn, source.name)
    if repository_id is None:
        return _RepositoryState(set(), set(), {}, recorded)
    tags = {}
    for tag in source.tags:
        current = manifest_db.by_tag(conn, repository_id, tag)
        if current is not None:
            tags[tag] = current.digest
    return _RepositoryState(
        linked=blob_db.linked_digests(conn, repository_id, source.layers),
        manifests=manifest_db.existing_digests(conn, repository_id, source.revisions),
        tags=tags,
        recorded=recorded,
    )


def _record_blob(conn: Connection, name: str, digest: str, size: int) -> None:
    """As the end of an upload: the blob is stored and linked to the repository."""
    repository_id = repo_db.ensure(conn, name)
    blob_db.record(conn, digest, size)
    blob_db.link(conn, repository_id, digest)
    enforce_quota(conn, name)


def _link_blobs(conn: Connection, name: str, digests: list[str]) -> None:
    """Link (or link again: the garbage collector's grace period restarts) the blobs."""
    repository_id = repo_db.ensure(conn, name)
    for digest in digests:
        blob_db.link(conn, repository_id, digest)
    enforce_quota(conn, name)


@dataclass
class _SourceManifest:
    digest: str
    content: bytes
    parsed: ParsedManifest


class Importer:
    def __init__(
        self,
        ctx: Context,
        source: DistributionRoot,
        *,
        dry_run: bool = False,
        patterns: Sequence[str] = (),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.manifests = Manifests(ctx)
        self.source = source
        self.patterns = list(patterns)
        self.report = ImportReport(dry_run=dry_run)
        self._progress = progress or (lambda _line: None)
        self._blob_ok: set[str] = set()  # in Dockyard's store (or, dry run, would be)
        self._blob_bad: dict[str, str] = {}  # digest -> why it was not imported

    def _skip(self, skipped: Skipped) -> None:
        self.report.skipped.append(skipped)

    def _wanted(self, name: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def _scan(self) -> list[SourceRepository]:
        repositories = []
        for name, directory in self.source.repository_dirs():
            if not self._wanted(name):
                continue
            try:
                validate_name(name)
            except RegistryError as exc:
                self._skip(Skipped("repository", None, _printable(name[:300]), exc.message))
                continue
            repositories.append(self.source.read_repository(name, directory, self._skip))
        return repositories

    async def run(self) -> ImportReport:
        repositories = await self.ctx.run(self._scan)
        self.report.repositories = len(repositories)
        self._progress(f"{len(repositories)} repositories in {self.source.v2}")
        for repository in repositories:
            await self._import_repository(repository)
        return self.report

    async def _import_repository(self, source: SourceRepository) -> None:
        before = self.report.change_counts()
        present_before = self.report.manifests_present + self.report.blobs_present
        skipped_before = len(self.report.skipped)
        state = await self.ctx.read(partial(_repository_state, source=source))
        await self._import_blobs(source, state)
        await self._import_manifests(source, state)
        report = self.report
        after = report.change_counts()
        if after != before:
            report.repositories_changed += 1
        manifests, tags, blobs, _links = (now - was for now, was in zip(after, before, strict=True))
        present = report.manifests_present + report.blobs_present - present_before
        skipped = len(report.skipped) - skipped_before
        self._progress(
            f"{source.name}: {manifests} manifests, {tags} tags, {blobs} blobs "
            f"{'to import' if report.dry_run else 'imported'}; {present} already present"
            + (f"; {skipped} skipped" if skipped else "")
        )

    # blobs

    async def _import_blobs(self, source: SourceRepository, state: _RepositoryState) -> None:
        gate = asyncio.Semaphore(_PARALLEL_BLOBS)

        async def settle(digest: str) -> None:
            async with gate:
                await self._settle_blob(source.name, digest, state)

        pending = [d for d in source.layers if d not in self._blob_ok and d not in self._blob_bad]
        await asyncio.gather(*(settle(d) for d in pending))

    async def _settle_blob(self, name: str, digest: str, state: _RepositoryState) -> None:
        recorded = state.recorded.get(digest)
        if recorded is not None:
            stored = await self.ctx.run(partial(self.store.stat_blob, digest))
            if stored == recorded:
                self._blob_ok.add(digest)
                self.report.blobs_present += 1
                return
        if self.report.dry_run:
            try:
                size = os.stat(self.source.blob_file(digest)).st_size
            except OSError:
                self._bad_blob(name, digest, _SourceProblem(_MISSING))
                return
            self._blob_ok.add(digest)
            self.report.blobs_imported += 1
            self.report.bytes_imported += size
            return
        try:
            upload_id, method, size = await self.ctx.run(partial(self._stage, digest))
        except _SourceProblem as problem:
            self._bad_blob(name, digest, problem)
            return
        # publish and record under the blob's lock, which the garbage collector takes too
        lock = await asyncio.to_thread(self.store.lock_blob, digest)
        try:
            await self.ctx.run(partial(self.store.publish_upload, upload_id, digest))
            await self.ctx.write(partial(_record_blob, name=name, digest=digest, size=size))
        except (FileNotFoundError, RegistryError) as exc:
            # a quota refused it, or a concurrent purge of stale uploads took the upload:
            # skip it (another run imports it); other storage failures end the run
            with contextlib.suppress(Exception):
                self.store.delete_upload(upload_id)
            reason = exc.message if isinstance(exc, RegistryError) else f"upload gone: {exc}"
            self._bad_blob(name, digest, _SourceProblem(f"not stored: {reason}"))
            return
        finally:
            lock.release()
        state.linked.add(digest)
        self._blob_ok.add(digest)
        self.report.blobs_imported += 1
        self.report.bytes_imported += size
        self.report.blob_methods[method] += 1
        self.report.byte_methods[method] += size
        self.report.links_added += 1

    def _bad_blob(self, name: str, digest: str, problem: _SourceProblem) -> None:
        self._blob_bad[digest] = problem.reason
        self._skip(Skipped("blob", name, digest, problem.reason, problem.corrupt))

    def _stage(self, digest: str) -> tuple[str, str, int]:
        """Put the source blob in a new upload of the store, verifying its digest on the
        way: ``(upload id, how, size)``. Hard-linked when the store can and the file is on
        its filesystem, else copied (local store) or streamed (any other store)."""
        source = self.source.blob_file(digest)
        algorithm = digest.partition(":")[0]
        upload_id = str(uuid.uuid4())
        method = "uploaded"
        if isinstance(self.store, LinkingStore):
            try:
                self.store.link_upload(upload_id, str(source))
                method = "linked"
            except FileNotFoundError:
                raise _SourceProblem(_MISSING) from None
            except OSError:  # another filesystem (EXDEV), hard links not permitted ...
                method = "copied"
        hasher = hashlib.new(algorithm)
        size = 0
        try:
            if method == "linked":
                for chunk in self.store.read_upload(upload_id):
                    hasher.update(chunk)
                    size += len(chunk)
            else:
                try:
                    handle = open(source, "rb")  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    raise _SourceProblem(_MISSING) from None
                except OSError as exc:
                    raise _SourceProblem(f"cannot be read: {exc}") from None
                with handle:
                    self.store.create_upload(upload_id)
                    writer = self.store.open_upload(upload_id, 0)
                    try:
                        while chunk := handle.read(_CHUNK):
                            stored = writer.write(chunk)
                            hasher.update(chunk)
                            size += len(chunk)
                            if stored is not None:  # stored in the background (S3)
                                stored.result()
                    finally:
                        writer.close()
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.delete_upload(upload_id)
            raise
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            self.store.delete_upload(upload_id)
            raise _SourceProblem(
                f"corrupt: its {size} bytes hash to {actual}; not imported", corrupt=True
            )
        return upload_id, method, size

    # manifests

    def _read_manifests(self, source: SourceRepository) -> dict[str, _SourceManifest]:
        limit = self.ctx.limits.max_manifest_bytes
        found = {}
        for digest in source.revisions:
            path = self.source.blob_file(digest)
            try:
                if os.stat(path).st_size > limit:
                    raise _SourceProblem(f"larger than max_manifest_bytes ({limit})")
                with open(path, "rb") as handle:
                    content = handle.read(limit + 1)
            except OSError:
                self._skip(Skipped("manifest", source.name, digest, _MISSING))
                continue
            except _SourceProblem as problem:
                self._skip(Skipped("manifest", source.name, digest, problem.reason))
                continue
            actual = compute_digest(content, digest.partition(":")[0])
            if actual != digest:
                reason = f"corrupt: its {len(content)} bytes hash to {actual}; not imported"
                self._skip(Skipped("manifest", source.name, digest, reason, corrupt=True))
                continue
            try:
                parsed = parse_manifest(content, None)
            except RegistryError as exc:
                self._skip(Skipped("manifest", source.name, digest, exc.message))
                continue
            found[digest] = _SourceManifest(digest, content, parsed)
        return found

    async def _import_manifests(self, source: SourceRepository, state: _RepositoryState) -> None:
        report = self.report
        found = await self.ctx.run(partial(self._read_manifests, source))
        tags_of: dict[str, list[str]] = {}
        for tag, digest in source.tags.items():
            if digest in found:
                tags_of.setdefault(digest, []).append(tag)
            else:
                why = "a manifest skipped above" if digest in source.revisions else "no manifest"
                self._skip(Skipped("tag", source.name, tag, f"points to {why} ({digest})"))
        order = _children_first(found)
        # the tags each manifest still needs, and whether it is missing altogether
        work = {
            digest: [t for t in tags_of.get(digest, []) if state.tags.get(t) != digest]
            for digest in order
        }
        needed = [d for d in order if d not in state.manifests or work[d]]
        # link the repository's blobs; before pushing manifests, link them all again, so
        # that the garbage collector's grace period starts now for every one of them
        usable = [d for d in source.layers if d in self._blob_ok]
        to_link = usable if needed else [d for d in usable if d not in state.linked]
        fresh = [d for d in to_link if d not in state.linked]
        if to_link and not report.dry_run:
            try:
                await self.ctx.write(partial(_link_blobs, name=source.name, digests=to_link))
            except RegistryError as exc:  # a quota, say
                self._skip(Skipped("repository", None, source.name, exc.message))
                return
        report.links_added += len(fresh)
        linked = state.linked | set(usable)
        done = set(state.manifests)  # manifests the repository has (or will have)
        for digest in order:
            manifest = found[digest]
            tags = tags_of.get(digest, [])
            missing_tags = work[digest]
            if digest in state.manifests and not missing_tags:
                report.manifests_present += 1
                report.tags_present += len(tags)
                continue
            reason = self._unmet(manifest.parsed, linked, done)
            if reason is None and not report.dry_run:
                try:
                    await self.manifests.put(
                        source.name, digest, manifest.content, None, extra_tags=missing_tags
                    )
                except RegistryError as exc:
                    reason = exc.message
            if reason is not None:
                self._skip(Skipped("manifest", source.name, digest, reason))
                for tag in tags:
                    self._skip(Skipped("tag", source.name, tag, f"its manifest {digest} skipped"))
                continue
            done.add(digest)
            if digest not in state.manifests:
                report.manifests_imported += 1
            else:
                report.manifests_present += 1
            report.tags_imported += len(missing_tags)
            report.tags_present += len(tags) - len(missing_tags)

    def _unmet(self, parsed: ParsedManifest, linked: set[str], done: set[str]) -> str | None:
        """Why the manifest cannot be pushed yet (a blob or a child it needs is missing)."""
        for blob in parsed.blob_references:
            if blob.digest not in linked:
                why = self._blob_bad.get(blob.digest, "not linked to the repository in the source")
                return f"references blob {blob.digest}, which was not imported ({why})"
        for child in parsed.manifests:
            if child.digest not in done:
                return f"lists manifest {child.digest}, which is not in the repository"
        return None


_MISSING = "missing from the source's blob store (a link without data)"


def _children_first(found: dict[str, _SourceManifest]) -> list[str]:
    """Digests ordered so that every manifest comes after the manifests it lists."""
    order: list[str] = []
    placed: set[str] = set()

    def place(digest: str, depth: int) -> None:
        if digest in placed or digest not in found or depth > 64:
            return
        placed.add(digest)
        for child in found[digest].parsed.manifests:
            place(child.digest, depth + 1)
        order.append(digest)

    for digest in sorted(found):
        place(digest, 0)
    return order
