"""Real clients push to and pull from a registry whose blobs are in S3 (SeaweedFS): they
follow the redirects to presigned URLs byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containers_tools import make_containers_tools
from tests.e2e.daemons import Containerd
from tests.e2e.images import ImageSet
from tests.e2e.layout import sha256_file
from tests.support.processes import Server, running_dockyard
from tests.support.seaweed import Seaweed, new_prefix

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3_registry(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> Iterator[Server]:
    env = {**seaweed.settings(new_prefix()), "DOCKYARD_S3_CHUNK_MIB": "5"}
    with running_dockyard(tmp_path_factory.mktemp("s3-e2e") / "data", env=env) as server:
        yield server


def blob_get_statuses(server: Server, name: str) -> list[int]:
    statuses = []
    for line in server.log().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["route"] == "blob" and entry["method"] == "GET" and f"/{name}/" in entry["path"]:
            statuses.append(entry["status"])
    return statuses


def test_skopeo_pushes_and_pulls_through_s3(
    s3_registry: Server, images: ImageSet, tmp_path: Path
) -> None:
    tools = make_containers_tools(tmp_path / "containers", s3_registry.host)
    ref = f"docker://{s3_registry.host}/s3/large:v1"
    pushed, _ = tools.copy(images.oci("large"), ref)
    assert pushed == images.large.digest

    pulled, _ = tools.copy(ref, f"oci:{tmp_path / 'out'}:v1")
    assert pulled == pushed
    for digest in images.large.blob_digests:
        copied = tmp_path / "out" / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert sha256_file(copied) == digest
    statuses = blob_get_statuses(s3_registry, "s3/large")
    assert statuses, "skopeo fetched no blob"
    assert set(statuses) == {307}, statuses


@pytest.mark.xdist_group("containerd")
def test_containerd_pulls_through_s3(
    s3_registry: Server, images: ImageSet, containerd: Containerd, namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    tools = make_containers_tools(tmp_path / "containers", s3_registry.host)
    ref = f"{s3_registry.host}/s3/multi:v1"
    pushed, _ = tools.copy(images.oci("multi"), f"docker://{ref}")
    result = containerd.ctr(
        namespace, "images", "pull", "--plain-http", "--snapshotter", "native", ref
    )
    assert result.returncode == 0
    listed = containerd.ctr(namespace, "images", "ls").stdout
    assert any(line.split()[:1] == [ref] and pushed in line for line in listed.splitlines())
    statuses = blob_get_statuses(s3_registry, "s3/multi")
    assert statuses and set(statuses) == {307}, statuses
