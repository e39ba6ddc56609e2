"""Real clients follow the blob redirects of the sendfile port (zero-copy downloads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containers_tools import make_containers_tools
from tests.e2e.daemons import Containerd
from tests.e2e.images import ImageSet
from tests.e2e.layout import sha256_file
from tests.support.processes import Server, free_port, running_dockyard

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sendfile_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{free_port()}",
        "DOCKYARD_SENDFILE_MIN_BYTES": "0",  # every blob GET goes through a redirect
    }
    with running_dockyard(tmp_path_factory.mktemp("sendfile-e2e") / "data", env=env) as srv:
        yield srv


def blob_get_statuses(server: Server, name: str) -> list[int]:
    statuses = []
    for line in server.log().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["route"] == "blob" and entry["method"] == "GET" and f"/{name}/" in entry["path"]:
            statuses.append(entry["status"])
    return statuses


def test_skopeo_pulls_through_redirects(
    sendfile_registry: Server, images: ImageSet, tmp_path: Path
) -> None:
    tools = make_containers_tools(tmp_path / "containers", sendfile_registry.host)
    ref = f"docker://{sendfile_registry.host}/sendfile/large:v1"
    pushed, _ = tools.copy(images.oci("large"), ref)
    assert pushed == images.large.digest

    pulled, _ = tools.copy(ref, f"oci:{tmp_path / 'out'}:v1")
    assert pulled == pushed
    for digest in images.large.blob_digests:
        copied = tmp_path / "out" / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert sha256_file(copied) == digest
    statuses = blob_get_statuses(sendfile_registry, "sendfile/large")
    assert statuses, "skopeo fetched no blob"
    assert set(statuses) == {307}, statuses


@pytest.mark.xdist_group("containerd")
def test_containerd_pulls_through_redirects(
    sendfile_registry: Server, images: ImageSet, containerd: Containerd, namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    tools = make_containers_tools(tmp_path / "containers", sendfile_registry.host)
    ref = f"{sendfile_registry.host}/sendfile/multi:v1"
    pushed, _ = tools.copy(images.oci("multi"), f"docker://{ref}")
    result = containerd.ctr(
        namespace, "images", "pull", "--plain-http", "--snapshotter", "native", ref
    )
    assert result.returncode == 0
    listed = containerd.ctr(namespace, "images", "ls").stdout
    assert any(line.split()[:1] == [ref] and pushed in line for line in listed.splitlines())
    statuses = blob_get_statuses(sendfile_registry, "sendfile/multi")
    assert statuses and set(statuses) == {307}, statuses
