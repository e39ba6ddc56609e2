"""``dockyard serve`` as an operator meets it: defaults, refusing an open registry,
configuration from a YAML file, the environment and flags (in that order of precedence),
TLS, the answer to a TLS probe on the plain port, health and readiness, Prometheus
metrics, and the JSON access log on stdout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.oci_client import OciClient, explain, sha256_digest
from tests.support.process_group import group_members
from tests.support.processes import (
    ProcessDied,
    dockyard_command,
    free_port,
    kill_tree,
    start_dockyard,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

# The tests set DOCKYARD_* themselves; nothing from the outer environment leaks in. They
# exercise the open registry (`auth: false`, as a bare registry:2), whose listen-address
# refusal is part of what they test; authentication has its own tests (tests/auth_e2e).
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
BASE_ENV["DOCKYARD_AUTH"] = "false"
_names = itertools.count()


@dataclass
class Launched:
    """A ``dockyard`` process with its stdout and stderr in separate files."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise ProcessDied(
                    f"dockyard exited with {self.proc.returncode}:\n{self.stdout()}{self.stderr()}"
                )
            return httpx.get(f"{url}/readyz", timeout=2, verify=False).status_code == 200

        wait_until(ready, timeout, f"dockyard at {url}")

    def stop(self) -> None:
        kill_tree(self.proc)


def launch(
    logs: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Launched:
    name = f"dockyard-{next(_names)}"
    stdout_path, stderr_path = logs / f"{name}.out", logs / f"{name}.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [*dockyard_command(), *args],
            stdout=out,
            stderr=err,
            cwd=cwd,
            env={**BASE_ENV, **(env or {})},
            start_new_session=True,
        )
    return Launched(proc, stdout_path, stderr_path)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """``launch`` for one test; every process it started is stopped afterwards."""
    started: list[Launched] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Launched:
        launched = launch(tmp_path, *args, cwd=cwd or tmp_path, env=env)
        started.append(launched)
        return launched

    try:
        yield start
    finally:
        for launched in started:
            launched.stop()


