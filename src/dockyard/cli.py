"""The ``dockyard`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from dockyard import __version__
from dockyard.config import Settings, load_settings


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
    help="require authentication (users, robots, Docker token auth) [off]",
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


def _register_identity_commands() -> None:
    from dockyard.cli_identity import register

    register(main)


_register_identity_commands()

if __name__ == "__main__":
    main()
