"""``dockyard import`` — migrate a CNCF Distribution storage root into Dockyard."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True), help="YAML file")
@click.option("--data-dir", type=click.Path(path_type=Path), help="data directory")
@click.option("--database-url", help="SQLAlchemy database URL [SQLite in the data directory]")
@click.option("--dry-run", is_flag=True, help="report what would be imported; change nothing")
@click.option(
    "--repository",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="import only repositories matching this glob ('team/*'; repeatable)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--quiet", is_flag=True, help="no progress lines on stderr")
def import_command(
    source: Path,
    config: Path | None,
    dry_run: bool,
    patterns: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Import the repositories, tags, manifests and blobs of a CNCF Distribution
    (registry:2) filesystem storage root SOURCE (its `rootdirectory`). Blob files are
    hard-linked into a filesystem store on the same filesystem, else copied. Exits 1 when
    a blob or manifest was skipped as corrupt. See docs/migration.md."""
    from dockyard.cli import _settings, run_on_registry
    from dockyard.registry.importer import (
        DistributionRoot,
        Importer,
        ImportReport,
        SourceInvalid,
    )

    try:
        root = DistributionRoot(source)
    except SourceInvalid as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings(config, **flags)

    def progress(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    async def job(registry: Any) -> ImportReport:
        importer = Importer(
            registry.ctx, root, dry_run=dry_run, patterns=patterns, progress=progress
        )
        return await importer.run()

    try:
        report = run_on_registry(settings, job)
    except OSError as exc:  # the store failed (disk full ...): what was imported stays
        click.echo(f"dockyard import: {exc}; run the import again to continue", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.summary():
            click.echo(line)
    if report.corrupt:
        click.echo(f"dockyard: {report.corrupt} corrupt item(s) skipped", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(import_command)
