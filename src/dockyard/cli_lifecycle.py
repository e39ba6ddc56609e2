"""``dockyard quota|immutable|usage`` — storage rules from the command line (straight on
the database; running servers see the change at once)."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import Connection

from dockyard.cli_identity import _echo_json, _read, _write, config_option, data_dir_option
from dockyard.db import lifecycle as life_db
from dockyard.registry.retention import PolicyInvalid, check_rules
from dockyard.registry.usage import usage


@click.group()
def quota() -> None:
    """Quotas per namespace: bytes stored and number of repositories."""


@quota.command("set")
@click.argument("namespace")
@click.option("--bytes", "max_bytes", type=int, help="bytes the namespace may store")
@click.option("--repositories", "max_repositories", type=int, help="repositories it may have")
@config_option
@data_dir_option
def quota_set(
    namespace: str,
    max_bytes: int | None,
    max_repositories: int | None,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Set (or, with neither limit, remove) the quota of NAMESPACE."""
    for value in (max_bytes, max_repositories):
        if value is not None and value < 0:
            raise click.BadParameter("limits are non-negative")

    def change(conn: Connection) -> None:
        life_db.set_quota(conn, namespace, max_bytes, max_repositories)

    _write(config, data_dir, change)
    click.echo(f"quota of {namespace}: bytes={max_bytes} repositories={max_repositories}")


@quota.command("list")
@config_option
@data_dir_option
def quota_list(config: Path | None, data_dir: Path | None) -> None:
    """Quotas and what each namespace uses."""
    _echo_json(_read(config, data_dir, lambda conn: usage(conn).namespaces))


@click.group()
def immutable() -> None:
    """Tag immutability rules: matching tags can be neither moved nor deleted."""


@immutable.command("add")
@click.argument("repository_pattern")
@click.argument("tag_pattern")
@config_option
@data_dir_option
def immutable_add(
    repository_pattern: str, tag_pattern: str, config: Path | None, data_dir: Path | None
) -> None:
    """Protect tags matching TAG_PATTERN in repositories matching REPOSITORY_PATTERN
    (shell globs, e.g. 'team/*' 'v*')."""
    rule_id = _write(
        config, data_dir, lambda conn: life_db.add_rule(conn, repository_pattern, tag_pattern)
    )
    click.echo(f"rule {rule_id}: {repository_pattern}:{tag_pattern} is immutable")


@immutable.command("list")
@config_option
@data_dir_option
def immutable_list(config: Path | None, data_dir: Path | None) -> None:
    """List the rules."""
    rules = _read(config, data_dir, life_db.list_rules)
    _echo_json(
        [{"id": r.id, "repository": r.repository_pattern, "tag": r.tag_pattern} for r in rules]
    )


@immutable.command("remove")
@click.argument("rule_id", type=int)
@config_option
@data_dir_option
def immutable_remove(rule_id: int, config: Path | None, data_dir: Path | None) -> None:
    """Remove a rule by its id."""
    if not _write(config, data_dir, lambda conn: life_db.remove_rule(conn, rule_id)):
        raise click.ClickException(f"no rule {rule_id}")
    click.echo(f"removed rule {rule_id}")


@click.command("usage")
@config_option
@data_dir_option
def usage_command(config: Path | None, data_dir: Path | None) -> None:
    """Storage used by the registry, each namespace and each repository."""
    _echo_json(_read(config, data_dir, lambda conn: usage(conn).to_json()))


@click.group()
def retention() -> None:
    """Retention policies: which tags to keep; the others are deleted when policies run."""


@retention.command("add")
@click.argument("repository_pattern")
@click.option("--keep-last-pushed", type=int, help="keep the N most recently pushed tags")
@click.option("--keep-last-pulled", type=int, help="keep the N most recently pulled tags")
@click.option("--keep-pushed-within-days", type=float, help="keep tags pushed within N days")
@click.option("--keep-pulled-within-days", type=float, help="keep tags pulled within N days")
@click.option("--include", multiple=True, help="tag patterns the policy applies to [*]")
@click.option("--exclude", multiple=True, help="tag patterns it never touches")
@click.option("--untagged", is_flag=True, help="also delete manifests nothing keeps")
@config_option
@data_dir_option
def retention_add(
    repository_pattern: str,
    keep_last_pushed: int | None,
    keep_last_pulled: int | None,
    keep_pushed_within_days: float | None,
    keep_pulled_within_days: float | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    untagged: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Add a policy for the repositories matching REPOSITORY_PATTERN (a shell glob)."""
    raw = {
        "keep_last_pushed": keep_last_pushed,
        "keep_last_pulled": keep_last_pulled,
        "keep_pushed_within_days": keep_pushed_within_days,
        "keep_pulled_within_days": keep_pulled_within_days,
        "include": list(include) or ["*"],
        "exclude": list(exclude),
        "untagged": untagged,
    }
    try:
        rules = check_rules({k: v for k, v in raw.items() if v is not None})
    except PolicyInvalid as exc:
        raise click.BadParameter(str(exc)) from None
    policy_id = _write(
        config, data_dir, lambda conn: life_db.add_policy(conn, repository_pattern, rules)
    )
    click.echo(f"policy {policy_id} for {repository_pattern}")


@retention.command("list")
@config_option
@data_dir_option
def retention_list(config: Path | None, data_dir: Path | None) -> None:
    """List the policies."""
    policies = _read(config, data_dir, life_db.list_policies)
    _echo_json([{"id": p.id, "repository": p.repository_pattern, **p.rules} for p in policies])


@retention.command("remove")
@click.argument("policy_id", type=int)
@config_option
@data_dir_option
def retention_remove(policy_id: int, config: Path | None, data_dir: Path | None) -> None:
    """Remove a policy by its id."""
    if not _write(config, data_dir, lambda conn: life_db.remove_policy(conn, policy_id)):
        raise click.ClickException(f"no policy {policy_id}")
    click.echo(f"removed policy {policy_id}")


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="list what would be deleted; change nothing")
@config_option
@data_dir_option
def retention_run(dry_run: bool, config: Path | None, data_dir: Path | None) -> None:
    """Apply every policy now and print what went (or would go)."""
    from dockyard.cli import run_on_registry
    from dockyard.config import load_settings

    settings = load_settings(config, data_dir=data_dir)
    report = run_on_registry(settings, lambda registry: registry.retention.run(dry_run=dry_run))
    _echo_json(report.to_json())


def register(main: click.Group) -> None:
    for command in (quota, immutable, retention, usage_command):
        main.add_command(command)
