"""Retention policies and pull times."""

from __future__ import annotations

import time

import pytest

from dockyard.db import lifecycle as life_db
from dockyard.db.lifecycle import TagRow
from dockyard.oci.errors import ManifestUnknown
from dockyard.registry.retention import PolicyInvalid, check_rules, tags_to_delete
from dockyard.registry.service import Registry
from tests.registry.test_core import push_image, run

DAY = 86400.0
NOW = 1_000 * DAY


def tag(name: str, pushed_days_ago: float, pulled_days_ago: float | None = None) -> TagRow:
    pulled = None if pulled_days_ago is None else NOW - pulled_days_ago * DAY
    return TagRow(name, 0, NOW - pushed_days_ago * DAY, pulled)


TAGS = [
    tag("v1", 40, 1),
    tag("v2", 30),
    tag("v3", 20, 10),
    tag("v4", 10),
    tag("v5", 1),
    tag("latest", 50),
]


@pytest.mark.parametrize(
    ("rules", "deleted"),
    [
        ({"keep_last_pushed": 2}, ["latest", "v1", "v2", "v3"]),
        ({"keep_last_pushed": 2, "exclude": ["latest"]}, ["v1", "v2", "v3"]),
        ({"keep_last_pulled": 1}, ["latest", "v2", "v3", "v4", "v5"]),
        ({"keep_pushed_within_days": 15}, ["latest", "v1", "v2", "v3"]),
        ({"keep_pulled_within_days": 5, "keep_last_pushed": 1}, ["latest", "v2", "v3", "v4"]),
        ({"keep_last_pushed": 0, "include": ["v[12]"]}, ["v1", "v2"]),
        ({"include": ["*"]}, []),  # no keep rule: keep everything
    ],
)
def test_which_tags_go(rules: dict[str, object], deleted: list[str]) -> None:
    assert tags_to_delete(check_rules(rules), TAGS, NOW) == deleted


@pytest.mark.parametrize(
    "rules",
    [[], {"keep_last_pushed": -1}, {"keep_last_pushed": True}, {"bogus": 1}, {"include": "v*"}],
)
def test_invalid_rules(rules: object) -> None:
    with pytest.raises(PolicyInvalid):
        check_rules(rules)


def test_policy_run_with_pull_times(registry: Registry) -> None:
    async def scenario() -> None:
        for i in range(4):
            await push_image(registry, "team/app", f"v{i}", f"layer {i}".encode())
            time.sleep(0.01)  # distinct push times; not synchronisation
        registry.pulls.note("team/app", "v0")
        assert await registry.pulls.flush() == 1
        with registry.ctx.db.writer.begin() as conn:
            life_db.add_policy(
                conn,
                "team/*",
                check_rules({"keep_last_pushed": 1, "keep_last_pulled": 1, "untagged": True}),
            )
        registry.ctx.changes.bump()
        dry = await registry.retention.run(dry_run=True)
        assert [t for _, t in dry.tags] == ["v1", "v2"]
        assert (await registry.manifests.get("team/app", "v1")).content
        report = await registry.retention.run()
        assert [t for _, t in report.tags] == ["v1", "v2"]
        assert len(report.manifests) == 2  # their manifests, now untagged
        for gone in ("v1", "v2"):
            with pytest.raises(ManifestUnknown):
                await registry.manifests.get("team/app", gone)
        for kept in ("v0", "v3"):
            assert (await registry.manifests.get("team/app", kept)).content

    run(scenario())


def test_immutable_tags_survive_retention(registry: Registry) -> None:
    async def scenario() -> None:
        for i in range(3):
            await push_image(registry, "prod/app", f"v{i}", f"p{i}".encode())
        with registry.ctx.db.writer.begin() as conn:
            life_db.add_rule(conn, "prod/*", "v0")
            life_db.add_policy(conn, "prod/*", check_rules({"keep_last_pushed": 1}))
        registry.ctx.changes.bump()
        report = await registry.retention.run()
        assert [t for _, t in report.tags] == ["v1"]
        assert [t for _, t in report.kept_immutable] == ["v0"]

    run(scenario())
