"""Start and stop the servers tests need: free ports, readiness polling with a deadline,
cleanup by PID."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Ports handed out in this test run, by every xdist worker: the kernel may give the same
# free port to two workers, and servers that bind with SO_REUSEPORT (granian, some Go
# servers) would then silently share it.
_PORTS_DIR = Path(tempfile.gettempdir()) / (
    f"dockyard-test-ports-{os.environ.get('PYTEST_XDIST_TESTRUNUID') or os.getpid()}"
)


def free_port() -> int:
    """A port free now and not handed out before in this run, with the port above it (a
    Dockyard started by ``dockyard serve`` serves its sendfile port there by default)."""
    _PORTS_DIR.mkdir(exist_ok=True)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        # (a port reserved without its neighbour stays unused: harmless)
        if port < 65535 and _port_bindable(port + 1) and _reserve(port) and _reserve(port + 1):
            return port
    raise RuntimeError("no free port that this test run has not used yet")


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> bool:
    try:
        os.close(os.open(_PORTS_DIR / str(port), os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


class ProcessDied(RuntimeError):
    """The process being waited for exited: waiting longer is pointless."""


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it returns True; fail after ``timeout`` seconds.

    Connection errors and the like count as "not yet"; ``ProcessDied`` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ProcessDied:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def kill_tree(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    """Signal the process group started for ``proc`` and wait for it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def dockyard_command() -> list[str]:
    exe = shutil.which("dockyard", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "dockyard"]


@dataclass
class Server:
    """A registry process under test."""

    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as clients name the registry."""
        return self.url.split("://", 1)[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self, route: str, name: str) -> list[dict[str, Any]]:
        """Dockyard's access-log entries of ``route`` in repository ``name``."""
        entries = []
        for line in self.log().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("route") == route and f"/v2/{name}/blobs/" in entry.get("path", ""):
                entries.append(entry)
        return entries

    def blob_get_statuses(self, name: str) -> list[int]:
        """The statuses of blob GETs in repository ``name``, from Dockyard's access log."""
        return [int(e["status"]) for e in self.access_log("blob", name) if e["method"] == "GET"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        kill_tree(self.proc, sig)


def start_dockyard(
    data_dir: Path,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    auth: bool = False,
) -> Server:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-{port}.log"
    args = [
        *dockyard_command(),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        *(["--auth"] if auth else []),
        *extra,
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    scheme = "https" if "--tls-cert" in extra else "http"
    server = Server(f"{scheme}://127.0.0.1:{port}", data_dir, proc, log_path, args)

    def ready() -> bool:
        if proc.poll() is not None:
            raise ProcessDied(f"dockyard exited with {proc.returncode}:\n{server.log()}")
        return httpx.get(f"{server.url}/readyz", timeout=2, verify=False).status_code == 200

    try:
        wait_until(ready, timeout, f"dockyard on port {port}")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def start_distribution(
    root: Path, port: int | None = None, timeout: float = 30, htpasswd: Path | None = None
) -> Server:
    """CNCF Distribution 2.8.2 (Debian ``docker-registry``), for comparison; with
    ``htpasswd`` (a bcrypt htpasswd file), it requires Basic credentials."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root.parent / f"{root.name}-config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        + (
            f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
            if htpasswd is not None
            else ""
        )
    )
    log_path = root.parent / f"{root.name}-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", root, proc, log_path)
    try:
        wait_until(
            lambda: (
                httpx.get(f"{server.url}/v2/", timeout=2).status_code
                == (401 if htpasswd is not None else 200)
            ),
            timeout,
            f"docker-registry on port {port}",
        )
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def running_dockyard(data_dir: Path, *extra: str, **kwargs: object) -> Iterator[Server]:
    server = start_dockyard(data_dir, *extra, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