def run_cli(
    *commands: tuple[list[str], dict[str, str]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``dockyard ARGS`` with extra environment ``ENV`` for each command, all at once, to
    completion (for commands that must refuse and exit)."""
    procs = [
        subprocess.Popen(
            [*dockyard_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**BASE_ENV, **env},
            start_new_session=True,
        )
        for args, env in commands
    ]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for other in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(other.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{proc.args!r} did not exit:\n{stdout}{stderr}")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def listening_hosts(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4, hex as in /proc)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                host, _, port_hex = fields[1].rpartition(":")
                if fields[3] == "0A" and int(port_hex, 16) == port:
                    hosts.add(host)
    return hosts


LOOPBACK_V4 = "0100007F"
ANY_V4 = "00000000"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not listening_hosts(port)


# defaults


def test_defaults_listen_on_loopback_5000_with_data_in_cwd(
    tmp_path: Path, launcher: Callable[..., Launched]
) -> None:
    """Without flags: 127.0.0.1:5000 (only when 5000 and 5001 are free here, else just
    --listen), the download port above it, and ./dockyard-data."""
    if port_is_free(5000) and port_is_free(5001):  # 5001: the download port
        port, args = 5000, ["serve"]
    else:
        port = free_port()
        args = ["serve", "--listen", f"127.0.0.1:{port}"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = launcher(*args, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(url)
    assert listening_hosts(port) == {LOOPBACK_V4}
    # the zero-copy download port, on the same loopback address
    wait_until(lambda: listening_hosts(port + 1) == {LOOPBACK_V4}, 10, "the sendfile port")
    # one worker process per CPU, at most 8
    workers = min(os.cpu_count() or 1, 8)
    wait_until(lambda: len(group_members(server.proc.pid)) >= 1 + workers, 10, "the workers")
    assert len(group_members(server.proc.pid)) == 1 + workers
    assert (cwd / "dockyard-data" / "dockyard.db").is_file()
    with OciClient(url) as client:
        digest = client.push_blob("defaults/app", b"default data dir", chunk_size=0)
    assert (cwd / "dockyard-data" / "blobs" / "sha256" / digest[7:9] / digest[7:]).is_file()
    assert sorted(p.name for p in cwd.iterdir()) == ["dockyard-data"]


# refusing an open registry, and other configurations that cannot work


def test_open_listen_address_refused(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "open.yml"
    config.write_text(f"listen: 0.0.0.0:{port}\n")
    attempts: list[tuple[list[str], dict[str, str]]] = [
        (["--listen", f"0.0.0.0:{port}"], {}),
        (["--listen", f"[::]:{port}"], {}),
        (["--listen", f":{port}"], {}),  # Distribution's ``addr: :5000`` habit
        ([], {"DOCKYARD_LISTEN": f"0.0.0.0:{port}"}),
        (["--config", str(config)], {}),
    ]
    results = run_cli(
        *((["serve", "--data-dir", str(tmp_path / "data"), *args], env) for args, env in attempts),
        cwd=tmp_path,
    )
    for (args, env), result in zip(attempts, results, strict=True):
        assert result.returncode == 2, (args, env, result.stdout, result.stderr)
        assert "refusing to listen on" in result.stderr, result.stderr
        assert f":{port}" in result.stderr and "--allow-open-registry" in result.stderr
        assert "Traceback" not in result.stderr
        assert not listening_hosts(port)


@pytest.mark.parametrize(
    ("args", "config_text", "message"),
    [
        (["--tls-cert", "cert.pem"], None, "--tls-cert and --tls-key must be given together"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], None, "does not exist"),
        (["--workers", "0"], None, "workers"),
        (["--listen", "nowhere"], None, "listen must be HOST:PORT"),
        ([], "listen: 127.0.0.1:5999\ncolour: blue\n", "colour"),
        ([], "- just\n- a list\n", "mapping"),
    ],
    ids=["tls-half", "tls-missing", "workers-0", "listen-bad", "unknown-key", "not-mapping"],
)
def test_unusable_configuration_is_a_usage_error(
    tmp_path: Path, args: list[str], config_text: str | None, message: str
) -> None:
    (tmp_path / "cert.pem").write_text("not really a certificate\n")
    if config_text is not None:
        (tmp_path / "dockyard.yml").write_text(config_text)
        args = [*args, "--config", "dockyard.yml"]
    [result] = run_cli((["serve", "--data-dir", "data", *args], {}), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_open_listen_address_allowed_on_request(
    tmp_path: Path, launcher: Callable[..., Launched]
) -> None:
    by_flag, by_env = free_port(), free_port()
    first = launcher(
        "serve",
        "--listen",
        f"0.0.0.0:{by_flag}",
        "--allow-open-registry",
        "--data-dir",
        str(tmp_path / "a"),
    )
    second = launcher(
        "serve",
        "--data-dir",
        str(tmp_path / "b"),
        env={"DOCKYARD_LISTEN": f"0.0.0.0:{by_env}", "DOCKYARD_ALLOW_OPEN_REGISTRY": "true"},
    )
    first.wait_ready(f"http://127.0.0.1:{by_flag}")
    second.wait_ready(f"http://127.0.0.1:{by_env}")
    assert listening_hosts(by_flag) == {ANY_V4}
    assert listening_hosts(by_env) == {ANY_V4}


# configuration sources and their precedence: flags > environment > file > defaults


def test_configuration_precedence(tmp_path: Path, launcher: Callable[..., Launched]) -> None:
    ports = {name: free_port() for name in ("file", "env", "flag", "file2", "env2", "env3")}
    dirs = {name: tmp_path / name for name in ("file", "env", "flag", "file2", "env3")}

    file_only = tmp_path / "file-only.yml"
    file_only.write_text(f"listen: 127.0.0.1:{ports['file']}\ndata_dir: {dirs['file']}\n")
    # Keys may be spelt with dashes, as the flags are.
    layered = tmp_path / "layered.yml"
    layered.write_text(
        f"listen: 127.0.0.1:{ports['file2']}\ndata-dir: {dirs['file2']}\nworkers: 2\n"
    )

    from_file = launcher("serve", "--config", str(file_only))
    env_over_file = launcher(
        "serve",
        "--config",
        str(layered),
        env={"DOCKYARD_LISTEN": f"127.0.0.1:{ports['env']}"},
    )
    flags_over_all = launcher(
        "serve",
        "--config",
        str(layered),
        "--listen",
        f"127.0.0.1:{ports['flag']}",
        "--data-dir",
        str(dirs["flag"]),
        "--workers",
        "1",
        env={
            "DOCKYARD_LISTEN": f"127.0.0.1:{ports['env2']}",
            "DOCKYARD_DATA_DIR": str(dirs["env"]),
            "DOCKYARD_WORKERS": "3",
        },
    )
    env_only = launcher(
        "serve",
        env={
            "DOCKYARD_LISTEN": f"127.0.0.1:{ports['env3']}",
            "DOCKYARD_DATA_DIR": str(dirs["env3"]),
            "DOCKYARD_ACCESS_LOG": "false",
        },
    )
    from_file.wait_ready(f"http://127.0.0.1:{ports['file']}")
    env_over_file.wait_ready(f"http://127.0.0.1:{ports['env']}")
    flags_over_all.wait_ready(f"http://127.0.0.1:{ports['flag']}")
    env_only.wait_ready(f"http://127.0.0.1:{ports['env3']}")

    # File only: its port and its data directory.
    assert (dirs["file"] / "dockyard.db").is_file()
    # The environment's listen wins over the file's; the file's data dir and workers stay.
    assert not listening_hosts(ports["file2"])
    assert (dirs["file2"] / "dockyard.db").is_file()
    wait_until(lambda: len(group_members(env_over_file.proc.pid)) >= 1 + 2, 10, "2 workers")
    assert len(group_members(env_over_file.proc.pid)) == 1 + 2
    # Flags win over the environment and the file, key by key.
    assert not listening_hosts(ports["env2"])
    assert (dirs["flag"] / "dockyard.db").is_file()
    assert not dirs["env"].exists()
    assert len(group_members(flags_over_all.proc.pid)) == 1 + 1  # not 3 from the environment
    # The environment alone; DOCKYARD_ACCESS_LOG=false turns the access log off.
    assert (dirs["env3"] / "dockyard.db").is_file()
    assert not (tmp_path / "dockyard-data").exists()

    marker = "/v2/precedence-marker/tags/list"
    for name, server in (("file", from_file), ("env3", env_only)):
        assert httpx.get(f"http://127.0.0.1:{ports[name]}{marker}").status_code == 404
        server.stop()  # a clean stop flushes stdout
    assert marker in from_file.stdout()
    assert marker not in env_only.stdout()


# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with openssl."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = start_dockyard(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert server.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=server.url, verify=trusted) as client:
            response = client.get("/v2/")
            assert response.status_code == 200
            assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            blob = os.urandom(70_000)
            digest = sha256_digest(blob)
            pushed = client.post(
                "/v2/tls/app/blobs/uploads/", params={"digest": digest}, content=blob
            )
            assert pushed.status_code == 201, explain(pushed)
            assert client.get(f"/v2/tls/app/blobs/{digest}").content == blob
        # Without trusting the certificate, verification fails: it really is TLS with it.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/", verify=ssl.create_default_context())
        # no plain-HTTP download port beside a TLS registry
        assert "(zero-copy blob downloads and uploads) is off: TLS is on" in server.log()
        assert not listening_hosts(int(server.url.rsplit(":", 1)[1]) + 1)
    finally:
        server.stop()


# the plain server: probes, health, metrics, access log


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launched, str]]:
    where = tmp_path_factory.mktemp("plain")
    port = free_port()
    # One worker, so that /metrics is exact at once (other workers' counts arrive within a
    # second; test_workers checks that they add up).
    server = launch(
        where,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(where / "data"),
        "--workers",
        "1",
        cwd=where,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_ready(url)
        yield server, url
    finally:
        server.stop()


def client_hello() -> bytes:
    """The first flight of a real TLS handshake, as a client sends it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a TLS handshake record
    return hello


def test_plain_port_answers_tls_probe_with_http_400(plain: tuple[Launched, str]) -> None:
    """docker tries HTTPS first; its fallback to HTTP needs an HTTP status line back."""
    _, url = plain
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client_hello())
        received = b""
        while b"\r\n" not in received:
            data = sock.recv(4096)
            if not data:
                break
            received += data
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), received[:200]
    assert b" 400" in status_line, status_line


