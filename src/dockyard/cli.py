"""The ``dockyard`` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from dockyard import __version__
from dockyard.config import Settings, load_settings

T = TypeVar("T")


def _settings(config: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, **flags)
    except (ValidationError, ValueError, OSError) as exc:
        raise click.UsageError(f"invalid configuration: {exc}") from None


@click.group()
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """Dockyard: a container image registry."""


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True), help="YAML file")
@click.option("--listen", help="HOST:PORT to listen on [127.0.0.1:5000]")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), help="data directory [./dockyard-data]"
)
@click.option("--database-url", help="SQLAlchemy database URL [SQLite in the data directory]")
@click.option("--workers", type=int, help="server processes [one per CPU, at most 8]")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate (chain)")
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key")
@click.option(
    "--allow-open-registry",
    is_flag=True,
    default=None,
    help="allow listening on a non-loopback address without authentication",
)
@click.option(
    "--auth/--no-auth",
    default=None,
    help="require authentication (users, robots, Docker token auth) [on]; --no-auth: an "
    "open registry, as a bare registry:2",
)
@click.option(
    "--sendfile-listen",
    help="HOST:PORT of the data port (zero-copy blob downloads and uploads), `auto` (the "
    "listen port + 1 on plain HTTP) or `off` [auto]",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log/--no-access-log", default=None, help="one JSON line per request")
def serve(config: Path | None, **flags: Any) -> None:
    """Serve the registry (SQLite + filesystem under the data directory by default)."""
    from dockyard.server import ServeRefused
    from dockyard.server import serve as run

    settings = _settings(config, **flags)
    try:
        run(settings)
    except ServeRefused as exc:
        click.echo(f"dockyard: {exc}", err=True)
        sys.exit(2)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True))
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--database-url")
def upgrade(config: Path | None, **flags: Any) -> None:
    """Apply pending schema migrations."""
    from dockyard.server import prepare

    prepare(_settings(config, **flags))
    click.echo("database is up to date")


def run_on_registry(settings: Settings, job: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Bring the schema up to date, open the registry, run ``job`` on it, close it."""
    import asyncio

    from dockyard.registry.service import Registry
    from dockyard.server import prepare

    prepare(settings)
    registry = Registry.from_settings(settings)
    try:
        return asyncio.run(job(registry))
    finally:
        registry.close()


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True))
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--database-url")
@click.option("--dry-run", is_flag=True, help="report what would be freed; change nothing")
@click.option("--grace-seconds", type=int, help="keep anything younger [gc_grace_seconds]")
@click.option(
    "--delete-untagged/--keep-untagged",
    default=None,
    help="also collect manifests nothing keeps [gc_delete_untagged]",
)
def gc(
    config: Path | None,
    dry_run: bool,
    grace_seconds: int | None,
    delete_untagged: bool | None,
    **flags: Any,
) -> None:
    """Collect garbage online (the registry keeps serving) and print what was freed."""
    import json

    from dockyard.registry.gc import GarbageCollector, GcPolicy

    settings = _settings(config, **flags)
    policy = GcPolicy(
        grace_seconds=settings.gc_grace_seconds if grace_seconds is None else grace_seconds,
        delete_untagged=settings.gc_delete_untagged if delete_untagged is None else delete_untagged,
    )
    report = run_on_registry(
        settings, lambda registry: GarbageCollector(registry.ctx, policy).collect(dry_run=dry_run)
    )
    click.echo(json.dumps(report.to_json(), indent=2))


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True))
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--database-url")
@click.option("--once", is_flag=True, help="run each job once and exit")
def worker(config: Path | None, once: bool, **flags: Any) -> None:
    """Background jobs: stale upload purge, retention every retention_interval_seconds,
    garbage collection every gc_interval_seconds (retention first: what it untags, GC frees)."""
    import asyncio

    from dockyard.server import prepare
    from dockyard.workers import run_worker

    settings = _settings(config, **flags)
    prepare(settings)
    asyncio.run(run_worker(settings, once=once))


def _register_identity_commands() -> None:
    from dockyard.cli_identity import register
    from dockyard.cli_lifecycle import register as register_lifecycle

    register(main)
    register_lifecycle(main)


def _register_import_command() -> None:
    from dockyard.cli_import import register

    register(main)


_register_identity_commands()
_register_import_command()

if __name__ == "__main__":
    main()
