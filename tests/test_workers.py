"""Several worker processes share one registry: an upload started in one worker is
continued and finished in others, and what one worker stores the others serve at once.

Every request goes over a fresh connection, so the kernel hands each to whichever worker
accepts it. The access log does not say which process answered, so each test finds out
from /proc which worker holds the server end of the connection, and asserts that requests
of one upload really were served by different processes.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.data_dir import bad_blob_files
from tests.support.oci_client import (
    OCI_MANIFEST,
    Image,
    image_from_blobs,
    random_image,
    sha256_digest,
)
from tests.support.process_group import connection_owner, group_members
from tests.support.processes import Server, start_dockyard, wait_until

pytestmark = pytest.mark.timeout(120)

WORKERS = 3


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    pid: int  # the worker process that served the request


@dataclass
class Workers:
    server: Server
    port: int
    pids: list[int]

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        """One request on a new connection; which worker served it is read from /proc
        while the connection is still open."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.connect()
            assert conn.sock is not None
            client_port = conn.sock.getsockname()[1]
            conn.request(method, path, body=body or None, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            pid = connection_owner(self.pids, self.port, client_port)
            assert pid is not None, f"no worker holds the connection from port {client_port}"
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, answer_headers, data, pid)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    data_dir = tmp_path_factory.mktemp("workers") / "data"
    server = start_dockyard(data_dir, "--workers", str(WORKERS))
    try:
        # /readyz answered from one worker; the others may still be starting
        def workers_up() -> bool:
            return len(group_members(server.proc.pid)) == 1 + WORKERS

        wait_until(workers_up, 30, f"{WORKERS} worker processes")
        members = group_members(server.proc.pid)
        pids = [pid for pid in members if pid != server.proc.pid]
        assert len(pids) == WORKERS, f"expected {WORKERS} workers, found {members}"
        yield Workers(server, int(server.url.rsplit(":", 1)[1]), pids)
    finally:
        server.stop()


@dataclass(frozen=True)
class ChunkedUpload:
    digest: str
    pids: list[int]  # POST, each PATCH, PUT, in order


