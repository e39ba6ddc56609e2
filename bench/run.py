#!/usr/bin/env python3
"""Dockyard vs CNCF Distribution, side by side, alternating rounds.

Starts each registry fresh (new data dir, free port on 127.0.0.1), pushes the test content over
the OCI API, measures, stops it, and alternates A, B, A, B ... for ``--rounds`` rounds. Prints
medians over rounds and the ratio A/B as a Markdown table. Stdlib only; load comes from
``wrk`` and ``curl`` and from a small raw-socket client that pushes with ``sendfile``.

See bench/README.md for how to run it and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

# ---------------------------------------------------------------------------------------------
# constants

MIB = 1024 * 1024
GB = 1e9  # GB/s in the table means 10**9 bytes per second
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REPO = "bench/app"
TAG = "latest"
SMALL_BLOB_SIZE = 4 * MIB
SMALL_BLOB_COUNT = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent

MEASUREMENTS = ("get-big", "get-4m", "manifest", "push-put", "push-chunked", "ceiling")
ALIASES = {"push": ("push-put", "push-chunked"), "get": ("get-big", "get-4m")}
KINDS = ("dockyard", "distribution")

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Better
    measurement: str
    digits: int = 2


METRICS: tuple[Metric, ...] = (
    Metric("get_big_gbps", "GET {big} blob, 1 stream", "GB/s", "higher", "get-big"),
    Metric("get_big_cpu", "  server CPU per GB ({big} GET)", "CPU-s/GB", "lower", "get-big"),
    Metric("get4m_c8_gbps", "GET 4 MiB blobs, 8 conns", "GB/s", "higher", "get-4m"),
    Metric("get4m_c8_cpu", "  server CPU per GB (4 MiB, c8)", "CPU-s/GB", "lower", "get-4m"),
    Metric("get4m_c32_gbps", "GET 4 MiB blobs, 32 conns", "GB/s", "higher", "get-4m"),
    Metric("get4m_c32_cpu", "  server CPU per GB (4 MiB, c32)", "CPU-s/GB", "lower", "get-4m"),
    Metric("man_get_rps", "manifest GET by tag, 64 conns", "req/s", "higher", "manifest", 0),
    Metric("man_get_p50", "  p50 latency", "ms", "lower", "manifest", 1),
    Metric("man_get_p99", "  p99 latency", "ms", "lower", "manifest", 1),
    Metric("man_get_cpu", "  server CPU per request", "CPU-ms/req", "lower", "manifest", 3),
    Metric("man_head_rps", "manifest HEAD by tag, 64 conns", "req/s", "higher", "manifest", 0),
    Metric("man_head_p50", "  p50 latency", "ms", "lower", "manifest", 1),
    Metric("man_head_p99", "  p99 latency", "ms", "lower", "manifest", 1),
    Metric("man_head_cpu", "  server CPU per request", "CPU-ms/req", "lower", "manifest", 3),
    Metric("push_put_gbps", "push {big} blob, one PUT", "GB/s", "higher", "push-put", 3),
    Metric("push_put_cpu", "  server CPU per GB (one PUT)", "CPU-s/GB", "lower", "push-put"),
    Metric(
        "push_chunk_gbps", "push {big} blob, {chunk} PATCHes", "GB/s", "higher", "push-chunked", 3
    ),
    Metric("push_chunk_cpu", "  server CPU per GB (PATCHes)", "CPU-s/GB", "lower", "push-chunked"),
)
BACKGROUND = Metric(
    "other_cpu_pct",
    "other processes' CPU during the session (noise)",
    "% of a core",
    "lower",
    "*",
    0,
)
PROCESSES_SEEN: dict[str, set[int]] = {}  # label -> sizes of the server's process tree
OTHER_CPU_LIMIT = 20.0  # % of one core; above it the session is flagged as noisy


class BenchError(Exception):
    """A measurement or a setup step failed; recorded as an anomaly, the run goes on."""


# ---------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free port whose next port is free too (Dockyard's sendfile port by default)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise BenchError("no free pair of ports")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fmt_size(n: int) -> str:
    if n % (1024 * MIB) == 0:
        return f"{n // (1024 * MIB)} GiB"
    return f"{n // MIB} MiB"


def proc_tree(root: int) -> list[int]:
    """PIDs of root and all its live descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of the process tree under root, reaped children (cutime+cstime) included."""
    ticks = 0
    for pid in proc_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state); utime=14, stime=15, cutime=16, cstime=17
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """CPU-seconds all processes ran on the machine (user+nice+system, plus steal), from
    /proc/stat. irq and softirq time are left out: this kernel accounts them apart, and on
    loopback they are mostly the benchmark's own traffic, which no process is charged for."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU of this process plus its reaped children (curl, wrk)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def wait_quiet(max_wait: float, threshold_pct: float = 15.0) -> float:
    """Wait until other processes use under threshold_pct of one core (1 s window); the last
    reading is returned. Gives up after max_wait seconds."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, c0 = system_busy_seconds(), own_cpu_seconds()
        time.sleep(1.0)
        pct = ((system_busy_seconds() - b0) - (own_cpu_seconds() - c0)) * 100.0
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct


def drop_dirty_pages() -> None:
    """Write back dirty pages so a previous write does not compete with the next measurement."""
    os.sync()


# ---------------------------------------------------------------------------------------------
# a tiny HTTP/1.1 client on a raw socket (keep-alive, bodies from bytes or sendfile)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class FileSlice:
    fd: int
    offset: int
    count: int


class HttpConn:
    def __init__(self, host: str, port: int, timeout: float = 300.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile: BinaryIO | None = None
        self._others: dict[tuple[str, int], HttpConn] = {}

    def other(self, host: str, port: int) -> HttpConn:
        """A kept-alive connection to another port, closed with this one."""
        if (host, port) not in self._others:
            self._others[(host, port)] = HttpConn(host, port, self.timeout)
        return self._others[(host, port)]

    def close(self) -> None:
        for other in self._others.values():
            other.close()
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._rfile = None

    def __enter__(self) -> HttpConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        if self._sock is None or self._rfile is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._rfile = sock.makefile("rb")
        return self._sock, self._rfile

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | FileSlice | None = None,
    ) -> Response:
        sock, rfile = self._connect()
        hdrs = {"Host": f"{self.host}:{self.port}", "User-Agent": "dockyard-bench"}
        if isinstance(body, bytes):
            hdrs["Content-Length"] = str(len(body))
        elif isinstance(body, FileSlice):
            hdrs["Content-Length"] = str(body.count)
        elif method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = "0"
        hdrs.update(headers or {})
        head = f"{method} {target} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        try:
            if isinstance(body, bytes):
                sock.sendall(head.encode() + body)
            else:
                sock.sendall(head.encode())
                if isinstance(body, FileSlice):
                    self._sendfile(sock, body)
            resp = self._read_response(rfile, method)
        except BaseException:
            self.close()
            raise
        if resp.header("connection").lower() == "close":
            self.close()
        return resp

    @staticmethod
    def _sendfile(sock: socket.socket, fs: FileSlice) -> None:
        # the socket has a timeout, so it is non-blocking underneath: wait for POLLOUT on EAGAIN
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        timeout_ms = int((sock.gettimeout() or 300.0) * 1000)
        offset, left = fs.offset, fs.count
        while left > 0:
            try:
                sent = os.sendfile(sock.fileno(), fs.fd, offset, min(left, 64 * MIB))
            except BlockingIOError:
                if not poller.poll(timeout_ms):
                    raise TimeoutError("sendfile: socket not writable in time") from None
                continue
            if sent == 0:
                raise BenchError("sendfile: file shorter than expected")
            offset += sent
            left -= sent

    @staticmethod
    def _read_response(rfile: BinaryIO, method: str) -> Response:
        while True:
            line = rfile.readline(65537)
            if not line:
                raise BenchError("server closed the connection without a response")
            parts = line.decode("latin-1").split(" ", 2)
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                hl = rfile.readline(65537).decode("latin-1")
                if hl in ("\r\n", "\n", ""):
                    break
                k, _, v = hl.partition(":")
                headers[k.strip().lower()] = v.strip()
            if 100 <= status < 200:
                continue  # interim response (100 Continue): read the real one
            break
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(rfile.read(size))
                rfile.readline()
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = rfile.read(int(headers["content-length"]))
        elif headers.get("connection", "").lower() == "close":
            body = rfile.read()
        return Response(status, headers, body)


def location_target(resp: Response) -> str:
    loc = resp.header("location")
    if not loc:
        raise BenchError(f"upload response {resp.status} has no Location header")
    return loc


def follow(conn: HttpConn, location: str) -> tuple[HttpConn, str]:
    """The connection and request target for an upload ``Location``: relative, or absolute
    on another port (Dockyard's data port), as real clients follow it."""
    parts = urllib.parse.urlsplit(location)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if not parts.netloc or (parts.hostname, parts.port) == (conn.host, conn.port):
        return conn, target
    return conn.other(parts.hostname or conn.host, parts.port or 80), target


def with_query(target: str, **params: str) -> str:
    sep = "&" if "?" in target else "?"
    return target + sep + urllib.parse.urlencode(params)


def expect(resp: Response, want: int | tuple[int, ...], what: str) -> None:
    wants = (want,) if isinstance(want, int) else want
    if resp.status not in wants:
        raise BenchError(f"{what}: HTTP {resp.status} (want {wants}): {resp.body[:300]!r}")


def start_upload(conn: HttpConn, repo: str) -> str:
    resp = conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect(resp, 202, f"POST /v2/{repo}/blobs/uploads/")
    return location_target(resp)


def push_bytes(conn: HttpConn, repo: str, data: bytes) -> str:
    digest = sha256_bytes(data)
    up, target = follow(conn, start_upload(conn, repo))
    resp = up.request(
        "PUT",
        with_query(target, digest=digest),
        {"Content-Type": "application/octet-stream"},
        data,
    )
    expect(resp, 201, f"PUT blob {digest[:19]}")
    return digest


def push_file_one_put(conn: HttpConn, repo: str, path: Path, digest: str) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        up, target = follow(conn, start_upload(conn, repo))
        resp = up.request(
            "PUT",
            with_query(target, digest=digest),
            {"Content-Type": "application/octet-stream"},
            FileSlice(f.fileno(), 0, size),
        )
    expect(resp, 201, "PUT ?digest= (one PUT, 1 body)")


def push_file_chunked(
    conn: HttpConn, repo: str, path: Path, digest: str, chunk: int, reconnect: bool = False
) -> None:
    """POST, PATCHes of ``chunk`` bytes, final PUT ?digest=. With ``reconnect`` every request
    goes on a new connection (so with several server workers, chunks land in different ones)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        up, target = follow(conn, start_upload(conn, repo))
        offset = 0
        while offset < size:
            if reconnect:
                up.close()
            n = min(chunk, size - offset)
            resp = up.request(
                "PATCH",
                target,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + n - 1}",
                },
                FileSlice(f.fileno(), offset, n),
            )
            expect(resp, 202, f"PATCH {offset}-{offset + n - 1}")
            up, target = follow(conn, location_target(resp))
            offset += n
        if reconnect:
            up.close()
        resp = up.request("PUT", with_query(target, digest=digest))
    expect(resp, 201, "final PUT ?digest= after PATCHes")


# ---------------------------------------------------------------------------------------------
# registries


@dataclass
class Server:
    kind: str
    label: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: {no_access_log}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class Options:
    rounds: int
    quick: bool
    only: tuple[str, ...]
    big_size: int
    get_big_reps: int
    duration: int
    chunk: int
    dockyard_workers: int | None
    dockyard_bin: str
    distribution_bin: str
    sides: tuple[str, str]
    workdir: Path
    keep: bool
    out: Path | None
    startup_timeout: float
    quiet_wait: float
    access_log: bool
    retry_noisy: int
    patch_new_conn: bool
    dockyard_no_sendfile: bool = False


def server_command(kind: str, opts: Options, data_dir: Path, port: int) -> list[str]:
    if kind == "distribution":
        cfg = data_dir.parent / f"{data_dir.name}.config.yml"
        no_access_log = "false" if opts.access_log else "true"
        cfg.write_text(
            DISTRIBUTION_CONFIG.format(root=data_dir, port=port, no_access_log=no_access_log)
        )
        return [opts.distribution_bin, "serve", str(cfg)]
    # --no-auth: compared with Distribution's default, which is an open registry too
    cmd = [
        opts.dockyard_bin,
        "serve",
        "--no-auth",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
    ]
    cmd += ["--log-level", "warning"]
    cmd += ["--access-log"] if opts.access_log else ["--no-access-log"]
    if opts.dockyard_workers is not None:
        cmd += ["--workers", str(opts.dockyard_workers)]
    if opts.dockyard_no_sendfile:  # large blob GETs sent by granian, without a redirect
        cmd = ["env", "DOCKYARD_SENDFILE_LISTEN=off", *cmd]
    return cmd


def wait_ready(server: Server, deadline: float) -> None:
    while True:
        if not server.alive():
            raise BenchError(
                f"{server.label} exited with code {server.proc.returncode} during startup;"
                f" log tail:\n{server.log_tail()}"
            )
        try:
            with HttpConn("127.0.0.1", server.port, timeout=2.0) as c:
                resp = c.request("GET", "/v2/")
            if resp.status in (200, 401):
                return
        except (OSError, BenchError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{server.label} not ready in time; log tail:\n{server.log_tail()}")
        time.sleep(0.05)


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group (its own session, so pgid == pid), then SIGKILL."""
    pid = server.proc.pid
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"{server.label} (pid {pid}) did not stop in 10 s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
    # workers left behind in the group, if any
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(kind: str, label: str, opts: Options, run_dir: Path) -> Iterator[Server]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=run_dir))
    port = free_port()
    cmd = server_command(kind, opts, data_dir, port)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=run_dir,
        )
    server = Server(kind, label, port, proc, log_path, data_dir)
    try:
        wait_ready(server, time.monotonic() + opts.startup_timeout)
        yield server
    finally:
        stop_server(server)
        shutil.rmtree(data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# test content


@dataclass
class Content:
    big_path: Path
    big_digest: str
    small: list[tuple[str, bytes]] = field(default_factory=list)
    config: bytes = b""
    manifest: bytes = b""

    @property
    def manifest_digest(self) -> str:
        return sha256_bytes(self.manifest)


def cached_random_file(workdir: Path, size: int) -> tuple[Path, str]:
    path = workdir / f"random-{size}.bin"
    meta = workdir / f"random-{size}.sha256"
    if path.exists() and meta.exists() and path.stat().st_size == size:
        return path, meta.read_text().strip()
    log(f"generating {fmt_size(size)} random file {path} ...")
    h = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    tmp.rename(path)
    digest = "sha256:" + h.hexdigest()
    meta.write_text(digest + "\n")
    return path, digest


def make_content(workdir: Path, size: int) -> Content:
    big_path, big_digest = cached_random_file(workdir, size)
    content = Content(big_path, big_digest)
    for _ in range(SMALL_BLOB_COUNT):
        data = os.urandom(SMALL_BLOB_SIZE)
        content.small.append((sha256_bytes(data), data))
    layer_digest, layer = content.small[0]
    content.config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    content.manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_bytes(content.config),
                "size": len(content.config),
            },
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        },
        indent=3,
    ).encode()
    return content


