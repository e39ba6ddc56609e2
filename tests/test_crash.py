"""kill -9 safety: the whole server (granian master and workers) dies with SIGKILL in the
middle of uploads and pushes; after a restart on the same data directory nothing committed
is lost, nothing half-written is visible, every blob file holds the bytes its name says,
and the SQLite database is intact.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.data_dir import bad_blob_files, check_database
from tests.support.oci_client import Image, OciClient, explain, random_image, sha256_digest
from tests.support.process_group import group_members, kill_group_hard
from tests.support.processes import Server, start_dockyard, wait_until

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024


def upload_size(client: OciClient, location: str) -> int:
    """The size the registry reports for an upload (``GET`` status, ``Range: 0-<last>``)."""
    response = client.http.get(location)
    assert response.status_code == 204, explain(response)
    last = int(response.headers["Range"].rpartition("-")[2])
    return last + 1 if last else 0


@dataclass
class StalledBody:
    """A request body that sends ``head`` bytes, then waits until ``release`` is set
    before sending the rest, so the request is surely in flight when the server dies."""

    data: bytes
    head: int
    release: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[bytes]:
        step = 256 * 1024
        for start in range(0, len(self.data), step):
            if start >= self.head:
                self.release.wait(60)
            yield self.data[start : start + step]


def run_in_thread(target: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[object]]:
    """Run ``target`` in a thread; the list receives its response or its exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_kill_9_during_large_streamed_uploads(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    repository = "crash/big"
    images = [random_image(repository, f"v{i}", (300_000, 40_000)) for i in range(3)]
    patched = os.urandom(12 * MiB)  # streamed by a PATCH
    put = os.urandom(12 * MiB)  # streamed as the body of the final PUT
    patched_body = StalledBody(patched, head=4 * MiB)
    put_body = StalledBody(put, head=4 * MiB, release=patched_body.release)

    server = start_dockyard(data_dir, "--workers", "2")
    try:
        with OciClient(server.url) as client:
            for image, chunk_size in zip(images, (0, None, 64 * 1024), strict=True):
                client.push_image(image, chunk_size=chunk_size)
            patch_location = client.start_upload(repository)
            put_location = client.start_upload(repository)

        patch_client, put_client = OciClient(server.url), OciClient(server.url)
        patcher, patch_outcome = run_in_thread(
            lambda: patch_client.patch(patch_location, patched_body)
        )
        putter, put_outcome = run_in_thread(
            lambda: put_client.finish_upload(put_location, sha256_digest(put), put_body)
        )
        with OciClient(server.url) as observer:
            wait_until(
                lambda: (
                    upload_size(observer, patch_location) > 0
                    and upload_size(observer, put_location) > 0
                ),
                30,
                "the server to receive part of both streamed uploads",
            )
        kill_group_hard(server.proc)
    finally:
        patched_body.release.set()
        server.stop()
    patcher.join(30)
    putter.join(30)
    patch_client.close()
    put_client.close()
    for outcome in (patch_outcome, put_outcome):
        assert len(outcome) == 1
        assert not (isinstance(outcome[0], httpx.Response) and outcome[0].is_success), outcome

    check_database(data_dir)
    assert bad_blob_files(data_dir) == []

    # on the same port: the upload links name it (and its data port, the one above)
    server = start_dockyard(data_dir, "--workers", "2", port=int(server.url.rsplit(":", 1)[1]))
    try:
        with OciClient(server.url) as client:
            for image in images:
                client.check_image(image)
            # Neither interrupted blob became visible.
            assert client.blob_status(repository, sha256_digest(patched)) == 404
            assert client.blob_status(repository, sha256_digest(put)) == 404

            # The interrupted PATCH resumes where the registry says it stopped.
            received = upload_size(client, patch_location)
            assert 0 < received < len(patched)
            response = client.patch(patch_location, patched[received:], start=received)
            assert response.status_code == 202, explain(response)
            response = client.finish_upload(response.headers["Location"], sha256_digest(patched))
            assert response.status_code == 201, explain(response)
            assert client.get_blob(repository, sha256_digest(patched)) == patched

            # The interrupted PUT's session can be cancelled, and the blob pushed afresh.
            assert client.http.delete(put_location).status_code == 204
            assert client.http.get(put_location).status_code == 404
            client.push_blob(repository, put, chunk_size=4 * MiB)
            assert client.get_blob(repository, sha256_digest(put)) == put

            for image in images:
                client.check_image(image)
        assert bad_blob_files(data_dir) == []
        check_database(data_dir)
    finally:
        server.stop()


@dataclass
class Pushes:
    """What the registry acknowledged (201) while pushers ran, and anything unexpected."""

    images: list[Image] = field(default_factory=list)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def push_until_stopped(url: str, name: str, pushes: Pushes, stop: threading.Event) -> None:
    """Push small images until the server dies or ``stop`` is set, recording every 201."""
    rng = random.Random(name)
    with OciClient(url, timeout=10) as client:
        number = 0
        while not stop.is_set():
            number += 1
            image = random_image(name, f"n{number}", [rng.randint(1, 40_000)])
            try:
                for blob in image.blobs:
                    client.push_blob(name, blob, chunk_size=rng.choice([0, None, 8 * 1024]))
                    with pushes.lock:
                        pushes.blobs.append((name, blob))
                response = client.put_manifest(name, image.tag, image.manifest)
            except httpx.TransportError:
                return  # the server was killed under this request
            except AssertionError as exc:  # a response, so not caused by the kill
                with pushes.lock:
                    pushes.errors.append(str(exc))
                return
            with pushes.lock:
                if response.status_code == 201:
                    pushes.images.append(image)
                else:
                    pushes.errors.append(explain(response))
                    return


def check_acknowledged(server: Server, pushes: Pushes) -> None:
    with OciClient(server.url) as client:
        for image in pushes.images:
            client.check_image(image)
        for name, blob in pushes.blobs:
            assert client.get_blob(name, sha256_digest(blob)) == blob


def test_kill_9_loop_during_concurrent_pushes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pushes = Pushes()
    for round_number in range(3):
        server = start_dockyard(data_dir, "--workers", "2")
        try:
            check_acknowledged(server, pushes)
            enough = len(pushes.images) + 15
            stop = threading.Event()
            pushers = [
                threading.Thread(
                    target=push_until_stopped,
                    args=(server.url, f"loop/r{round_number}/p{n}", pushes, stop),
                    daemon=True,
                )
                for n in range(6)
            ]
            for pusher in pushers:
                pusher.start()

            def acknowledged(enough: int = enough) -> bool:
                return len(pushes.images) >= enough or bool(pushes.errors)

            wait_until(acknowledged, 60, "pushes to be acknowledged")
            kill_group_hard(server.proc)
        finally:
            server.stop()
        stop.set()
        for pusher in pushers:
            pusher.join(30)
        assert pushes.errors == []
        check_database(data_dir)
        assert bad_blob_files(data_dir) == []

    assert len(pushes.images) >= 45
    server = start_dockyard(data_dir, "--workers", "2")
    try:
        check_acknowledged(server, pushes)
        # After all that, the registry still takes new pushes.
        with OciClient(server.url) as client:
            image = random_image("loop/after", "latest", (10_000,))
            client.push_image(image)
            client.check_image(image)
    finally:
        server.stop()
    check_database(data_dir)
    assert bad_blob_files(data_dir) == []


def test_kill_9_of_the_master_alone_stops_its_workers(tmp_path: Path) -> None:
    """When only the granian master is killed (the OOM killer picks one process), its
    workers must not live on as orphans that keep serving the port."""
    server = start_dockyard(tmp_path / "data", "--workers", "2")
    try:
        # granian forks its workers one after another: wait for the second one too
        wait_until(lambda: len(group_members(server.proc.pid)) == 3, 30, "2 workers")
        workers = [pid for pid in group_members(server.proc.pid) if pid != server.proc.pid]
        assert len(workers) == 2
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(15)
        try:
            wait_until(
                lambda: not group_members(server.proc.pid),
                5,
                "the workers to exit after their master was killed",
            )
        except TimeoutError:
            answer = httpx.get(f"{server.url}/v2/", timeout=5)
            orphans = group_members(server.proc.pid)
        else:
            return
        pytest.fail(
            f"workers {orphans} still run 5 s after their master was killed, and "
            f"GET /v2/ still answers {answer.status_code}"
        )
    finally:
        kill_group_hard(server.proc)


def test_kill_9_during_a_spliced_upload(tmp_path: Path) -> None:
    """kill -9 while a PATCH body is being spliced into its upload on the data port: the
    registry starts again consistent, nothing half-written is visible, and the upload
    carries on from the size the registry reports."""
    data_dir = tmp_path / "data"
    repository = "crash/spliced"
    kept = random_image(repository, "v1", (200_000,))
    body = os.urandom(32 * MiB)
    server = start_dockyard(data_dir, "--workers", "2")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        with OciClient(server.url) as client:
            client.push_image(kept)
            location = client.start_upload(repository)
        link = urlsplit(location)
        assert link.port == port + 1  # the data port
        with socket.create_connection(("127.0.0.1", port + 1), timeout=30) as sock:
            sock.sendall(
                f"PATCH {link.path}?{link.query} HTTP/1.1\r\nHost: 127.0.0.1:{port + 1}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: 8 * MiB]
            )
            with OciClient(server.url) as observer:
                wait_until(
                    lambda: upload_size(observer, location) > 0,
                    30,
                    "the data port to splice part of the body",
                )
            kill_group_hard(server.proc)
    finally:
        server.stop()
    check_database(data_dir)
    assert bad_blob_files(data_dir) == []

    server = start_dockyard(data_dir, "--workers", "2", port=port)
    try:
        with OciClient(server.url) as client:
            client.check_image(kept)
            assert client.blob_status(repository, sha256_digest(body)) == 404
            received = upload_size(client, location)
            assert 0 < received <= 8 * MiB
            response = client.patch(location, body[received:], start=received)
            assert response.status_code == 202, explain(response)
            response = client.finish_upload(response.headers["Location"], sha256_digest(body))
            assert response.status_code == 201, explain(response)
            assert client.get_blob(repository, sha256_digest(body)) == body
        check_database(data_dir)
    finally:
        server.stop()
