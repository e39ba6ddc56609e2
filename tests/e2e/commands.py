"""Running client binaries: fail loudly when one is missing or a command fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import pytest

# Debian package that provides each client binary (CI installs them all).
PACKAGES = {
    "skopeo": "skopeo",
    "podman": "podman",
    "buildah": "buildah",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "tar": "tar",
    "gzip": "gzip",
}


def require(binary: str) -> str:
    """The path of ``binary``; fail the test (never skip) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        package = PACKAGES.get(binary, binary)
        pytest.fail(
            f"{binary} is not installed: the e2e suite needs the Debian package {package}",
            pytrace=False,
        )
    return path


class CommandFailed(AssertionError):
    pass


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; raise with both streams if it fails."""
    require(args[0])
    proc = subprocess.run(
        list(args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    result = subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise CommandFailed(describe(result))
    return result


def run_binary(args: Sequence[str], *, timeout: float = 300) -> bytes:
    """Run a command whose standard output is binary data; raise if it fails."""
    require(args[0])
    proc = subprocess.run(list(args), capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise CommandFailed(f"command {' '.join(args)} exited with {proc.returncode}\n{stderr}")
    return proc.stdout


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command {' '.join(map(str, result.args))} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-8000:]}"
    )