def setup_registry(server: Server, content: Content, need_big: bool, need_small: bool) -> None:
    with HttpConn("127.0.0.1", server.port) as conn:
        if need_big:
            push_file_one_put(conn, REPO, content.big_path, content.big_digest)
            resp = conn.request("HEAD", f"/v2/{REPO}/blobs/{content.big_digest}")
            expect(resp, 200, "HEAD big blob after push")
            got = resp.header("content-length")
            if got != str(content.big_path.stat().st_size):
                raise BenchError(f"HEAD big blob: Content-Length {got!r}")
        if need_small:
            for _digest, data in content.small:
                push_bytes(conn, REPO, data)
            push_bytes(conn, REPO, content.config)
            resp = conn.request(
                "PUT",
                f"/v2/{REPO}/manifests/{TAG}",
                {"Content-Type": OCI_MANIFEST},
                content.manifest,
            )
            expect(resp, 201, "PUT manifest")
            resp = conn.request("GET", f"/v2/{REPO}/manifests/{TAG}", {"Accept": OCI_MANIFEST})
            expect(resp, 200, "GET manifest by tag")
            if resp.body != content.manifest:
                raise BenchError("GET manifest by tag returned different bytes than were pushed")
            if resp.header("docker-content-digest") not in ("", content.manifest_digest):
                raise BenchError(
                    f"manifest Docker-Content-Digest {resp.header('docker-content-digest')}"
                    f" != {content.manifest_digest}"
                )


