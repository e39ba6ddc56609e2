"""Starting the HTTP server: checks, migrations, then granian with N worker processes."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from dockyard.auth.management import ensure_first_admin
from dockyard.config import SENDFILE_AUTO, Settings, host_port, is_loopback, parse_listen
from dockyard.db.engine import Database


class ServeRefused(Exception):
    """The configuration would be unsafe or cannot work; the message says why."""


def check(settings: Settings) -> None:
    if not settings.auth and not is_loopback(settings.host) and not settings.allow_open_registry:
        raise ServeRefused(
            f"refusing to listen on {settings.listen} without authentication: anyone who can "
            "reach that address could push and delete images. Turn authentication on with "
            "--auth, listen on 127.0.0.1, or pass --allow-open-registry "
            "(DOCKYARD_ALLOW_OPEN_REGISTRY=true) if an open registry is what you want."
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServeRefused("--tls-cert and --tls-key must be given together")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ServeRefused(f"TLS file {path} does not exist")
    check_port_free(settings.host, settings.port)
    if settings.sendfile_listen not in (None, SENDFILE_AUTO):
        sendfile_host, sendfile_port = parse_listen(settings.sendfile_listen)
        if (sendfile_host, sendfile_port) == (settings.host, settings.port):
            raise ServeRefused("sendfile_listen must differ from listen")
        check_port_free(sendfile_host, sendfile_port)


def resolve_sendfile(settings: Settings) -> tuple[Settings, str]:
    """Settle ``sendfile_listen: auto``: the listen port + 1 on the same address, when the
    registry serves plain HTTP from the filesystem and that port is free; otherwise off.
    Returns the settings to run with and a line saying what was chosen."""
    if settings.sendfile_listen != SENDFILE_AUTO:
        return settings, ""
    why_not = ""
    if settings.tls_cert is not None:
        why_not = "TLS is on (encrypted bytes are copied through user space anyway)"
    elif settings.storage != "filesystem":
        why_not = f"blobs are in {settings.storage} (GETs are redirected to the store)"
    elif settings.port == 65535:
        why_not = "no port above the listen port"
    else:
        try:
            check_port_free(settings.host, settings.port + 1)
        except ServeRefused as exc:
            why_not = str(exc)
    if why_not:
        return settings.model_copy(update={"sendfile_listen": None}), (
            f"the data port (zero-copy blob downloads and uploads) is off: {why_not}"
        )
    side = host_port(settings.host, settings.port + 1)
    return settings.model_copy(update={"sendfile_listen": side}), (
        f"data port {side}: large blob GETs are redirected there and uploads sent there, "
        "zero-copy (sendfile_listen: off turns this off)"
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program (or another Dockyard) already listens on.

    granian binds with SO_REUSEPORT, which would let a second server silently share the
    port with the first; a plain bind fails on any port in use.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count; a socket
        # listening on the port still does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeRefused(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def prepare(settings: Settings) -> None:
    """Create the data directory and bring the database schema up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database.from_settings(settings)
    try:
        database.upgrade()
    finally:
        database.dispose()


def announce_first_admin(settings: Settings) -> None:
    """On a registry that checks logins itself and has no user yet, create ``admin`` with a
    generated password and print it once."""
    if not settings.auth or settings.token_issuer_mode != "internal":
        return
    database = Database.from_settings(settings)
    try:
        with database.writer.begin() as conn:
            password = ensure_first_admin(conn)
    finally:
        database.dispose()
    if password is not None:
        print(
            "\n  Dockyard created the first administrator. Log in with:\n"
            f"    user:     admin\n    password: {password}\n"
            "  This password is shown once; change it with "
            "`dockyard user passwd admin`.\n",
            file=sys.stderr,
            flush=True,
        )


# granian's own messages go to stderr, so that stdout carries only the JSON access log
_GRANIAN_LOGS_TO_STDERR = {
    "handlers": {
        "console": {
            "formatter": "generic",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "formatter": "access",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
    },
}


def stored_link_secret(keys_dir: Path) -> str:
    """The key that signs data-port links, made once and kept in the keys directory."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys_dir / "link-secret"
    if not path.exists():
        # written whole under a name of its own, then linked into place: a server starting
        # beside this one reads the whole key or makes its own attempt, never half a file
        temporary = keys_dir / f"link-secret.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another server made it first: use theirs
        finally:
            temporary.unlink()
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ServeRefused(f"{path} holds no usable key: remove it to make a new one")
    return secret


def serve(settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.server import Server

    check(settings)
    prepare(settings)
    announce_first_admin(settings)
    metrics_dir = tempfile.mkdtemp(prefix="dockyard-metrics-")
    os.environ["DOCKYARD_METRICS_DIR"] = metrics_dir
    settings, sendfile_choice = resolve_sendfile(settings)
    if sendfile_choice:
        print(f"  {sendfile_choice}", file=sys.stderr, flush=True)
    if settings.sendfile_listen is not None and settings.sendfile_secret is None:
        # every worker signs and checks links with the same key, kept across restarts
        # (an upload's link must still work after one)
        secret = stored_link_secret(settings.resolved_keys_dir)
        settings = settings.model_copy(update={"sendfile_secret": secret})
    from dockyard.http.app import SERVER_PID_ENV, SETTINGS_ENV

    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[SERVER_PID_ENV] = str(os.getpid())
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
            log_dictconfig=_GRANIAN_LOGS_TO_STDERR,
            respawn_failed_workers=True,
            **tls,  # type: ignore[arg-type]
        ).serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
