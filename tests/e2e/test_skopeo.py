"""skopeo: copy to and from the registry (single image, index, large layer, Docker schema 2),
inspect, list-tags, cross-repository mount and delete."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.client_logs import assert_mounted
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.images import HELLO_PATH, HELLO_TEXT, PLATFORM_PATH, ImageRef, ImageSet
from tests.e2e.layout import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256_file
from tests.e2e.registry_api import RegistryAPI, assert_uploaded_through_data_port
from tests.support.processes import Server

pytestmark = pytest.mark.e2e


def assert_same_blobs(images: ImageSet, blob_dir: Path, image: ImageRef) -> None:
    """Each blob of ``image`` copied out of the registry is byte-identical to the source."""
    for digest in image.blob_digests:
        copied = blob_dir / digest.split(":", 1)[1]
        assert copied.exists(), f"{digest} missing from {blob_dir}"
        assert sha256_file(copied) == digest
        assert copied.stat().st_size == images.blob_path(digest).stat().st_size


def test_copy_image_to_registry_and_back(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = repo("multi")
    ref = f"docker://{registry.host}/{name}:v1"
    digest, _ = tools.copy(images.oci("multi"), ref)
    assert digest == images.multi.digest  # an OCI manifest goes up unmodified

    served = api.verify(name, "v1", digest)
    assert served.media_type == OCI_MANIFEST
    assert served.body == images.blob(images.multi.digest)
    assert api.read_file(name, "v1", HELLO_PATH) == HELLO_TEXT.encode()

    info = json.loads(tools.skopeo("inspect", "--tls-verify=false", ref).stdout)
    assert info["Digest"] == digest
    assert info["Layers"] == list(images.multi.layer_digests)
    assert info["Architecture"] == "amd64"
    raw = tools.skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout
    assert raw.encode() == served.body
    config = tools.skopeo("inspect", "--config", "--raw", "--tls-verify=false", ref).stdout
    assert config.encode() == images.blob(images.multi.config_digest)

    pulled, _ = tools.copy(ref, f"oci:{tmp_path / 'oci'}:v1")
    assert pulled == digest
    assert_same_blobs(images, tmp_path / "oci" / "blobs" / "sha256", images.multi)
    tools.copy(f"{ref[:-3]}@{digest}", f"dir:{tmp_path / 'dir'}")
    assert (tmp_path / "dir" / "manifest.json").read_bytes() == served.body
    assert_same_blobs(images, tmp_path / "dir", images.multi)


def test_list_tags(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    name = repo("tags")
    for tag in ("v1", "v2", "latest"):
        digest, _ = tools.copy(images.oci("multi"), f"docker://{registry.host}/{name}:{tag}")
        assert digest == images.multi.digest
    listed = json.loads(
        tools.skopeo("list-tags", "--tls-verify=false", f"docker://{registry.host}/{name}").stdout
    )
    assert sorted(listed["Tags"]) == ["latest", "v1", "v2"]
    assert sorted(api.tags(name)) == ["latest", "v1", "v2"]


def test_copy_index_all_platforms(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = repo("index")
    ref = f"docker://{registry.host}/{name}:v1"
    digest, _ = tools.copy(images.oci("index"), ref, "--all")
    assert digest == images.index.digest

    served = api.verify(name, "v1", digest)
    assert served.media_type == OCI_INDEX
    for platform, child in images.index.children.items():
        assert served.child(platform)["digest"] == child.digest
        content = api.read_file(name, "v1", PLATFORM_PATH, platform=platform)
        assert content == f"{platform}\n".encode()

    arm = images.index.children["linux/arm64"]
    info = json.loads(
        tools.skopeo(
            "--override-arch", "arm64", "--override-variant", "v8",
            "inspect", "--tls-verify=false", ref,
        ).stdout
    )  # fmt: skip
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == list(arm.layer_digests)

    back, _ = tools.copy(ref, f"oci:{tmp_path / 'oci'}:v1", "--all")
    assert back == digest
    for child in images.index.children.values():
        assert_same_blobs(images, tmp_path / "oci" / "blobs" / "sha256", child)

    # Without --all, skopeo copies the image of this machine's platform only.
    single = repo("single")
    amd = images.index.children["linux/amd64"]
    copied, _ = tools.copy(ref, f"docker://{registry.host}/{single}:v1")
    assert copied == amd.digest
    api.verify(single, "v1", amd.digest)


def test_large_layer(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = repo("large")
    ref = f"docker://{registry.host}/{name}:v1"
    digest, _ = tools.copy(images.oci("large"), ref)
    assert digest == images.large.digest
    api.verify(name, "v1", digest)  # streams and hashes the ~100 MiB layer

    big = images.large.layer_digests[-1]
    # what was not mounted from an earlier test's repository went to the data port
    assert_uploaded_through_data_port(registry, name)
    head = api.head_blob(name, big)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == images.blob_path(big).stat().st_size
    assert head.headers["docker-content-digest"] == big

    tools.copy(ref, f"dir:{tmp_path / 'dir'}")
    assert_same_blobs(images, tmp_path / "dir", images.large)


def test_docker_schema2_conversion(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    name = repo("v2s2")
    digest, _ = tools.copy(
        images.oci("multi"), f"docker://{registry.host}/{name}:v1", "--format", "v2s2"
    )
    served = api.verify(name, "v1", digest)
    assert served.media_type == DOCKER_MANIFEST
    assert served.parsed["config"]["mediaType"] == DOCKER_CONFIG
    assert api.read_file(name, "v1", HELLO_PATH) == HELLO_TEXT.encode()


def test_cross_repository_mount(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    first, second = repo("first"), repo("second")
    tools.copy(images.oci("multi"), f"docker://{registry.host}/{first}:v1")

    # skopeo's blob info cache now knows the layers live in `first`: it mounts them.
    digest, log = tools.copy(images.oci("multi"), f"docker://{registry.host}/{second}:v1")
    assert_mounted(log, images.multi.layer_digests, "... mount OK")
    for layer in images.multi.layer_digests:
        assert api.head_blob(second, layer).status_code == 200
    api.verify(second, "v1", digest)

    # The same through the API: 201 with the blob's digest and location.
    third = repo("third")
    layer = images.multi.layer_digests[0]
    response = api.mount(third, layer, first)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == layer
    assert response.headers["location"].endswith(f"/v2/{third}/blobs/{layer}")
    assert api.head_blob(third, layer).status_code == 200
    assert api.head_blob(third, images.multi.layer_digests[1]).status_code == 404


def test_mount_from_repository_without_the_blob_starts_an_upload(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    source, target = repo("source"), repo("target")
    tools.copy(images.oci("index"), f"docker://{registry.host}/{source}:v1", "--all")
    layer = images.multi.layer_digests[1]  # hello.txt: not in the index's images
    response = api.mount(target, layer, source)
    assert response.status_code == 202, response.text
    assert response.headers.get("location")
    assert api.head_blob(target, layer).status_code == 404


def test_delete_manifest(
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = repo("delete")
    ref = f"docker://{registry.host}/{name}:v1"
    digest, _ = tools.copy(images.oci("multi"), ref)
    api.verify(name, "v1", digest)

    tools.skopeo("delete", "--tls-verify=false", ref)

    assert api.get_manifest(name, digest).status_code == 404
    assert api.get_manifest(name, "v1").status_code == 404
    inspect = tools.skopeo("inspect", "--tls-verify=false", ref, check=False)
    assert inspect.returncode != 0
    assert "manifest unknown" in inspect.stderr.lower(), inspect.stderr
    pull = tools.skopeo(
        "copy", "--src-tls-verify=false", f"{ref[:-3]}@{digest}", f"dir:{tmp_path}", check=False
    )
    assert pull.returncode != 0

    # A deleted manifest can be pushed again (its blobs may still be stored).
    again, _ = tools.copy(images.oci("multi"), ref)
    assert again == digest
    api.verify(name, "v1", digest)
