"""Online garbage collection against real processes: a `dockyard serve` with two workers,
`dockyard gc` and `dockyard worker` as separate processes on the same data directory, real
SQLite, plain HTTP clients.

- the stress test of issue 5: clients push (shared base layers, multi-arch indexes,
  artifacts with a subject), move and delete tags, delete manifests, while collectors run
  over and over; afterwards every surviving image pulls back byte for byte and everything a
  client still has a tag on is there;
- kill -9 in the middle of a collection leaves a consistent registry and the next run
  finishes the job;
- `--dry-run` reports exactly what a real run then deletes and changes nothing;
- `dockyard worker` collects (once or on its schedule) and purges stale uploads, logging
  JSON lines;
- and, at the end, what these tests found: content a push sends again must be protected by
  the grace period like new content; many uploads of one blob finishing at once must not
  wedge a server process.

Nothing waits on a fixed sleep: processes are waited for, and states are polled with a
deadline. `DOCKYARD_TEST_GC_ROUNDS=20` makes the stress test a longer soak.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.data_dir import bad_blob_files, check_database
from tests.support.oci_client import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    explain,
    sha256_digest,
    with_digest,
)
from tests.support.processes import (
    ProcessDied,
    Server,
    dockyard_command,
    kill_tree,
    running_dockyard,
    start_dockyard,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
SIGNATURE = "application/vnd.dockyard.test.signature"
EMPTY = b"{}"

# the server's access log is not needed here, and a quiet server leaves the CPU to the test
QUIET = {"DOCKYARD_ACCESS_LOG": "false"}


# --- content as a client pushes it ---------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """A manifest as the client pushed it, with the blobs and child manifests it needs."""

    repository: str
    manifest: bytes
    media_type: str = OCI_MANIFEST
    blobs: tuple[bytes, ...] = ()
    children: tuple[Content, ...] = ()

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}

    def all_blobs(self) -> set[str]:
        own = {sha256_digest(blob) for blob in self.blobs}
        return own.union(*(child.all_blobs() for child in self.children))


def _blob_descriptor(data: bytes, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def image(repository: str, layers: Iterable[bytes], arch: str = "amd64") -> Content:
    """An OCI image with a config that makes its digest new every time."""
    layers = tuple(layers)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"nonce": os.urandom(8).hex()}},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(x) for x in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob_descriptor(config, OCI_CONFIG),
            "layers": [_blob_descriptor(layer, OCI_LAYER) for layer in layers],
        },
        indent=1,
    ).encode()
    return Content(repository, manifest, OCI_MANIFEST, (config, *layers))


def index(repository: str, children: Iterable[Content]) -> Content:
    children = tuple(children)
    entries = []
    for child in children:
        config = json.loads(child.blobs[0])
        platform = {"os": config["os"], "architecture": config["architecture"]}
        entries.append({**child.descriptor, "platform": platform})
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=1
    ).encode()
    return Content(repository, manifest, OCI_INDEX, (), children)


def artifact(subject: Content, payload: bytes) -> Content:
    """A signature-like artifact whose subject is ``subject`` (a referrer)."""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE,
            "config": _blob_descriptor(EMPTY, OCI_EMPTY),
            "layers": [_blob_descriptor(payload, "application/octet-stream")],
            "subject": subject.descriptor,
        }
    ).encode()
    return Content(subject.repository, manifest, OCI_MANIFEST, (EMPTY, payload))


# --- a client that never accepts a 5xx ----------------------------------------------------


class ServerError(AssertionError):
    pass


class Client:
    """Plain HTTP against the registry; every request on a new connection, so that the
    kernel spreads them over the server's worker processes. Any 5xx fails at once."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 500:
            raise ServerError(explain(response))
        return response

    def upload(self, repository: str, data: bytes, style: str = "monolithic") -> None:
        """One blob upload, finished with 201 (a monolithic POST, POST + PUT, or chunked)."""
        digest = sha256_digest(data)
        octets = {"Content-Type": "application/octet-stream"}
        if style == "monolithic":
            response = self.request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                params={"digest": digest},
                content=data,
                headers=octets,
            )
            assert response.status_code == 201, explain(response)
            return
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert response.status_code == 202, explain(response)
        location = response.headers["Location"]
        body = data
        if style == "chunked" and len(data) > 1:
            half = len(data) // 2
            response = self.request(
                "PATCH",
                location,
                content=data[:half],
                headers={**octets, "Content-Range": f"0-{half - 1}"},
            )
            assert response.status_code == 202, explain(response)
            location = response.headers["Location"]
            body = data[half:]
        separator = "&" if "?" in location else "?"
        response = self.request(
            "PUT", f"{location}{separator}digest={digest}", content=body, headers=octets
        )
        assert response.status_code == 201, explain(response)

    def put_manifest(self, content: Content, reference: str) -> bool:
        """True when stored; False when the registry refuses it with MANIFEST_BLOB_UNKNOWN
        (something it references was collected: the client pushes again)."""
        response = self.request(
            "PUT",
            f"/v2/{content.repository}/manifests/{reference}",
            content=content.manifest,
            headers={"Content-Type": content.media_type},
        )
        if response.status_code == 201:
            assert response.headers["Docker-Content-Digest"] == content.digest
            return True
        assert response.status_code == 400, explain(response)
        codes = [error["code"] for error in response.json()["errors"]]
        assert codes == ["MANIFEST_BLOB_UNKNOWN"], explain(response)
        return False

    def pull(self, repository: str, reference: str) -> bytes:
        """The manifest, its children and every blob, each checked against its digest."""
        response = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT}
        )
        assert response.status_code == 200, explain(response)
        body = response.content
        digest = sha256_digest(body)
        assert response.headers["Docker-Content-Digest"] == digest
        if reference.startswith("sha256:"):
            assert digest == reference, f"{repository}@{reference} serves other bytes"
        document = json.loads(body)
        for child in document.get("manifests", []):
            self.pull(repository, child["digest"])
        descriptors = [document["config"], *document["layers"]] if "config" in document else []
        for descriptor in descriptors:
            blob = self.request("GET", f"/v2/{repository}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200, explain(blob)
            assert sha256_digest(blob.content) == descriptor["digest"], (
                f"{repository}@{descriptor['digest']} is corrupt"
            )
            assert len(blob.content) == descriptor["size"]
        return body

    def referrers(self, repository: str, subject: str) -> set[str]:
        response = self.request("GET", f"/v2/{repository}/referrers/{subject}")
        assert response.status_code == 200, explain(response)
        return {entry["digest"] for entry in response.json()["manifests"]}

    def listing(self, path: str, key: str) -> list[str]:
        response = self.request("GET", path, params={"n": 10_000})
        assert response.status_code == 200, explain(response)
        return list(response.json().get(key) or [])


# --- the data directory at rest -------------------------------------------------------------


def blob_rows(data_dir: Path) -> set[str]:
    conn = sqlite3.connect(data_dir / "dockyard.db", timeout=60)
    try:
        return {row[0] for row in conn.execute("SELECT digest FROM blobs")}
    finally:
        conn.close()


def blob_files(data_dir: Path) -> set[str]:
    found = set()
    root = data_dir / "blobs"
    for algorithm in os.scandir(root):
        for prefix in os.scandir(algorithm.path):
            found.update(
                f"{algorithm.name}:{name}"
                for name in os.listdir(prefix.path)
                if not name.startswith(".")
            )
    return found


def count_blob_files(data_dir: Path) -> int:
    total = 0
    for algorithm in os.scandir(data_dir / "blobs"):
        for prefix in os.scandir(algorithm.path):
            total += len(os.listdir(prefix.path))
    return total


# what garbage collection may change (not, say, the pull times the server records)
COLLECTED_TABLES = (
    "repositories",
    "blobs",
    "repository_blobs",
    "manifests",
    "manifest_references",
    "tags",
    "uploads",
)


def snapshot(data_dir: Path) -> tuple[list[tuple[Any, ...]], list[tuple[str, int, int]]]:
    """The rows of the tables GC works on, and every blob and upload file (name, size,
    mtime)."""
    conn = sqlite3.connect(data_dir / "dockyard.db", timeout=60)
    try:
        rows = [
            (table, *row)
            for table in COLLECTED_TABLES
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        ]
    finally:
        conn.close()
    files = []
    for area in ("blobs", "uploads"):
        for path in sorted((data_dir / area).rglob("*")):
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(data_dir)), stat.st_size, stat.st_mtime_ns))
    return rows, files