def test_health_and_readiness(plain: tuple[Launched, str]) -> None:
    _, url = plain
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_by_route_method_status(plain: tuple[Launched, str]) -> None:
    _, url = plain
    before = scrape(url)
    for _ in range(3):
        assert httpx.get(f"{url}/v2/").status_code == 200
    assert httpx.get(f"{url}/v2/metrics/none/manifests/latest").status_code == 404
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "dockyard_http_requests_total"
    exported = sorted({name for name, _ in after})
    assert requests in exported, f"no request counters in /metrics, only {exported}"
    assert delta(requests, route="base", method="GET", status="200") == 3
    assert delta(requests, route="manifest", method="GET", status="404") == 1
    latency = "dockyard_http_request_duration_seconds"
    assert delta(f"{latency}_count", route="base", method="GET") == 3
    assert delta(f"{latency}_bucket", route="base", method="GET", le="+Inf") == 3
    assert any(name == f"{latency}_bucket" for name, _ in after)


def test_metrics_count_bytes_in_and_out(plain: tuple[Launched, str]) -> None:
    _, url = plain
    blob = os.urandom(123_457)
    before = scrape(url)
    with OciClient(url) as client:
        digest = client.push_blob("metrics/bytes", blob, chunk_size=0)
        assert client.get_blob("metrics/bytes", digest) == blob
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    exported = sorted({name for name, _ in after})
    assert "dockyard_http_request_bytes_total" in exported, f"only {exported} in /metrics"
    assert delta("dockyard_http_request_bytes_total", route="uploads") == len(blob)
    assert delta("dockyard_http_response_bytes_total", route="blob") == len(blob)


