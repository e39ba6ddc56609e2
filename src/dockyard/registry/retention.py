"""Retention policies: which tags of which repositories to keep, and removing the rest.

A policy names repositories (a glob) and rules::

    {"keep_last_pushed": 10, "keep_last_pulled": 5,
     "keep_pushed_within_days": 30, "keep_pulled_within_days": 7,
     "include": ["*"], "exclude": ["latest"], "untagged": true}

Among the tags matching ``include`` and not ``exclude``, a tag is kept when any keep rule
keeps it; the others are deleted (immutable tags never are). A policy with no keep rule
keeps everything. ``untagged`` also removes the repository's manifests that nothing (tag,
index, subject) keeps. Pull times come from ``PullRecorder``.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from dockyard.db import collection as gc_db
from dockyard.db import lifecycle as life_db
from dockyard.db import repositories as repo_db
from dockyard.db import tags as tag_db
from dockyard.registry.context import Context
from dockyard.registry.lifecycle import immutable_rule

KEEP_RULES = (
    "keep_last_pushed",
    "keep_last_pulled",
    "keep_pushed_within_days",
    "keep_pulled_within_days",
)


class PolicyInvalid(ValueError):
    pass


def check_rules(rules: Any) -> dict[str, Any]:
    if not isinstance(rules, dict):
        raise PolicyInvalid("rules must be an object")
    unknown = set(rules) - {*KEEP_RULES, "include", "exclude", "untagged"}
    if unknown:
        raise PolicyInvalid(f"unknown rules: {', '.join(sorted(unknown))}")
    for key in KEEP_RULES:
        value = rules.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise PolicyInvalid(f"{key} must be a non-negative number")
    for key in ("include", "exclude"):
        value = rules.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PolicyInvalid(f"{key} must be a list of tag patterns")
    if not isinstance(rules.get("untagged", False), bool):
        raise PolicyInvalid("untagged must be true or false")
    return dict(rules)


def tags_to_delete(rules: dict[str, Any], tags: list[life_db.TagRow], now: float) -> list[str]:
    include = rules.get("include") or ["*"]
    exclude = rules.get("exclude") or []
    candidates = [
        t
        for t in tags
        if any(fnmatch.fnmatchcase(t.name, p) for p in include)
        and not any(fnmatch.fnmatchcase(t.name, p) for p in exclude)
    ]
    if not any(rules.get(k) is not None for k in KEEP_RULES):
        return []
    keep: set[str] = set()
    if rules.get("keep_last_pushed") is not None:
        newest = sorted(candidates, key=lambda t: t.pushed_at, reverse=True)
        keep |= {t.name for t in newest[: int(rules["keep_last_pushed"])]}
    if rules.get("keep_last_pulled") is not None:
        pulled = sorted(
            (t for t in candidates if t.pulled_at is not None),
            key=lambda t: t.pulled_at or 0.0,
            reverse=True,
        )
        keep |= {t.name for t in pulled[: int(rules["keep_last_pulled"])]}
    if rules.get("keep_pushed_within_days") is not None:
        cutoff = now - float(rules["keep_pushed_within_days"]) * 86400
        keep |= {t.name for t in candidates if t.pushed_at >= cutoff}
    if rules.get("keep_pulled_within_days") is not None:
        cutoff = now - float(rules["keep_pulled_within_days"]) * 86400
        keep |= {t.name for t in candidates if t.pulled_at is not None and t.pulled_at >= cutoff}
    return sorted(t.name for t in candidates if t.name not in keep)


@dataclass
class RetentionReport:
    dry_run: bool
    tags: list[tuple[str, str]] = field(default_factory=list)  # (repository, tag)
    kept_immutable: list[tuple[str, str]] = field(default_factory=list)
    manifests: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "tags_deleted": [{"repository": r, "tag": t} for r, t in self.tags],
            "immutable_tags_kept": [{"repository": r, "tag": t} for r, t in self.kept_immutable],
            "manifests_deleted": [{"repository": r, "digest": d} for r, d in self.manifests],
        }


class Retention:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(
        self, dry_run: bool = False, policy_ids: Collection[int] | None = None
    ) -> RetentionReport:
        """Apply every policy (or those of ``policy_ids``)."""
        report = RetentionReport(dry_run)
        now = time.time()
        policies = await self.ctx.read(life_db.list_policies)
        if policy_ids is not None:
            policies = [p for p in policies if p.id in policy_ids]
        names = await self.ctx.read(life_db.repository_names)
        for policy in policies:
            for repository in names:
                if fnmatch.fnmatchcase(repository, policy.repository_pattern):
                    await self._apply(policy.rules, repository, now, report)
        return report

    async def _apply(
        self, rules: dict[str, Any], repository: str, now: float, report: RetentionReport
    ) -> None:
        def plan(conn: Connection) -> tuple[list[str], list[str]]:
            doomed = tags_to_delete(rules, life_db.tags_of_repository(conn, repository), now)
            mutable = [t for t in doomed if immutable_rule(conn, repository, t) is None]
            return mutable, [t for t in doomed if t not in mutable]

        doomed, immutable = await self.ctx.read(plan)
        report.kept_immutable += [(repository, t) for t in immutable]
        for tag in doomed:
            if not report.dry_run:

                def remove(conn: Connection, tag: str = tag) -> bool:
                    repository_id = repo_db.get_id(conn, repository)
                    return repository_id is not None and tag_db.remove(conn, repository_id, tag)

                if not await self.ctx.write(remove):
                    continue
            report.tags.append((repository, tag))
        if rules.get("untagged") and not report.dry_run:
            await self._untagged(repository, report)

    async def _untagged(self, repository: str, report: RetentionReport) -> None:
        cutoff = time.time()
        found = await self.ctx.read(lambda conn: gc_db.untagged_manifests(conn, cutoff))
        for manifest_id, name, digest, _ in found:
            if name != repository:
                continue

            def remove(conn: Connection, manifest_id: int = manifest_id) -> bool:
                return gc_db.delete_manifest_if_garbage(conn, manifest_id, cutoff)

            if await self.ctx.write(remove):
                report.manifests.append((name, digest))


class PullRecorder:
    """Pull times per tag, gathered in memory and written in one transaction now and then
    (a write per pull would cost the hot path)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._pending: dict[tuple[str, str], float] = {}

    def note(self, repository: str, tag: str) -> None:
        self._pending[(repository, tag)] = time.time()

    async def flush(self) -> int:
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        await self.ctx.write(lambda conn: life_db.record_pulls(conn, pending), announce=False)
        return len(pending)