def age_everything(data_dir: Path, seconds: float) -> None:
    """Make every blob, link and manifest look ``seconds`` older (as if pushed long ago)."""
    conn = sqlite3.connect(data_dir / "dockyard.db", timeout=60)
    try:
        with conn:
            for table in ("blobs", "repository_blobs", "manifests"):
                conn.execute(f"UPDATE {table} SET created_at = created_at - ?", (seconds,))
    finally:
        conn.close()


# --- the collector as a command -------------------------------------------------------------


def gc_command(data_dir: Path, *flags: str) -> list[str]:
    return [*dockyard_command(), "gc", "--data-dir", str(data_dir), *flags]


def run_gc(data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`dockyard gc` to completion; its JSON report."""
    done = subprocess.run(
        gc_command(data_dir, *flags),
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """What a report says was (or would be) freed, in an order-free form."""
    return {
        "manifests_deleted": sorted(
            f"{m['repository']}@{m['digest']}" for m in report["manifests_deleted"]
        ),
        "links_removed": report["links_removed"],
        "blobs_deleted": sorted(report["blobs_deleted"]),
        "orphan_files_deleted": sorted(report["orphan_files_deleted"]),
        "bytes_freed": report["bytes_freed"],
    }


def differences(dry: dict[str, Any], real: dict[str, Any]) -> str:
    """Where a dry run's report and a real run's disagree, readably."""
    lines = []
    for key, said in comparable(dry).items():
        did = comparable(real)[key]
        if said == did:
            continue
        if isinstance(said, list):
            lines.append(
                f"{key}: the dry run said {len(said)}, the real run did {len(did)};"
                f" only in the dry run {sorted(set(said) - set(did))},"
                f" only in the real run {sorted(set(did) - set(said))}"
            )
        else:
            lines.append(f"{key}: the dry run said {said}, the real run did {did}")
    return "\n".join(lines)


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.003) -> bool:
    """Poll ``check`` often until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def server_problems(server: Server) -> list[str]:
    return [line for line in server.log().splitlines() if "Traceback" in line]


# --- 1. the stress test ---------------------------------------------------------------------

PUSHERS = 4
ROUNDS = int(os.environ.get("DOCKYARD_TEST_GC_ROUNDS", "3"))  # more for a longer soak
MAX_ATTEMPTS = 12
# two collector loops at once (collectors must be safe together too), each running
# `dockyard gc --delete-untagged` processes with these grace periods in turn, at least
# MIN_PASSES times and on until the pushers are done
COLLECTOR_GRACES = ((1, 0, 1), (0, 1, 1))
MIN_PASSES = 2
UPLOAD_STYLES = ("monolithic", "post-put", "chunked")


class Collections:
    """Numbers the collector passes as they start and records which have finished, so a
    client can wait (on a condition, not a clock) for a whole pass to run in between."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._started = 0
        self._finished: list[int] = []

    def begin(self) -> int:
        with self._changed:
            self._started += 1
            return self._started

    def end(self, number: int) -> None:
        with self._changed:
            self._finished.append(number)
            self._changed.notify_all()

    def wait_for_a_whole_pass(self, timeout: float = 120) -> None:
        """Return once a pass that started after this call has finished."""
        with self._changed:
            after = self._started
            done = self._changed.wait_for(lambda: any(n > after for n in self._finished), timeout)
        assert done, "no collection ran"


@dataclass
class Pusher:
    """One client of the stress test. It owns its tags (their names carry its number), so
    it knows exactly what must still be there: what it last pushed under each tag it has
    not moved or deleted since, and the referrers of those manifests."""

    client: Client
    number: int
    bases: tuple[bytes, ...]
    rng: random.Random
    repositories: tuple[str, ...]
    collections: Collections
    tags: dict[tuple[str, str], Content] = field(default_factory=dict)
    referrers: list[tuple[Content, str]] = field(default_factory=list)  # (referrer, subject)
    rounds: int = 0
    pushes: int = 0
    refused: int = 0  # MANIFEST_BLOB_UNKNOWN answers (then pushed again)
    slow: int = 0  # pushes that let a whole collection pass before their manifest
    names: Iterator[int] = field(default_factory=itertools.count)

    # pushing

    def ensure_blobs(self, repository: str, blobs: Iterable[bytes]) -> None:
        head_first = self.rng.random() < 0.6  # like docker: skip what the registry has
        for blob in dict.fromkeys(blobs):
            if head_first:
                status = self.client.request(
                    "HEAD", f"/v2/{repository}/blobs/{sha256_digest(blob)}"
                ).status_code
                assert status in (200, 404), status
                if status == 200:
                    continue
            self.client.upload(repository, blob, self.rng.choice(UPLOAD_STYLES))

    def push(self, content: Content, reference: str, slow: bool = False) -> None:
        """Push until stored: a refusal because something was collected in between is
        answered the way a client does, by pushing what is missing again. A slow push
        (a big layer, a slow link) lets a whole collection run before its manifest."""
        for attempt in range(MAX_ATTEMPTS):
            for child in content.children:
                self.push(child, child.digest)
            self.ensure_blobs(content.repository, content.blobs)
            if slow and attempt == 0:
                self.collections.wait_for_a_whole_pass()
                self.slow += 1
            if self.client.put_manifest(content, reference):
                self.pushes += 1
                return
            self.refused += 1
        raise AssertionError(f"{content.repository}:{reference} refused {MAX_ATTEMPTS} times")

    # the pusher's view

    def new_tag(self) -> str:
        return f"p{self.number}-{next(self.names)}"

    def own(self, repository: str | None = None) -> list[tuple[str, str]]:
        return sorted(key for key in self.tags if repository in (None, key[0]))

    def forget_unkept_referrers(self) -> None:
        """A referrer is only certain to stay while its subject keeps a tag."""
        tagged = {(c.repository, c.digest) for c in self.tags.values()}
        self.referrers = [(r, s) for r, s in self.referrers if (r.repository, s) in tagged]

    # operations

    def push_image(self, slow: bool = False) -> None:
        repository = self.rng.choice(self.repositories)
        existing = self.own(repository)
        moving = bool(existing) and self.rng.random() < 0.3
        tag = self.rng.choice(existing)[1] if moving else self.new_tag()
        sizes = [self.rng.randrange(500, 16_000) for _ in range(self.rng.randrange(1, 3))]
        content = image(repository, (self.rng.choice(self.bases), *map(os.urandom, sizes)))
        self.push(content, tag, slow)
        self.tags[(repository, tag)] = content
        self.forget_unkept_referrers()

    def push_index(self, slow: bool = False) -> None:
        repository = self.rng.choice(self.repositories)
        children = [
            image(repository, (base, os.urandom(self.rng.randrange(500, 8000))), arch)
            for base, arch in zip(self.bases, ("amd64", "arm64"), strict=False)
        ]
        content = index(repository, children)
        tag = self.new_tag()
        self.push(content, tag, slow)
        self.tags[(repository, tag)] = content

    def push_referrer(self) -> None:
        images = [k for k, c in self.tags.items() if c.media_type == OCI_MANIFEST]
        if not images:
            return
        subject = self.tags[self.rng.choice(sorted(images))]
        referrer = artifact(subject, os.urandom(self.rng.randrange(64, 600)))
        self.push(referrer, referrer.digest)  # by digest: no tag, kept by its subject
        self.referrers.append((referrer, subject.digest))

    def retag(self) -> None:
        """Move a tag onto the manifest of another tag (or a new tag onto it)."""
        repository = self.rng.choice(self.repositories)
        existing = self.own(repository)
        if not existing:
            return
        source = self.tags[self.rng.choice(existing)]
        if len(existing) > 1 and self.rng.random() < 0.7:
            target = self.rng.choice(existing)[1]
        else:
            target = self.new_tag()
        # the manifest is tagged, so everything it references is kept: this never fails
        assert self.client.put_manifest(source, target), f"retag {repository}:{target}"
        self.tags[(repository, target)] = source
        self.forget_unkept_referrers()

    def delete_tag(self) -> None:
        if len(self.tags) < 3:
            return
        repository, tag = self.rng.choice(self.own())
        response = self.client.request("DELETE", f"/v2/{repository}/manifests/{tag}")
        assert response.status_code == 202, explain(response)
        del self.tags[(repository, tag)]
        self.forget_unkept_referrers()

    def delete_manifest(self) -> None:
        if len(self.tags) < 3:
            return
        repository, tag = self.rng.choice(self.own())
        digest = self.tags[(repository, tag)].digest
        response = self.client.request("DELETE", f"/v2/{repository}/manifests/{digest}")
        assert response.status_code == 202, explain(response)
        for key in [k for k, c in self.tags.items() if k[0] == repository and c.digest == digest]:
            del self.tags[key]  # deleting a manifest removes every tag on it
        self.forget_unkept_referrers()

    def push_garbage(self) -> None:
        """Blobs no manifest will ever use, and a base layer mounted where nothing uses it."""
        repository = self.rng.choice(self.repositories)
        for _ in range(2):
            blob = os.urandom(self.rng.randrange(1000, 30_000))
            self.client.upload(repository, blob, self.rng.choice(UPLOAD_STYLES))
        base = self.rng.choice(self.bases)
        digest = sha256_digest(base)
        target = f"stress/mounts-{self.number}"
        response = self.client.request(
            "POST",
            f"/v2/{target}/blobs/uploads/",
            params={"mount": digest, "from": self.rng.choice(self.repositories)},
        )
        if response.status_code == 202:  # the source no longer had it: upload instead
            location = response.headers["Location"]
            separator = "&" if "?" in location else "?"
            response = self.client.request(
                "PUT",
                f"{location}{separator}digest={digest}",
                content=base,
                headers={"Content-Type": "application/octet-stream"},
            )
        assert response.status_code == 201, explain(response)

    def verify_one(self) -> None:
        """Right now, with collectors running, a tag of ours pulls back byte for byte."""
        if not self.tags:
            return
        key = self.rng.choice(self.own())
        assert self.client.pull(*key) == self.tags[key].manifest, f"{key} changed"
        for referrer, subject in self.referrers:
            if (referrer.repository, subject) == (key[0], self.tags[key].digest):
                assert referrer.digest in self.client.referrers(key[0], subject)

    def round(self) -> None:
        operations: list[Callable[[], None]] = [
            self.push_image,
            self.push_image,
            self.push_index,
            self.push_referrer,
            self.retag,
            self.delete_tag,
            self.delete_manifest,
            self.push_garbage,
            self.verify_one,
        ]
        if len(self.tags) > 12:
            operations += [self.delete_tag, self.delete_manifest]
        if self.rounds % 4 == 1:  # every pusher at once: half an image, half an index
            slow_push = self.push_index if self.number % 2 else self.push_image
            operations.append(partial(slow_push, True))
        self.rng.shuffle(operations)
        for operation in operations:
            operation()
        self.rounds += 1


def _guarded(failures: list[str], work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except BaseException:
            failures.append(traceback.format_exc())

    return run


def check_whole_registry(client: Client, pushers: list[Pusher]) -> int:
    """Every tag of every repository of the catalog pulls back byte for byte (indexes with
    their children, every blob); the tags are exactly those the clients still have, on the
    manifests they last put there; every referrer of those is listed and pulls. Returns the
    number of tags checked."""
    expected = {key: content for p in pushers for key, content in p.tags.items()}
    found: dict[tuple[str, str], bytes] = {}
    for repository in client.listing("/v2/_catalog", "repositories"):
        for tag in client.listing(f"/v2/{repository}/tags/list", "tags"):
            found[(repository, tag)] = client.pull(repository, tag)
    assert sorted(found) == sorted(expected), "tags appeared or vanished"
    for key, content in expected.items():
        assert found[key] == content.manifest, f"{key} is not what its client last pushed"
    for pusher in pushers:
        for referrer, subject in pusher.referrers:
            listed = client.referrers(referrer.repository, subject)
            assert referrer.digest in listed, f"referrer {referrer.digest} of {subject} lost"
            assert client.pull(referrer.repository, referrer.digest) == referrer.manifest
    return len(found)


def test_stress_push_retag_delete_while_collecting(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bases = tuple(os.urandom(48_000 + n) for n in range(3))
    reports: list[dict[str, Any]] = []
    failures: list[str] = []
    collections = Collections()
    pushing = threading.Event()
    pushing.set()

    with running_dockyard(data_dir, "--workers", "2", env=QUIET) as server:
        pushers = [
            Pusher(
                Client(server.url),
                number,
                bases,
                random.Random(number),
                ("stress/shared", f"stress/own-{number}"),
                collections,
            )
            for number in range(PUSHERS)
        ]

        def push_rounds(pusher: Pusher) -> None:
            while pusher.rounds < ROUNDS and not failures:
                pusher.round()

        def collect(graces: tuple[int, ...]) -> None:
            passes = 0
            while not failures and (passes < MIN_PASSES or pushing.is_set()):
                grace = graces[passes % len(graces)]
                number = collections.begin()
                try:
                    report = run_gc(data_dir, "--grace-seconds", str(grace), "--delete-untagged")
                finally:
                    collections.end(number)  # a failed pass too: nobody waits for nothing
                reports.append(report)
                passes += 1

        threads = [
            threading.Thread(target=_guarded(failures, partial(push_rounds, p))) for p in pushers
        ]
        collectors = [
            threading.Thread(target=_guarded(failures, partial(collect, g)))
            for g in COLLECTOR_GRACES
        ]
        for thread in threads + collectors:
            thread.start()
        for thread in threads:
            thread.join(timeout=200)
        pushing.clear()
        for thread in collectors:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads + collectors), "a client hung"
        assert not failures, "\n".join(failures)

        client = Client(server.url)
        try:
            checked = check_whole_registry(client, pushers)
            assert checked > PUSHERS * 3
            freed_blobs = sum(len(r["blobs_deleted"]) for r in reports)
            freed_bytes = sum(r["bytes_freed"] for r in reports)
            freed_manifests = sum(len(r["manifests_deleted"]) for r in reports)
            assert freed_blobs > 0 and freed_bytes > 0 and freed_manifests > 0, reports
            assert len(reports) >= MIN_PASSES * len(COLLECTOR_GRACES)
            # the slow pushes had their unused layers collected, were told so, pushed again
            assert sum(p.refused for p in pushers) > 0

            # Quiet now: a last collection with no grace leaves exactly what is reachable.
            final = run_gc(data_dir, "--grace-seconds", "0", "--delete-untagged")
            assert check_whole_registry(client, pushers) == checked
            live = {blob for p in pushers for c in p.tags.values() for blob in c.all_blobs()}
            live |= {blob for p in pushers for r, _ in p.referrers for blob in r.all_blobs()}
            rows = blob_rows(data_dir)
            assert live <= rows
            assert rows == blob_files(data_dir), "a blob row without its file, or the reverse"
            unused = _unreferenced_blob_rows(data_dir)
            assert unused == set(), f"left after a no-grace collection: {unused}; {final}"
        finally:
            client.close()
            for pusher in pushers:
                pusher.client.close()
        assert server_problems(server) == []
    assert bad_blob_files(data_dir) == []
    check_database(data_dir)
    print(
        f"stress: {sum(p.rounds for p in pushers)} rounds, {sum(p.pushes for p in pushers)}"
        f" manifests pushed ({sum(p.slow for p in pushers)} slowly),"
        f" {sum(p.refused for p in pushers)} refused and pushed again,"
        f" {len(reports)} collections freed {freed_blobs} blobs / {freed_bytes} bytes /"
        f" {freed_manifests} manifests; {checked} tags verified"
    )


def _unreferenced_blob_rows(data_dir: Path) -> set[str]:
    conn = sqlite3.connect(data_dir / "dockyard.db", timeout=60)
    try:
        rows = conn.execute(
            "SELECT digest FROM blobs WHERE NOT EXISTS (SELECT 1 FROM manifest_references r"
            " WHERE r.digest = blobs.digest AND r.kind = 'blob')"
        )
        return {row[0] for row in rows}
    finally:
        conn.close()


# --- 2. kill -9 in the middle of a collection ----------------------------------------------


def push_live_set(client: Client, repository: str) -> list[Content]:
    """A few images sharing a base layer, an index and a referrer: what must survive."""
    base = os.urandom(40_000)
    images = [image(repository, (base, os.urandom(3000 + n))) for n in range(3)]
    multi = index(repository, [image(repository, (base, os.urandom(2000)), "arm64")])
    signature = artifact(images[0], os.urandom(300))
    for number, content in enumerate([*images, multi]):
        push_content(client, content, f"v{number}")
    push_content(client, signature, signature.digest)
    return [*images, multi, signature]


def push_content(client: Client, content: Content, reference: str) -> None:
    """Upload the blobs (children first), then put the manifest; nothing may be refused."""
    for child in content.children:
        push_content(client, child, child.digest)
    for blob in content.blobs:
        client.upload(content.repository, blob)
    assert client.put_manifest(content, reference), f"{content.repository}:{reference}"


def check_live_set(client: Client, live: list[Content]) -> None:
    for content in live:
        assert client.pull(content.repository, content.digest) == content.manifest
    signature = live[-1]
    assert signature.digest in client.referrers(signature.repository, live[0].digest)


def push_garbage(url: str, repository: str, count: int) -> set[str]:
    """``count`` small blobs pushed and never used."""
    blobs = [os.urandom(256 + n % 700) for n in range(count)]

    def push(part: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for blob in part:
                response = http.post(
                    f"/v2/{repository}/blobs/uploads/",
                    params={"digest": sha256_digest(blob)},
                    content=blob,
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert response.status_code == 201, explain(response)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(push, [blobs[n::8] for n in range(8)]))
    return {sha256_digest(blob) for blob in blobs}


def _exited_or_deleted(proc: subprocess.Popen[bytes], data_dir: Path, files: int) -> bool:
    return proc.poll() is not None or count_blob_files(data_dir) <= files


def test_kill_9_in_the_middle_of_a_collection(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_dockyard(data_dir, "--workers", "2", env=QUIET) as server:
        client = Client(server.url)
        try:
            live = push_live_set(client, "crash/live")
            # untagged manifests too, so that the collection has every kind of work
            garbage: set[str] = set()
            for number in range(10):
                doomed = image("crash/junk", (os.urandom(700 + number),))
                for blob in doomed.blobs:
                    client.upload(doomed.repository, blob)
                assert client.put_manifest(doomed, "doomed")
                garbage |= doomed.all_blobs()
            assert client.request("DELETE", "/v2/crash/junk/manifests/doomed").status_code == 202

            killed = None
            for count in (200, 400, 800):  # a collection quicker than our polling: bigger
                garbage |= push_garbage(server.url, "crash/junk", count)
                before = count_blob_files(data_dir)
                proc = subprocess.Popen(
                    gc_command(data_dir, "--grace-seconds", "0", "--delete-untagged"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                # once it has deleted some blob files
                poll(partial(_exited_or_deleted, proc, data_dir, before - 1), 60, interval=0.01)
                if proc.poll() is None:
                    kill_tree(proc, signal.SIGKILL)
                    assert proc.stderr is not None
                    proc.stderr.close()
                    if garbage & blob_files(data_dir):
                        killed = proc
                        break
                    continue  # killed after its last blob: try a bigger collection
                _, stderr = proc.communicate()
                assert proc.returncode == 0, stderr.decode(errors="replace")
            assert killed is not None, "every collection finished before it could be killed"
            assert killed.returncode == -signal.SIGKILL

            # what the kill left: consistent, some garbage still there
            rows, files = blob_rows(data_dir), blob_files(data_dir)
            assert rows <= files, f"blob rows without their file: {sorted(rows - files)[:5]}"
            assert garbage & files, "the collection was not interrupted"
            orphans = files - rows
            check_database(data_dir)
            assert bad_blob_files(data_dir) == []
            check_live_set(client, live)

            # the next run finishes the job
            report = run_gc(data_dir, "--grace-seconds", "0", "--delete-untagged")
            rows, files = blob_rows(data_dir), blob_files(data_dir)
            assert sorted(report["orphan_files_deleted"]) == sorted(orphans)
            assert not garbage & (rows | files), "garbage survived the second collection"
            assert rows == files
            check_live_set(client, live)
            check_database(data_dir)
        finally:
            client.close()
        assert server_problems(server) == []


# --- 3. dry run ----------------------------------------------------------------------------


def _plant_orphan_file(data_dir: Path) -> str:
    """A blob file without a row, as a crash between publishing and recording leaves."""
    data = os.urandom(4321)
    digest = sha256_digest(data)
    hex_part = digest.split(":", 1)[1]
    path = data_dir / "blobs" / "sha256" / hex_part[:2] / hex_part
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return digest


def test_dry_run_reports_exactly_what_a_real_run_deletes(tmp_path: Path) -> None:
    """Two collections in turn, each rehearsed first with --dry-run: blobs, links and a
    blob file a crash left without its row (untagged manifests kept by policy); then with
    untagged manifests collected too (an index and its child, a subject and its
    referrer). Each dry run changes nothing and names exactly what the real run frees."""
    data_dir = tmp_path / "data"
    with running_dockyard(data_dir, "--workers", "1", env=QUIET) as server:
        client = Client(server.url)
        try:
            base = os.urandom(20_000)
            kept = [image("dry/app", (base, os.urandom(3000))), image("dry/other", (base,))]
            for number, content in enumerate(kept):
                push_content(client, content, f"v{number}")

            def unused_content() -> None:
                """Blobs nobody uses; a used blob linked where nothing uses it (the link
                goes, the blob stays); an untagged manifest."""
                for _ in range(3):
                    client.upload("dry/app", os.urandom(1000 + random.randrange(1000)))
                mounted = client.request(
                    "POST",
                    f"/v2/dry/mounted-{os.urandom(3).hex()}/blobs/uploads/",
                    params={"mount": sha256_digest(base), "from": "dry/app"},
                )
                assert mounted.status_code == 201, explain(mounted)
                untagged = image("dry/app", (os.urandom(5000),))
                push_content(client, untagged, untagged.digest)

            def rehearse_then_collect(*flags: str) -> str:
                """How the dry run's report differs from the real run's ("" when not)."""
                before = snapshot(data_dir)
                dry = run_gc(data_dir, "--dry-run", *flags)
                assert dry["dry_run"] is True
                assert snapshot(data_dir) == before, "a dry run changed the data directory"
                real = run_gc(data_dir, *flags)
                assert real["dry_run"] is False and real["bytes_freed"] > 0
                assert not set(real["blobs_deleted"]) & blob_files(data_dir)
                return differences(dry, real)

            problems = []
            unused_content()
            _plant_orphan_file(data_dir)
            if difference := rehearse_then_collect("--grace-seconds", "0"):
                problems.append(f"untagged manifests kept, an orphan file:\n{difference}")

            unused_content()
            gone = image("dry/app", (base, os.urandom(2500)))
            multi = index("dry/app", [image("dry/app", (os.urandom(1500),), "arm64")])
            signature = artifact(gone, os.urandom(200))
            push_content(client, multi, "multi")
            push_content(client, gone, "gone")
            push_content(client, signature, signature.digest)
            for tag in ("gone", "multi"):
                deleted = client.request("DELETE", f"/v2/dry/app/manifests/{tag}")
                assert deleted.status_code == 202
            if difference := rehearse_then_collect("--grace-seconds", "0", "--delete-untagged"):
                problems.append(f"with --delete-untagged:\n{difference}")
            assert not problems, "\n".join(problems)

            for number, content in enumerate(kept):
                assert client.pull(content.repository, f"v{number}") == content.manifest
        finally:
            client.close()


# --- 4. the worker --------------------------------------------------------------------------


def worker_env(**settings: object) -> dict[str, str]:
    return {**os.environ, **{f"DOCKYARD_{k.upper()}": str(v) for k, v in settings.items()}}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line, each of which must be one JSON object."""
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def start_upload(client: Client, repository: str, data: bytes) -> tuple[str, str]:
    """An upload with ``data`` sent and not finished: (its Location, its id)."""
    started = client.request("POST", f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, explain(started)
    patched = client.request(
        "PATCH",
        started.headers["Location"],
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"0-{len(data) - 1}",
        },
    )
    assert patched.status_code == 202, explain(patched)
    return patched.headers["Location"], patched.headers["Docker-Upload-UUID"]


def test_worker_once_purges_stale_uploads_and_collects(tmp_path: Path) -> None:
    """`dockyard worker --once`, the registry running: an upload untouched for longer than
    upload_purge_after_seconds is purged (and is BLOB_UPLOAD_UNKNOWN from then on, in
    every server process), a recent one is kept; garbage is collected; every line the
    worker logs is JSON."""
    data_dir = tmp_path / "data"
    with running_dockyard(data_dir, "--workers", "2", env=QUIET) as server:
        client = Client(server.url)
        try:
            kept = image("worker/app", (os.urandom(9000),))
            gone = image("worker/app", (os.urandom(7000),))
            push_content(client, kept, "kept")
            push_content(client, gone, "gone")
            assert client.request("DELETE", "/v2/worker/app/manifests/gone").status_code == 202
            stray = os.urandom(3333)
            client.upload("worker/app", stray)
            head, rest = b"half of a layer", b" and the rest"
            stale, stale_id = start_upload(client, "worker/uploads", head)
            fresh, _ = start_upload(client, "worker/uploads", head)
            upload_file = data_dir / "uploads" / stale_id
            assert upload_file.is_file()
            past = time.time() - 3600  # last written an hour ago
            os.utime(upload_file, (past, past))

            done = subprocess.run(
                [*dockyard_command(), "worker", "--once", "--data-dir", str(data_dir)],
                capture_output=True,
                timeout=120,
                env=worker_env(
                    upload_purge_after_seconds=60,
                    gc_interval_seconds=3600,
                    gc_grace_seconds=0,
                    gc_delete_untagged="true",
                ),
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            entries = json_lines(done.stdout.decode() + done.stderr.decode())
            jobs = {entry["job"]: entry for entry in entries}
            assert len(jobs) == len(entries) and {"purge-uploads", "gc"} <= set(jobs), entries

            # the stale upload is gone, everywhere
            assert jobs["purge-uploads"]["purged"] == 1
            assert not upload_file.exists()
            octets = {"Content-Type": "application/octet-stream"}
            digest = sha256_digest(head + rest)
            for method, url, extra in (
                ("GET", stale, {}),
                ("PATCH", stale, {"content": rest, "headers": octets}),
                ("PUT", with_digest(stale, digest), {"content": rest, "headers": octets}),
            ):
                for _ in range(3):  # whichever server process answers
                    answer = client.request(method, url, **extra)
                    assert answer.status_code == 404, explain(answer)
                    assert answer.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
            # the upload written to a moment ago was kept, and finishes
            finished = client.request(
                "PUT", with_digest(fresh, digest), content=rest, headers=octets
            )
            assert finished.status_code == 201, explain(finished)
            pulled = client.request("GET", f"/v2/worker/uploads/blobs/{digest}")
            assert pulled.content == head + rest

            # the collection
            collected = jobs["gc"]
            assert collected["manifests_deleted"] == [
                {"repository": "worker/app", "digest": gone.digest}
            ]
            freed = gone.all_blobs() | {sha256_digest(stray)}
            assert sorted(collected["blobs_deleted"]) == sorted(freed)
            assert collected["bytes_freed"] == len(stray) + sum(map(len, gone.blobs))
            assert client.pull("worker/app", "kept") == kept.manifest
            for blob in freed:
                status = client.request("HEAD", f"/v2/worker/app/blobs/{blob}").status_code
                assert status == 404
            missing = client.request("GET", f"/v2/worker/app/manifests/{gone.digest}")
            assert missing.status_code == 404
        finally:
            client.close()


def test_worker_collects_on_its_schedule(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log_path = tmp_path / "worker.log"
    with running_dockyard(data_dir, "--workers", "1", env=QUIET) as server:
        client = Client(server.url)
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [*dockyard_command(), "worker", "--data-dir", str(data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=worker_env(gc_interval_seconds=1, gc_grace_seconds=0),
            )
        try:

            def collections() -> list[dict[str, Any]]:
                if worker.poll() is not None:
                    raise ProcessDied(f"the worker exited: {log_path.read_text()}")
                return [e for e in json_lines(log_path.read_text()) if e["job"] == "gc"]

            wait_until(lambda: len(collections()) >= 1, 60, "a first collection")
            stray = os.urandom(4444)
            client.upload("scheduled/app", stray)
            digest = sha256_digest(stray)
            wait_until(
                lambda: any(digest in e["blobs_deleted"] for e in collections()),
                60,
                "the next scheduled collection to free the stray blob",
            )
            assert len(collections()) >= 2
            status = client.request("HEAD", f"/v2/scheduled/app/blobs/{digest}").status_code
            assert status == 404
        finally:
            client.close()
            kill_tree(worker)


# --- bugs found while writing the tests above ----------------------------------------------


def test_pushing_again_what_was_stored_long_ago_is_protected_by_the_grace_period(
    tmp_path: Path,
) -> None:
    """The grace period protects what a push in flight has just sent. Content stored long
    ago and sent again by a push (layers uploaded again; a child manifest put again before
    its index) was just sent too: a collection with the default grace must not take it
    from under the push."""
    data_dir = tmp_path / "data"
    with running_dockyard(data_dir, "--workers", "1", env=QUIET) as server:
        client = Client(server.url)
        try:
            layers = image("grace/layers", (os.urandom(6000),))
            for blob in layers.blobs:  # uploaded, never used
                client.upload(layers.repository, blob)
            child = image("grace/index", (os.urandom(5000),))
            push_content(client, child, child.digest)  # put by digest, no index yet
            age_everything(data_dir, 2 * 3600)  # all that was two hours ago

            # now two pushes send it all again...
            for blob in layers.blobs:
                client.upload(layers.repository, blob)
            assert client.put_manifest(child, child.digest)
            # ...a collection runs, then their top manifests arrive
            report = run_gc(data_dir, "--grace-seconds", "3600", "--delete-untagged")
            problems = []
            if not client.put_manifest(layers, "v1"):
                problems.append("an image whose layers were uploaded again just now was refused")
            multi = index("grace/index", [child])
            if not client.put_manifest(multi, "v1"):
                problems.append("an index whose child was put again just now was refused")
            assert not problems, "; ".join(problems) + f"; the collection: {report}"
            assert client.pull(layers.repository, "v1") == layers.manifest
            assert client.pull(multi.repository, "v1") == multi.manifest
        finally:
            client.close()


def test_many_concurrent_finishes_of_one_blob_do_not_wedge_a_worker(tmp_path: Path) -> None:
    """Many clients pushing the same layer at the same moment (CI jobs sharing a base
    image) finish their uploads in one server process; each waits for the blob's lock. The
    waiting must not take the threads the lock holder needs to publish and commit."""
    clients = 32
    data = os.urandom(50_000)
    digest = sha256_digest(data)
    server = start_dockyard(tmp_path / "data", "--workers", "1", env=QUIET)
    client = Client(server.url)
    try:
        locations = []
        for _ in range(clients):
            started = client.request("POST", "/v2/same/layer/blobs/uploads/")
            assert started.status_code == 202
            locations.append(started.headers["Location"])
        barrier = threading.Barrier(clients)

        def finish(location: str) -> int | str:
            separator = "&" if "?" in location else "?"
            with httpx.Client(base_url=server.url, timeout=20) as http:
                barrier.wait()
                try:
                    return http.put(
                        f"{location}{separator}digest={digest}",
                        content=data,
                        headers={"Content-Type": "application/octet-stream"},
                    ).status_code
                except httpx.TimeoutException:
                    return "no answer in 20 s"

        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(finish, locations))
        finished = answers.count(201)
        assert finished == clients, (
            f"{finished} of {clients} uploads finished; the others: {set(answers) - {201}}"
        )
        other = os.urandom(1000)
        client.upload("same/other", other)
        assert client.request("GET", f"/v2/same/layer/blobs/{digest}").content == data
    finally:
        client.close()
        server.stop(signal.SIGKILL)  # a wedged worker would not stop on SIGTERM