# ---------------------------------------------------------------------------------------------
# measurements

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%f,"max_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.mean,
    latency.max))
end
"""

WRK_ROTATE = r"""
local paths = {%s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""

WRK_METHOD = """
wrk.method = "%s"
"""


@dataclass
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float


def run_wrk(url: str, conns: int, duration: int, script: Path, headers: Sequence[str]) -> WrkResult:
    threads = min(2, conns)
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd += ["-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed ({proc.returncode}): {proc.stdout[-800:]} {proc.stderr[-800:]}"
        )
    d = json.loads(line.removeprefix("WRKJSON "))
    errors = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout") if d[k]}
    return WrkResult(
        duration_s=d["duration_us"] / 1e6,
        requests=int(d["requests"]),
        bytes=int(d["bytes"]),
        errors=errors,
        p50_ms=d["p50_us"] / 1e3,
        p99_ms=d["p99_us"] / 1e3,
    )


class _LoadProto(asyncio.Protocol):
    """One keep-alive connection sending the same bodiless request over and over (for HEAD,
    which wrk 4.1 cannot do: its parser waits for a body the size of Content-Length)."""

    def __init__(self, gen: _LoadGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.gen.stop_at:
            self.transport.close()
            return
        self.t0 = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        now = time.perf_counter()
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        status = int(head.split(b" ", 2)[1])
        self.gen.latencies.append(now - self.t0)
        if not 200 <= status < 300:
            self.gen.errors["status"] = self.gen.errors.get("status", 0) + 1
        if self.buf:
            self.gen.errors["body_on_head"] = self.gen.errors.get("body_on_head", 0) + 1
            self.buf = b""
        if b"connection: close" in head.lower():
            self.gen.errors["conn_close"] = self.gen.errors.get("conn_close", 0) + 1
            assert self.transport is not None
            self.transport.close()
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.gen.errors["read"] = self.gen.errors.get("read", 0) + 1
        self.gen.open_conns -= 1
        if self.gen.open_conns == 0 and not self.gen.done.done():
            self.gen.done.set_result(None)


@dataclass
class _LoadGen:
    request: bytes
    stop_at: float
    done: asyncio.Future[None]
    open_conns: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def _pyload(
    port: int, method: str, target: str, headers: Sequence[str], conns: int, duration: float
) -> WrkResult:
    loop = asyncio.get_running_loop()
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    gen = _LoadGen(request, time.perf_counter() + duration, loop.create_future())
    t0 = time.perf_counter()
    for _ in range(conns):
        try:
            await loop.create_connection(lambda: _LoadProto(gen), "127.0.0.1", port)
            gen.open_conns += 1
        except OSError:
            gen.errors["connect"] = gen.errors.get("connect", 0) + 1
    if gen.open_conns:
        await asyncio.wait_for(gen.done, timeout=duration + 30)
    elapsed = time.perf_counter() - t0
    lat = sorted(gen.latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else 0.0

    return WrkResult(elapsed, len(lat), 0, gen.errors, pct(0.50), pct(0.99))


def run_pyload(
    port: int, method: str, target: str, headers: Sequence[str], conns: int, duration: float
) -> WrkResult:
    try:
        return asyncio.run(_pyload(port, method, target, headers, conns, duration))
    except TimeoutError:
        raise BenchError(f"{method} load: connections did not finish in time") from None


Samples = dict[str, float]


@dataclass
class Session:
    server: Server
    content: Content
    opts: Options
    scripts: dict[str, Path]
    anomalies: list[str]
    round: int
    samples: Samples = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.anomalies.append(f"{self.server.label} round {self.round}: {what}")
        log(f"ANOMALY {self.server.label} round {self.round}: {what}")

    def check_alive(self, where: str) -> None:
        if not self.server.alive():
            raise BenchError(
                f"server exited (code {self.server.proc.returncode}) during {where};"
                f" log tail:\n{self.server.log_tail()}"
            )

    def get_big(self) -> None:
        size = self.content.big_path.stat().st_size
        url = f"{self.server.base}/v2/{REPO}/blobs/{self.content.big_digest}"
        total_t = 0.0
        cpu0 = self.server.cpu()
        for _ in range(self.opts.get_big_reps):
            proc = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-L",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download} %{time_total}",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                raise BenchError(f"curl GET big blob failed: {proc.stderr.strip()}")
            code, got, secs = proc.stdout.split()
            if code != "200" or int(got) != size:
                raise BenchError(f"GET big blob: HTTP {code}, {got} bytes (want {size})")
            total_t += float(secs)
        cpu = self.server.cpu() - cpu0
        gb = size * self.opts.get_big_reps / GB
        self.samples["get_big_gbps"] = gb / total_t
        self.samples["get_big_cpu"] = cpu / gb

    def get_4m(self) -> None:
        url = f"{self.server.base}/"
        for conns, key in ((8, "get4m_c8"), (32, "get4m_c32")):
            cpu0 = self.server.cpu()
            r = run_wrk(url, conns, self.opts.duration, self.scripts["rotate"], [])
            cpu = self.server.cpu() - cpu0
            self.check_alive(f"GET 4 MiB c{conns}")
            if r.errors:
                self.note(f"GET 4 MiB c{conns}: wrk errors {r.errors} of {r.requests} requests")
            if r.requests == 0:
                raise BenchError(f"GET 4 MiB c{conns}: no request completed")
            per_req = r.bytes / r.requests
            if per_req < SMALL_BLOB_SIZE:
                self.note(f"GET 4 MiB c{conns}: only {per_req:.0f} bytes per response")
            gb = r.requests * SMALL_BLOB_SIZE / GB
            self.samples[f"{key}_gbps"] = gb / r.duration_s
            self.samples[f"{key}_cpu"] = cpu / gb

    def manifest(self) -> None:
        url = f"{self.server.base}/v2/{REPO}/manifests/{TAG}"
        for method, key in (("GET", "man_get"), ("HEAD", "man_head")):
            accept = f"Accept: {OCI_MANIFEST}"
            cpu0 = self.server.cpu()
            if method == "GET":
                r = run_wrk(url, 64, self.opts.duration, self.scripts[method], [accept])
            else:
                target = f"/v2/{REPO}/manifests/{TAG}"
                r = run_pyload(self.server.port, "HEAD", target, [accept], 64, self.opts.duration)
            cpu = self.server.cpu() - cpu0
            self.check_alive(f"manifest {method}")
            if r.errors:
                self.note(f"manifest {method} c64: wrk errors {r.errors} of {r.requests} requests")
            if r.requests == 0:
                raise BenchError(f"manifest {method}: no request completed")
            if method == "GET" and r.bytes / r.requests < len(self.content.manifest):
                self.note(f"manifest GET: {r.bytes / r.requests:.0f} bytes per response")
            self.samples[f"{key}_rps"] = r.requests / r.duration_s
            self.samples[f"{key}_p50"] = r.p50_ms
            self.samples[f"{key}_p99"] = r.p99_ms
            self.samples[f"{key}_cpu"] = cpu * 1e3 / r.requests

    def push(self, chunked: bool) -> None:
        size = self.content.big_path.stat().st_size
        repo = "bench/push-chunked" if chunked else "bench/push-put"
        drop_dirty_pages()
        with HttpConn("127.0.0.1", self.server.port) as conn:
            cpu0 = self.server.cpu()
            t0 = time.perf_counter()
            if chunked:
                push_file_chunked(
                    conn,
                    repo,
                    self.content.big_path,
                    self.content.big_digest,
                    self.opts.chunk,
                    reconnect=self.opts.patch_new_conn,
                )
            else:
                push_file_one_put(conn, repo, self.content.big_path, self.content.big_digest)
            secs = time.perf_counter() - t0
            cpu = self.server.cpu() - cpu0
            resp = conn.request("HEAD", f"/v2/{repo}/blobs/{self.content.big_digest}")
            expect(resp, 200, f"HEAD blob in {repo} after push")
        key = "push_chunk" if chunked else "push_put"
        self.samples[f"{key}_gbps"] = size / GB / secs
        self.samples[f"{key}_cpu"] = cpu / (size / GB)


def run_session(
    kind: str,
    label: str,
    opts: Options,
    content: Content,
    run_dir: Path,
    scripts: dict[str, Path],
    anomalies: list[str],
    rnd: int,
) -> Samples:
    only = set(opts.only)
    with running_server(kind, label, opts, run_dir) as server:
        session = Session(server, content, opts, scripts, anomalies, rnd)
        t0 = time.perf_counter()
        setup_registry(
            server,
            content,
            need_big="get-big" in only,
            need_small=bool(only & {"get-4m", "manifest"}),
        )
        nprocs = len(proc_tree(server.proc.pid))
        PROCESSES_SEEN.setdefault(label, set()).add(nprocs)
        log(f"  {label}: setup took {time.perf_counter() - t0:.1f} s; {nprocs} server processes")
        drop_dirty_pages()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("get-big", session.get_big),
            ("get-4m", session.get_4m),
            ("manifest", session.manifest),
            ("push-put", lambda: session.push(chunked=False)),
            ("push-chunked", lambda: session.push(chunked=True)),
        ]
        if rnd % 2 == 0:
            # The second push of a session runs on a disk still busy with the first (the
            # virtual disk keeps writing after the guest's sync returns): alternate the
            # order between rounds, so that neither push is always second.
            steps[-2:] = reversed(steps[-2:])
        other_total, wall_total = 0.0, 0.0
        for name, fn in steps:
            if name not in only:
                continue
            for attempt in range(opts.retry_noisy + 1):
                busy0, server0, own0 = system_busy_seconds(), server.cpu(), own_cpu_seconds()
                t0 = time.monotonic()
                try:
                    fn()
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    session.note(f"{name} failed: {exc}")
                    break
                wall = time.monotonic() - t0
                if not server.alive():
                    break
                other = (system_busy_seconds() - busy0) - (server.cpu() - server0)
                other = max(0.0, other - (own_cpu_seconds() - own0))
                pct = other * 100.0 / wall
                log(f"  {label}: {name} took {wall:.1f} s (other processes {pct:.0f}% of a core)")
                if pct <= OTHER_CPU_LIMIT or attempt == opts.retry_noisy:
                    other_total += other
                    wall_total += wall
                    if pct > OTHER_CPU_LIMIT:
                        session.note(
                            f"{name}: noisy, other processes used {pct:.0f}% of a core"
                            + (f" (after {attempt} retries)" if attempt else "")
                        )
                    break
                busy = wait_quiet(opts.quiet_wait)
                log(f"  {label}: redoing {name} (background now {busy:.0f}% of a core)")
            if not server.alive():
                break
        if wall_total > 0:
            session.samples[BACKGROUND.key] = other_total * 100.0 / wall_total
        if not server.alive():
            session.note(
                f"server died (exit code {server.proc.returncode}); log tail:\n{server.log_tail()}"
            )
        else:
            tail = server.log_tail(8)
            if tail.strip():
                log(f"  {label}: server log tail:\n{tail}")
        return session.samples


def measure_ceiling(path: Path, out_dir: Path, durable: bool = False) -> float:
    """Python read + sha256 + write to another file on the same disk (page cache), one core;
    ``durable``: and on the disk, with an ``fdatasync`` before the clock stops (what a push
    costs a registry that makes blobs durable before it says they exist)."""
    drop_dirty_pages()
    size = path.stat().st_size
    out = out_dir / "ceiling.out"
    buf = bytearray(1 * MIB)
    view = memoryview(buf)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    with path.open("rb", buffering=0) as src, out.open("wb", buffering=0) as dst:
        while n := src.readinto(buf):
            h.update(view[:n])
            dst.write(view[:n])
        if durable:
            os.fdatasync(dst.fileno())
    secs = time.perf_counter() - t0
    out.unlink()
    return size / GB / secs


# ---------------------------------------------------------------------------------------------
# report


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def render(
    opts: Options,
    labels: tuple[str, str],
    results: dict[str, dict[str, list[float]]],
    ceiling: list[float],
    ceiling_durable: list[float],
    anomalies: list[str],
    argv: Sequence[str],
    started: str,
    elapsed: float,
    env: dict[str, str],
) -> str:
    a, b = labels
    lines = [
        f"# Dockyard benchmark: {a} vs {b}",
        "",
        f"- date: {started}, took {elapsed / 60:.1f} min",
        f"- command: `{shlex.join(argv)}`",
        f"- rounds: {opts.rounds} (alternating {a}, {b}); medians over rounds; ratio = {a} / {b}",
        f"- big blob {fmt_size(opts.big_size)}; 4 MiB set of {SMALL_BLOB_COUNT} blobs; "
        f"wrk {opts.duration} s per point; chunk {fmt_size(opts.chunk)}; "
        f"GB = 10^9 bytes",
    ]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    for lab in labels:
        if lab in PROCESSES_SEEN:
            counts = ", ".join(str(n) for n in sorted(PROCESSES_SEEN[lab]))
            lines.append(f"- {lab} process tree after setup (master + workers): {counts}")
    lines += [
        "",
        f"| measurement | unit | better | {a} | {b} | ratio {a}/{b} | {a} min-max | {b} min-max |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for m in METRICS:
        if m.measurement not in opts.only:
            continue
        xa, xb = results[a].get(m.key, []), results[b].get(m.key, [])
        ma = fmt(median(xa), m.digits) if xa else "n/a"
        mb = fmt(median(xb), m.digits) if xb else "n/a"
        ratio = f"{median(xa) / median(xb):.2f}" if xa and xb and median(xb) else "n/a"
        ra = f"{fmt(min(xa), m.digits)}..{fmt(max(xa), m.digits)}" if xa else ""
        rb = f"{fmt(min(xb), m.digits)}..{fmt(max(xb), m.digits)}" if xb else ""
        arrow = "↑" if m.better == "higher" else "↓"
        label = m.label.format(big=fmt_size(opts.big_size), chunk=fmt_size(opts.chunk))
        if label.startswith("  "):
            label = "&nbsp;&nbsp;" + label[2:]
        lines.append(f"| {label} | {m.unit} | {arrow} | {ma} | {mb} | {ratio} | {ra} | {rb} |")
    for m in (BACKGROUND,):
        xa, xb = results[a].get(m.key, []), results[b].get(m.key, [])
        if xa or xb:
            ma = fmt(median(xa), 0) if xa else "n/a"
            mb = fmt(median(xb), 0) if xb else "n/a"
            ra = f"{fmt(min(xa), 0)}..{fmt(max(xa), 0)}" if xa else ""
            rb = f"{fmt(min(xb), 0)}..{fmt(max(xb), 0)}" if xb else ""
            lines.append(f"| {m.label} | {m.unit} | ↓ | {ma} | {mb} | | {ra} | {rb} |")
    if ceiling:
        c, cd = median(ceiling), median(ceiling_durable)
        lines.append(
            f"| machine ceiling: read+sha256+write (python, 1 core) | GB/s | | {c:.2f} | | | "
            f"{min(ceiling):.2f}..{max(ceiling):.2f} | |"
        )
        lines.append(
            f"| &nbsp;&nbsp;the same + fdatasync (durable) | GB/s | | {cd:.2f} | | | "
            f"{min(ceiling_durable):.2f}..{max(ceiling_durable):.2f} | |"
        )
        for key, what in (("push_put_gbps", "one PUT"), ("push_chunk_gbps", "PATCHes")):
            pushed = {lab: median(results[lab][key]) for lab in labels if results[lab].get(key)}
            parts = [f"{lab} {gbps / c:.0%} ({gbps / cd:.0%})" for lab, gbps in pushed.items()]
            if parts:
                lines.append("")
                lines.append(
                    f"Push ({what}) relative to the ceiling (to the durable ceiling): "
                    f"{', '.join(parts)}."
                )
    lines += ["", "## Per-round samples", ""]
    for lab in labels:
        for m in (*METRICS, BACKGROUND):
            xs = results[lab].get(m.key)
            if xs:
                lines.append(f"- {lab} `{m.key}`: " + ", ".join(fmt(x, m.digits) for x in xs))
    if ceiling:
        lines.append("- ceiling: " + ", ".join(f"{x:.2f}" for x in ceiling))
        lines.append("- durable ceiling: " + ", ".join(f"{x:.2f}" for x in ceiling_durable))
    lines += ["", "## Anomalies", ""]
    # multi-line details (server log tails) stay inside their list item
    lines += [f"- {x}".replace("\n", "\n    ") for x in anomalies] if anomalies else ["none"]
    return "\n".join(lines).rstrip() + "\n"


def environment(opts: Options) -> dict[str, str]:
    env = {
        "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"python {platform.python_version()}",
    }
    try:
        v = subprocess.run(
            [opts.distribution_bin, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        env["distribution"] = (
            f"`{v}` (filesystem storage, delete enabled, log level warn, "
            f"access log {'on' if opts.access_log else 'off'}, in-memory blob descriptor cache)"
        )
    except OSError:
        pass
    if "dockyard" in opts.sides:
        w = opts.dockyard_workers
        env["dockyard"] = (
            f"`{opts.dockyard_bin} serve --log-level warning "
            f"--{'' if opts.access_log else 'no-'}access-log"
            + (f" --workers {w}`" if w is not None else "` (default workers)")
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            rev = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if rev.returncode == 0:
                env["dockyard"] += f", tree {rev.stdout.strip()}"
    env["clients"] = "curl (1 GiB GET), wrk -t2 (4 MiB GET, manifest), raw socket + sendfile (push)"
    return env


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        description="Dockyard vs CNCF Distribution benchmark (alternating rounds, medians).",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds of A,B (default 5; quick 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 1 round, 256 MiB big blob, 3 s wrk points",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="MEASUREMENT",
        help=f"run only these (repeat or comma-separate): {', '.join(MEASUREMENTS)}; "
        "aliases: push, get",
    )
    p.add_argument(
        "--dockyard-workers",
        type=int,
        default=None,
        help="pass --workers N to dockyard serve (default: the server's default)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    p.add_argument(
        "--a", dest="side_a", choices=KINDS, default="dockyard", help="side A (default dockyard)"
    )
    p.add_argument(
        "--b",
        dest="side_b",
        choices=KINDS,
        default="distribution",
        help="side B (default distribution); --a distribution --b distribution "
        "runs two Distribution instances (a calibration of the noise)",
    )
    p.add_argument("--big-mib", type=int, default=None, help="big blob size (default 1024)")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk point (default 10)")
    p.add_argument(
        "--get-big-reps", type=int, default=None, help="1 GiB GETs per round (default 3)"
    )
    p.add_argument("--chunk-mib", type=int, default=16, help="PATCH chunk size (default 16)")
    default_bin = REPO_ROOT / ".venv" / "bin" / "dockyard"
    p.add_argument(
        "--dockyard-bin", default=str(default_bin) if default_bin.exists() else "dockyard"
    )
    p.add_argument("--distribution-bin", default="docker-registry")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dockyard-bench",
        help="where the random file and data dirs go (default: $TMPDIR/dockyard-bench)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the workdir (the cached random file) for the next run",
    )
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=1,
        help="redo a step up to N times when other processes used over "
        f"{OTHER_CPU_LIMIT:.0f}%% of a core during it (default 1)",
    )
    p.add_argument(
        "--patch-new-conn",
        action="store_true",
        help="send each PATCH of the chunked push on a new connection (default: one "
        "keep-alive connection); with --dockyard-workers > 1 this exercises chunks landing "
        "in different worker processes",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="turn the access log on for both servers (default: off for both)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each session wait up to this many seconds for other processes to go idle",
    )
    p.add_argument(
        "--dockyard-no-sendfile",
        action="store_true",
        help="turn Dockyard's sendfile port off (by default blob GETs of 8 MiB and more are "
        "redirected to it, the listen port + 1)",
    )
    ns = p.parse_args(argv)

    only: list[str] = []
    for item in ns.only or list(MEASUREMENTS):
        for name in item.split(","):
            name = name.strip()
            if name in ALIASES:
                only.extend(ALIASES[name])
            elif name in MEASUREMENTS:
                only.append(name)
            elif name:
                p.error(f"unknown measurement {name!r}; choose from {', '.join(MEASUREMENTS)}")
    quick: bool = ns.quick
    rounds = ns.rounds if ns.rounds is not None else (1 if quick else 5)
    if rounds < 1:
        p.error("--rounds must be >= 1")
    big_mib = ns.big_mib if ns.big_mib is not None else (256 if quick else 1024)
    return Options(
        rounds=rounds,
        quick=quick,
        only=tuple(dict.fromkeys(only)),
        big_size=big_mib * MIB,
        get_big_reps=ns.get_big_reps if ns.get_big_reps is not None else (1 if quick else 3),
        duration=ns.duration if ns.duration is not None else (3 if quick else 10),
        chunk=ns.chunk_mib * MIB,
        dockyard_workers=ns.dockyard_workers,
        dockyard_bin=ns.dockyard_bin,
        distribution_bin=ns.distribution_bin,
        sides=(ns.side_a, ns.side_b),
        workdir=ns.workdir,
        keep=ns.keep,
        out=ns.out,
        startup_timeout=ns.startup_timeout,
        quiet_wait=ns.quiet_wait,
        access_log=ns.access_log,
        retry_noisy=ns.retry_noisy,
        dockyard_no_sendfile=ns.dockyard_no_sendfile,
        patch_new_conn=ns.patch_new_conn,
    )


def check_tools(opts: Options) -> None:
    needed = ["wrk", "curl"]
    needed += [opts.dockyard_bin] if "dockyard" in opts.sides else []
    needed += [opts.distribution_bin] if "distribution" in opts.sides else []
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}")


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    check_tools(opts)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # also when started in the background by a shell, which leaves SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kind_a, kind_b = opts.sides
    labels = (kind_a, kind_b) if kind_a != kind_b else (f"{kind_a}#1", f"{kind_b}#2")
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.monotonic()

    workdir_existed = opts.workdir.exists()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=opts.workdir))
    results: dict[str, dict[str, list[float]]] = {lab: {} for lab in labels}
    ceiling: list[float] = []
    ceiling_durable: list[float] = []
    anomalies: list[str] = []
    scripts = {
        "rotate": run_dir / "rotate.lua",
        "GET": run_dir / "get.lua",
    }
    interrupted = False
    content: Content | None = None
    try:
        content = make_content(opts.workdir, opts.big_size)
        paths = ", ".join(f'"/v2/{REPO}/blobs/{d}"' for d, _ in content.small)
        scripts["rotate"].write_text(WRK_ROTATE % paths + WRK_DONE)
        scripts["GET"].write_text(WRK_METHOD % "GET" + WRK_DONE)
        server_steps = [m for m in opts.only if m != "ceiling"]
        for rnd in range(1, opts.rounds + 1):
            if "ceiling" in opts.only:
                c = measure_ceiling(content.big_path, run_dir)
                ceiling.append(c)
                cd = measure_ceiling(content.big_path, run_dir, durable=True)
                ceiling_durable.append(cd)
                log(f"round {rnd}: ceiling read+hash+write {c:.2f} GB/s, +fdatasync {cd:.2f}")
            if not server_steps:
                continue
            for kind, label in zip(opts.sides, labels, strict=True):
                busy = wait_quiet(opts.quiet_wait)
                log(f"round {rnd}/{opts.rounds}: {label} (background CPU {busy:.0f}% of a core)")
                try:
                    samples = run_session(
                        kind, label, opts, content, run_dir, scripts, anomalies, rnd
                    )
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    anomalies.append(f"{label} round {rnd}: session failed: {exc}")
                    log(f"ANOMALY {label} round {rnd}: session failed: {exc}")
                    continue
                for k, v in samples.items():
                    results[label].setdefault(k, []).append(v)
                log(f"  {label}: " + ", ".join(f"{k}={v:.3g}" for k, v in samples.items()))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; servers stopped; reporting what was measured")
        anomalies.append("run interrupted before the last round finished")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if not opts.keep:
            for f in opts.workdir.glob("random-*"):
                f.unlink(missing_ok=True)
            if not workdir_existed:
                with contextlib.suppress(OSError):
                    opts.workdir.rmdir()

    report = render(
        opts,
        labels,
        results,
        ceiling,
        ceiling_durable,
        anomalies,
        sys.orig_argv if argv is None else ["bench/run.py", *args],
        started,
        time.monotonic() - t_start,
        environment(opts),
    )
    print(report)
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(report)
        log(f"wrote {opts.out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
