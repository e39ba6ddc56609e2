"""containerd (ctr): pull and push over plain HTTP, single image and ``--all-platforms``
index, mounts of pulled content into another repository, uploads of imported content."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.client_logs import assert_mounted
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.daemons import Containerd
from tests.e2e.images import HELLO_PATH, HELLO_TEXT, PLATFORM_PATH, ImageSet
from tests.e2e.registry_api import RegistryAPI, assert_uploaded_through_data_port
from tests.support.processes import Server

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("containerd")]

PLAIN = ["--plain-http"]


def image_digest(containerd: Containerd, namespace: str, ref: str) -> str:
    """The digest ``ctr images ls`` shows for ``ref``."""
    for line in containerd.ctr(namespace, "images", "ls").stdout.splitlines()[1:]:
        columns = line.split()
        if columns and columns[0] == ref:
            return columns[2]
    raise AssertionError(f"{ref} not in the containerd image list")


def pull(containerd: Containerd, namespace: str, ref: str, *flags: str) -> str:
    """``ctr images pull``; returns its HTTP dump."""
    result = containerd.ctr(
        namespace, "images", "pull", *PLAIN, "--http-dump", "--snapshotter", "native",
        *flags, ref,
    )  # fmt: skip
    return result.stderr + result.stdout


def assert_fetched(dump: str, repo: str, digests: list[str]) -> None:
    """Each blob was downloaded (containerd shares blobs between namespaces: a blob left
    by another test would not be fetched again)."""
    missing = [d for d in digests if f"GET /v2/{repo}/blobs/{d} " not in dump]
    assert not missing, f"containerd did not GET {missing}:\n{dump[-4000:]}"


def push_with_dump(containerd: Containerd, namespace: str, remote: str, local: str) -> str:
    result = containerd.ctr(namespace, "images", "push", *PLAIN, "--http-dump", remote, local)
    return result.stderr + result.stdout


def test_pull_then_push_mounts(
    containerd: Containerd,
    namespace: str,
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    source_repo = repo("source")
    source = f"{registry.host}/{source_repo}:v1"
    tools.copy(images.oci("multi"), f"docker://{source}")

    dump = pull(containerd, namespace, source)
    assert_fetched(dump, source_repo, list(images.multi.blob_digests))
    assert image_digest(containerd, namespace, source) == images.multi.digest
    for digest in (images.multi.digest, *images.multi.blob_digests):
        assert containerd.content(namespace, digest) == images.blob(digest)

    # containerd remembers where it pulled each blob from: it mounts instead of uploading.
    target = repo("target")
    dump = push_with_dump(containerd, namespace, f"{registry.host}/{target}:v1", source)
    assert_mounted(dump, images.multi.blob_digests, "HTTP/1.1 201 Created")
    assert f"PUT /v2/{target}/blobs/uploads/" not in dump
    served = api.verify(target, "v1", images.multi.digest)
    assert served.body == images.blob(images.multi.digest)


def test_all_platforms_index(
    containerd: Containerd,
    namespace: str,
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    source_repo = repo("source")
    source = f"{registry.host}/{source_repo}:v1"
    tools.copy(images.oci("index"), f"docker://{source}", "--all")

    dump = pull(containerd, namespace, source, "--all-platforms")
    blobs = {d for child in images.index.children.values() for d in child.blob_digests}
    assert_fetched(dump, source_repo, sorted(blobs))
    assert image_digest(containerd, namespace, source) == images.index.digest
    arm = images.index.children["linux/arm64"]
    for digest in (arm.digest, *arm.blob_digests):
        assert containerd.content(namespace, digest) == images.blob(digest)

    target = repo("target")
    dump = push_with_dump(containerd, namespace, f"{registry.host}/{target}:v1", source)
    assert_mounted(dump, sorted(blobs), "HTTP/1.1 201 Created")
    served = api.verify(target, "v1", images.index.digest)
    assert served.is_index
    content_arm = api.read_file(target, "v1", PLATFORM_PATH, platform="linux/arm64")
    assert content_arm == b"linux/arm64\n"


def test_import_then_push_uploads(
    containerd: Containerd,
    namespace: str,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
) -> None:
    name = repo("imported")
    base = f"{registry.host}/{name}"
    containerd.ctr(
        namespace, "images", "import", "--base-name", base, "--all-platforms",
        "--snapshotter", "native", str(images.oci_archive),
    )  # fmt: skip
    for tag, digest in (("multi", images.multi.digest), ("index", images.index.digest)):
        assert image_digest(containerd, namespace, f"{base}:{tag}") == digest
        # Imported content has no source to mount from: containerd uploads (POST, PUT).
        containerd.ctr(namespace, "images", "push", *PLAIN, f"{base}:{tag}")
        api.verify(name, tag, digest)
    assert api.read_file(name, "multi", HELLO_PATH) == HELLO_TEXT.encode()
    assert sorted(api.tags(name)) == ["index", "multi"]
    assert_uploaded_through_data_port(registry, name)