def chunked_upload(workers: Workers, repository: str, data: bytes, chunks: int) -> ChunkedUpload:
    digest = sha256_digest(data)
    answer = workers.request("POST", f"/v2/{repository}/blobs/uploads/")
    assert answer.status == 202, answer
    location = answer.headers["location"]
    pids = [answer.pid]
    step = -(-len(data) // chunks)
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        answer = workers.request(
            "PATCH",
            location,
            chunk,
            {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
            },
        )
        assert answer.status == 202, (answer.status, answer.body[:300])
        assert answer.headers["range"] == f"0-{start + len(chunk) - 1}"
        location = answer.headers["location"]
        pids.append(answer.pid)
    separator = "&" if "?" in location else "?"
    answer = workers.request("PUT", f"{location}{separator}digest={digest}")
    assert answer.status == 201, (answer.status, answer.body[:300])
    pids.append(answer.pid)
    return ChunkedUpload(digest, pids)


def test_chunked_uploads_continue_across_worker_processes(workers: Workers) -> None:
    repository = "workers/chunks"
    blobs = [os.urandom(256 * 1024 + n) for n in range(30)]

    def upload(data: bytes) -> ChunkedUpload:
        return chunked_upload(workers, repository, data, chunks=4)

    with ThreadPoolExecutor(3) as pool:
        uploads = list(pool.map(upload, blobs))

    for data, done in zip(blobs, uploads, strict=True):
        answer = workers.request("GET", f"/v2/{repository}/blobs/{done.digest}")
        assert answer.status == 200
        assert answer.body == data

    # Cross-process continuation surely happened, on every step of an upload.
    served_by = Counter(pid for done in uploads for pid in done.pids)
    assert set(served_by) == set(workers.pids), served_by
    patch_moved = sum(
        a != b for done in uploads for a, b in zip(done.pids[1:-2], done.pids[2:-1], strict=True)
    )
    put_moved = sum(done.pids[-1] != done.pids[-2] for done in uploads)
    started_elsewhere = sum(done.pids[0] != done.pids[1] for done in uploads)
    assert patch_moved > 0 and put_moved > 0 and started_elsewhere > 0, (
        patch_moved,
        put_moved,
        started_elsewhere,
    )
    assert bad_blob_files(workers.server.data_dir) == []


def test_monolithic_put_after_post_in_another_worker(workers: Workers) -> None:
    """POST in one worker, the whole blob in the final PUT in another."""
    repository = "workers/monolithic"
    moved = 0
    for _ in range(12):
        data = os.urandom(100_000)
        digest = sha256_digest(data)
        post = workers.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert post.status == 202
        location = post.headers["location"]
        separator = "&" if "?" in location else "?"
        put = workers.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert put.status == 201, (put.status, put.body[:300])
        moved += put.pid != post.pid
        assert workers.request("GET", f"/v2/{repository}/blobs/{digest}").body == data
    assert moved > 0


def test_manifest_visible_from_every_worker_at_once(workers: Workers) -> None:
    repository = "workers/manifests"
    readers: set[int] = set()
    for number in range(8):
        image = random_image(repository, f"t{number}", (3000,))
        for blob in image.blobs:
            answer = workers.request(
                "POST",
                f"/v2/{repository}/blobs/uploads/?digest={sha256_digest(blob)}",
                blob,
                {"Content-Type": "application/octet-stream"},
            )
            assert answer.status == 201
        put = workers.request(
            "PUT",
            f"/v2/{repository}/manifests/{image.tag}",
            image.manifest,
            {"Content-Type": OCI_MANIFEST},
        )
        assert put.status == 201, (put.status, put.body[:300])
        # Straight after the 201, every worker serves the manifest, by tag and by digest.
        for reference in (image.tag, image.digest) * 3:
            answer = workers.request(
                "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
            )
            assert answer.status == 200, (answer.pid, put.pid, answer.body[:300])
            assert answer.body == image.manifest
            if answer.pid != put.pid:
                readers.add(answer.pid)
        tags = workers.request("GET", f"/v2/{repository}/tags/list")
        assert image.tag in tags.body.decode()
    assert readers, "no manifest was read from a worker other than the one that stored it"


def requests_counted(workers: Workers) -> float:
    """``dockyard_http_requests_total{route="base",method="GET",status="200"}`` as scraped."""
    answer = workers.request("GET", "/metrics")
    assert answer.status == 200
    total = 0.0
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            if sample.name == "dockyard_http_requests_total" and sample.labels == {
                "route": "base",
                "method": "GET",
                "status": "200",
            }:
                total += sample.value
    return total


def test_metrics_add_up_across_workers(workers: Workers) -> None:
    """Each worker counts its own requests; /metrics, whichever worker answers it, reports
    the sum over all of them (other workers' counts may take a second to arrive: poll)."""
    before = requests_counted(workers)  # GET /v2/ is asked by this test only
    served_by = Counter(workers.request("GET", "/v2/").pid for _ in range(30))
    assert len(served_by) > 1, served_by
    counted: list[float] = []

    def all_counted() -> bool:
        counted.append(requests_counted(workers) - before)
        return counted[-1] >= 30

    try:
        wait_until(all_counted, 10, "/metrics to count 30 requests")
    except TimeoutError:
        pytest.fail(f"/metrics counted {counted[-1:]} of 30 requests served by {served_by}")
    assert counted[-1] == 30


def from_every_worker(workers: Workers, method: str, path: str, times: int = 2) -> list[Answer]:
    """Repeat a request on fresh connections until every worker has answered it ``times``
    times (so that any per-process cache has been filled and then used)."""
    answers: list[Answer] = []
    served: Counter[int] = Counter()
    while any(served[pid] < times for pid in workers.pids):
        assert len(answers) < 40 * len(workers.pids), (
            f"requests did not reach every worker: {served}"
        )
        answer = workers.request(method, path, headers={"Accept": OCI_MANIFEST})
        served[answer.pid] += 1
        answers.append(answer)
    return answers


def test_changes_are_seen_by_every_worker_at_once(workers: Workers) -> None:
    """Each worker has read the state before a change; right after the change is
    acknowledged, every worker answers with the new state: no worker serves a stale
    manifest, tag, 404 or deleted blob."""
    repository = "workers/changes"
    layer = os.urandom(5000)
    first = image_from_blobs(repository, "moving", b'{"n":1}', (layer,))
    second = image_from_blobs(repository, "moving", b'{"n":2}', (layer,))
    for blob in (layer, first.config, second.config):
        answer = workers.request(
            "POST", f"/v2/{repository}/blobs/uploads/?digest={sha256_digest(blob)}", blob
        )
        assert answer.status == 201
    tag_path = f"/v2/{repository}/manifests/moving"

    def put(image: Image) -> None:
        answer = workers.request("PUT", tag_path, image.manifest, {"Content-Type": OCI_MANIFEST})
        assert answer.status == 201, (answer.status, answer.body[:300])

    def statuses(answers: list[Answer]) -> list[tuple[int, int]]:
        return [(a.pid, a.status) for a in answers]

    for method in ("GET", "HEAD"):
        answers = from_every_worker(workers, method, tag_path)
        assert {a.status for a in answers} == {404}, statuses(answers)

    put(first)
    for method in ("GET", "HEAD"):
        answers = from_every_worker(workers, method, tag_path)
        assert {a.status for a in answers} == {200}, statuses(answers)
        assert {a.headers["docker-content-digest"] for a in answers} == {first.digest}
    assert {a.body for a in answers if a.status == 200} <= {b""}  # HEAD has no body
    assert {a.body for a in from_every_worker(workers, "GET", tag_path)} == {first.manifest}

    put(second)
    answers = from_every_worker(workers, "GET", tag_path)
    assert {a.body for a in answers} == {second.manifest}, statuses(answers)

    deleted = workers.request("DELETE", f"/v2/{repository}/manifests/{second.digest}")
    assert deleted.status == 202
    for path in (tag_path, f"/v2/{repository}/manifests/{second.digest}"):
        answers = from_every_worker(workers, "GET", path)
        assert {a.status for a in answers} == {404}, (path, statuses(answers))
    answers = from_every_worker(workers, "GET", f"/v2/{repository}/manifests/{first.digest}")
    assert {a.body for a in answers} == {first.manifest}

    blob_path = f"/v2/{repository}/blobs/{sha256_digest(second.config)}"
    answers = from_every_worker(workers, "GET", blob_path)
    assert {a.body for a in answers} == {second.config}
    assert workers.request("DELETE", blob_path).status == 202
    for method in ("GET", "HEAD"):
        answers = from_every_worker(workers, method, blob_path)
        assert {a.status for a in answers} == {404}, statuses(answers)


def test_access_log_lines_stay_whole_across_workers(workers: Workers) -> None:
    """Workers write the access log to one stdout: every request still gets exactly one
    whole JSON line, however the writes of the processes interleave."""
    marker = f"logged-{os.urandom(4).hex()}"
    paths = [f"/v2/{marker}/n{number}/tags/list" for number in range(90)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda path: workers.request("GET", path), paths))
    assert {a.status for a in answers} == {404}
    assert len({a.pid for a in answers}) > 1

    def logged() -> list[str]:
        return [line for line in workers.server.log().splitlines() if marker in line]

    wait_until(lambda: len(logged()) >= len(paths), 10, "an access-log line per request")
    entries = [json.loads(line) for line in logged()]
    assert sorted(entry["path"] for entry in entries) == sorted(paths)
    assert {(entry["method"], entry["status"]) for entry in entries} == {("GET", 404)}