def test_metrics_uploads_in_progress(plain: tuple[Launched, str]) -> None:
    _, url = plain
    gauge = "dockyard_uploads_in_progress"
    blob = os.urandom(1000)
    with OciClient(url) as client:
        start = value(scrape(url), gauge)
        location = client.start_upload("metrics/uploads")
        assert value(scrape(url), gauge) == start + 1
        cancelled = client.start_upload("metrics/uploads")
        assert value(scrape(url), gauge) == start + 2
        assert client.finish_upload(location, sha256_digest(blob), blob).status_code == 201
        assert value(scrape(url), gauge) == start + 1
        assert client.http.delete(cancelled).status_code == 204
        assert value(scrape(url), gauge) == start


def access_log_lines(stdout: str, marker: str) -> list[dict[str, object]]:
    lines = []
    for line in stdout.splitlines():
        if marker in line and line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_one_json_access_log_line_per_request_on_stdout(plain: tuple[Launched, str]) -> None:
    server, url = plain
    marker = f"accesslog-{os.urandom(4).hex()}"
    zero = "sha256:" + "0" * 64
    with httpx.Client(base_url=url) as client:
        sent = [
            ("GET", f"/v2/{marker}/tags/list", client.get(f"/v2/{marker}/tags/list")),
            ("HEAD", f"/v2/{marker}/blobs/{zero}", client.head(f"/v2/{marker}/blobs/{zero}")),
            ("POST", f"/v2/{marker}/blobs/uploads/", client.post(f"/v2/{marker}/blobs/uploads/")),
        ]
        upload = sent[-1][2].headers["Location"]  # a link to the data port
        sent.append(("DELETE", urlsplit(upload).path, client.delete(upload)))
    assert [r.status_code for _, _, r in sent] == [404, 404, 202, 204]

    wait_until(
        lambda: len(access_log_lines(server.stdout(), marker)) >= len(sent),
        10,
        "the access log lines",
    )
    lines = access_log_lines(server.stdout(), marker)
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        (method, path, response.status_code) for method, path, response in sent
    ]
    assert marker not in server.stderr()


# a port that is already taken


def brief(stderr: str) -> str:
    """The gist of a long stderr: its size, first line and lines that name an error."""
    lines = stderr.splitlines()
    errors = [line for line in lines if "Error" in line or "error" in line][:5]
    return f"{len(lines)} lines of stderr; first: {lines[:1]}; errors: {errors}"


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        [result] = run_cli(
            (["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", "data"], {}), cwd=tmp_path
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, brief(result.stderr)
    assert "in use" in result.stderr.lower() and str(port) in result.stderr, brief(result.stderr)


def test_second_server_on_a_taken_port_refuses_to_start(
    tmp_path: Path, launcher: Callable[..., Launched]
) -> None:
    """Starting a second registry on the port of a running one (a common slip) must fail,
    not silently split the port's connections between two registries with different data."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = launcher("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "a"))
    first.wait_ready(url)
    second = launcher("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "b"))

    def settled() -> bool:
        if second.proc.poll() is not None:
            return True
        httpx.get(f"{url}/readyz", timeout=2)  # lands on whichever server accepts it
        return '"path":"/readyz"' in second.stdout()

    wait_until(settled, 30, "the second server to exit (or to start serving)")
    assert second.proc.poll() is not None, (
        f"a second dockyard (data dir b) started on port {port} while the first (data dir a) "
        "serves it; the kernel now splits requests between the two registries"
    )
    assert second.proc.returncode != 0
    assert "in use" in second.stderr().lower(), brief(second.stderr())
    for _ in range(10):
        assert httpx.get(f"{url}/v2/").status_code == 200
    assert first.proc.poll() is None
