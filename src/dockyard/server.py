"""Starting the HTTP server: checks, migrations, then granian with N worker processes."""

from __future__ import annotations

import os
import shutil
import tempfile

from dockyard.config import Settings, is_loopback
from dockyard.db.engine import Database
from dockyard.http.app import SETTINGS_ENV


class ServeRefused(Exception):
    """The configuration would be unsafe or cannot work; the message says why."""


def check(settings: Settings) -> None:
    if not is_loopback(settings.host) and not settings.allow_open_registry:
        raise ServeRefused(
            f"refusing to listen on {settings.listen}: Dockyard has no authentication yet, so "
            "anyone who can reach that address could push and delete images. Listen on "
            "127.0.0.1, or pass --allow-open-registry (DOCKYARD_ALLOW_OPEN_REGISTRY=true) "
            "if an open registry on that address is what you want."
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServeRefused("--tls-cert and --tls-key must be given together")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ServeRefused(f"TLS file {path} does not exist")


def prepare(settings: Settings) -> None:
    """Create the data directory and bring the database schema up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        database.upgrade()
    finally:
        database.dispose()


def serve(settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.server import Server

    check(settings)
    prepare(settings)
    metrics_dir = tempfile.mkdtemp(prefix="dockyard-metrics-")
    os.environ["DOCKYARD_METRICS_DIR"] = metrics_dir
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    tls: dict[str, object] = {}
    if settings.tls_cert and settings.tls_key:
        tls = {
            "ssl_cert": settings.tls_cert.resolve(),
            "ssl_key": settings.tls_key.resolve(),
            "ssl_protocol_min": SSLProtocols.tls12,
        }
    try:
        Server(
            "dockyard.http.app:make_app",
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.RSGI,
            workers=settings.workers,
            loop=Loops.asyncio,
            http=HTTPModes.auto,
            websockets=False,
            backlog=2048,
            log_level=settings.log_level.lower(),  # type: ignore[arg-type]
            respawn_failed_workers=True,
            **tls,  # type: ignore[arg-type]
        ).serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
