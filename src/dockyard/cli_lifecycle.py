"""``dockyard quota|immutable|usage`` — storage rules from the command line (straight on
the database; running servers see the change at once)."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import Connection

from dockyard.cli_identity import _echo_json, _read, _write, config_option, data_dir_option
from dockyard.db import lifecycle as life_db
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


def register(main: click.Group) -> None:
    main.add_command(quota)
    main.add_command(immutable)
    main.add_command(usage_command)
