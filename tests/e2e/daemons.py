"""Private dockerd and containerd daemons for the e2e tests.

Each daemon gets its own directories and sockets (sockets live under a short /tmp path:
unix socket paths are limited to 108 bytes), runs in its own process group, and is stopped
by its PID. Readiness is polled with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.commands import require, run, run_binary
from tests.support.processes import kill_tree


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, name: str, probe: Callable[[], bool], timeout: float = 60) -> None:
        """Poll ``probe`` until it answers True; fail at once if the daemon exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.proc.returncode}:\n{self.log()[-8000:]}"
                )
            with contextlib.suppress(Exception):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{self.log()[-8000:]}")
            time.sleep(0.1)


@dataclass
class Dockerd(Daemon):
    config_dir: Path

    def docker(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["docker", "-H", f"unix://{self.socket}", *args],
            env={"DOCKER_CONFIG": str(self.config_dir), "DOCKER_CLI_HINTS": "false"},
            timeout=timeout,
            check=check,
        )


@dataclass
class Containerd(Daemon):
    def ctr(
        self, namespace: str, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["ctr", "--address", str(self.socket), "--namespace", namespace, *args],
            timeout=timeout,
            check=check,
        )

    def content(self, namespace: str, digest: str) -> bytes:
        """The bytes of a blob in the content store (``ctr content get``)."""
        base = ["ctr", "--address", str(self.socket), "--namespace", namespace]
        return run_binary([*base, "content", "get", digest])


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def running_dockerd(
    root: Path, insecure_registries: list[str], registry_mirrors: list[str] | None = None
) -> Iterator[Dockerd]:
    """A dockerd without networking (vfs storage, no bridge, no iptables); with
    ``registry_mirrors`` (URLs, written to its daemon.json as ``registry-mirrors``), it
    pulls Docker Hub images through them."""
    require("docker")
    require("runc")
    short = Path(tempfile.mkdtemp(prefix="dy-dockerd-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text(
        json.dumps({"registry-mirrors": registry_mirrors} if registry_mirrors else {}) + "\n"
    )
    (root / "cli").mkdir(exist_ok=True)
    socket = short / "docker.sock"
    args = [
        require("dockerd"),
        f"--data-root={root / 'data'}",
        f"--exec-root={short / 'exec'}",
        f"--pidfile={short / 'docker.pid'}",
        f"--config-file={root / 'daemon.json'}",
        f"--host=unix://{socket}",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--exec-opt=native.cgroupdriver=cgroupfs",
        "--log-level=warn",
        *(f"--insecure-registry={host}" for host in insecure_registries),
    ]
    daemon = Dockerd(_spawn(args, root / "dockerd.log"), socket, root / "dockerd.log", root / "cli")
    try:
        transport = httpx.HTTPTransport(uds=str(socket))
        with httpx.Client(transport=transport, base_url="http://docker", timeout=2) as client:
            daemon.wait_ready("dockerd", lambda: client.get("/_ping").text == "OK")
        yield daemon
    finally:
        kill_tree(daemon.proc, timeout=30)
        _stop_leftover(short / "exec" / "containerd" / "containerd.pid", str(short))
        shutil.rmtree(short, ignore_errors=True)


def _stop_leftover(pid_file: Path, marker: str) -> None:
    """Stop the containerd dockerd started for itself if dockerd did not (its own process
    group, so the kill of dockerd's group does not reach it). Checked by PID and command
    line, so an unrelated process that reused the PID is left alone."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if marker not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


@contextlib.contextmanager
def running_containerd(root: Path) -> Iterator[Containerd]:
    """A containerd with its own root, state, socket and config (CRI disabled)."""
    require("ctr")
    short = Path(tempfile.mkdtemp(prefix="dy-containerd-"))
    root.mkdir(parents=True, exist_ok=True)
    socket = short / "containerd.sock"
    config = root / "config.toml"
    config.write_text(
        CONTAINERD_CONFIG.format(
            root=root / "root", state=short / "state", socket=socket, opt=root / "opt"
        )
    )
    args = [require("containerd"), "--config", str(config), "--log-level", "warn"]
    daemon = Containerd(_spawn(args, root / "containerd.log"), socket, root / "containerd.log")
    try:
        daemon.wait_ready(
            "containerd",
            lambda: daemon.ctr("default", "version", timeout=10, check=False).returncode == 0,
        )
        yield daemon
    finally:
        kill_tree(daemon.proc, timeout=30)
        shutil.rmtree(short, ignore_errors=True)
