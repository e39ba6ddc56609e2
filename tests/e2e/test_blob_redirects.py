"""Real clients follow blob GETs answered with a redirect, byte for byte: to presigned URLs
of an S3 store (SeaweedFS), and to the zero-copy sendfile port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containers_tools import make_containers_tools
from tests.e2e.daemons import Containerd
from tests.e2e.images import ImageSet
from tests.e2e.layout import sha256_file
from tests.support.processes import Server, free_port, running_dockyard
from tests.support.seaweed import Seaweed, new_prefix

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["s3", "sendfile"])
def redirecting_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if request.param == "s3":
        seaweed: Seaweed = request.getfixturevalue("seaweed")
        env = {**seaweed.settings(new_prefix()), "DOCKYARD_S3_CHUNK_MIB": "5"}
    else:
        env = {
            "DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{free_port()}",
            "DOCKYARD_SENDFILE_MIN_BYTES": "0",  # every blob GET goes through a redirect
        }
    data_dir = tmp_path_factory.mktemp(f"{request.param}-e2e") / "data"
    with running_dockyard(data_dir, env=env) as server:
        yield server


def test_skopeo_pushes_and_pulls_through_redirects(
    redirecting_registry: Server, images: ImageSet, tmp_path: Path
) -> None:
    tools = make_containers_tools(tmp_path / "containers", redirecting_registry.host)
    ref = f"docker://{redirecting_registry.host}/redirect/large:v1"
    pushed, _ = tools.copy(images.oci("large"), ref)
    assert pushed == images.large.digest

    pulled, _ = tools.copy(ref, f"oci:{tmp_path / 'out'}:v1")
    assert pulled == pushed
    for digest in images.large.blob_digests:
        copied = tmp_path / "out" / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert sha256_file(copied) == digest
    statuses = redirecting_registry.blob_get_statuses("redirect/large")
    assert statuses, "skopeo fetched no blob"
    assert set(statuses) == {307}, statuses


@pytest.mark.xdist_group("containerd")
def test_containerd_pulls_through_redirects(
    redirecting_registry: Server, images: ImageSet, containerd: Containerd, namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    tools = make_containers_tools(tmp_path / "containers", redirecting_registry.host)
    ref = f"{redirecting_registry.host}/redirect/multi:v1"
    pushed, _ = tools.copy(images.oci("multi"), f"docker://{ref}")
    result = containerd.ctr(
        namespace, "images", "pull", "--plain-http", "--snapshotter", "native", ref
    )
    assert result.returncode == 0
    listed = containerd.ctr(namespace, "images", "ls").stdout
    assert any(line.split()[:1] == [ref] and pushed in line for line in listed.splitlines())
    statuses = redirecting_registry.blob_get_statuses("redirect/multi")
    assert statuses and set(statuses) == {307}, statuses
