"""A server's process group as Linux shows it in /proc: its live members, killing all of
them with SIGKILL, and which member holds the server end of a given TCP connection."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from tests.support.processes import wait_until


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def kill_group_hard(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGKILL the whole group started for ``proc`` (master and workers) and wait until
    none of its processes is left running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    wait_until(lambda: not group_members(proc.pid), timeout, f"process group {proc.pid} to die")


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server-side socket of 127.0.0.1:client_port -> :server_port."""
    with open("/proc/net/tcp") as handle:
        lines = handle.readlines()[1:]
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server_port and remote_port == client_port and fields[9] != "0":
            return fields[9]
    return None


def connection_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the (still open) connection from
    ``client_port``: the worker process that accepted it."""
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None
