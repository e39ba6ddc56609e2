"""Several stateless nodes on PostgreSQL, S3 (SeaweedFS) and Redis: any request may land on
any node, and every node sees every committed change at once."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.scaleout import Cluster, running_cluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), nodes=3) as running:
        yield running


def node(cluster: Cluster, index: int) -> httpx.Client:
    return httpx.Client(base_url=cluster.nodes[index].url, timeout=60)


def push_blob(client: httpx.Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.post(
        f"/v2/{name}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return digest


def manifest_for(config: str, config_size: int, layer: str, layer_size: int, note: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer,
                    "size": layer_size,
                }
            ],
            "annotations": {"note": note},
        }
    ).encode()


def test_upload_started_on_a_continued_on_b_finished_on_c(cluster: Cluster) -> None:
    a, b, c = (node(cluster, i) for i in range(3))
    data = [os.urandom(6 * 1024 * 1024 + 3), os.urandom(5 * 1024 * 1024), os.urandom(777)]
    blob = b"".join(data)
    digest = sha256(blob)
    started = a.post("/v2/nodes/upload/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["location"]
    first = b.patch(
        location,
        content=data[0],
        headers={
            "Content-Range": f"0-{len(data[0]) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert first.status_code == 202, first.text
    assert first.headers["range"] == f"0-{len(data[0]) - 1}"
    offset = len(data[0])
    second = c.patch(
        first.headers["location"],
        content=data[1],
        headers={
            "Content-Range": f"{offset}-{offset + len(data[1]) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert second.status_code == 202, second.text
    status = a.get(second.headers["location"])
    assert status.status_code == 204
    assert status.headers["range"] == f"0-{len(data[0]) + len(data[1]) - 1}"
    finished = c.put(
        second.headers["location"],
        params={"digest": digest},
        content=data[2],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert finished.status_code == 201, finished.text
    for client in (a, b, c):
        got = client.get(f"/v2/nodes/upload/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == blob


def test_a_tag_pushed_on_one_node_is_pulled_from_every_other_at_once(cluster: Cluster) -> None:
    a, b, c = (node(cluster, i) for i in range(3))
    name = "nodes/tags"
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    config_digest = push_blob(a, name, config)
    layer_digest = push_blob(a, name, layer)
    for round_number in range(5):
        writer = (a, b, c)[round_number % 3]
        body = manifest_for(config_digest, len(config), layer_digest, len(layer), str(round_number))
        # every node has the tag's previous value cached: a GET on each first
        for reader in (a, b, c):
            reader.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        put = writer.put(
            f"/v2/{name}/manifests/latest", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert put.status_code == 201, put.text
        for reader in (a, b, c):
            got = reader.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200
            assert got.headers["docker-content-digest"] == sha256(body), (round_number, reader)
            assert got.content == body


def test_a_delete_on_one_node_is_seen_by_the_others(cluster: Cluster) -> None:
    a, b, c = (node(cluster, i) for i in range(3))
    name = "nodes/delete"
    config = b'{"architecture":"arm64","os":"linux"}'
    layer = os.urandom(1024)
    config_digest = push_blob(b, name, config)
    layer_digest = push_blob(b, name, layer)
    body = manifest_for(config_digest, len(config), layer_digest, len(layer), "to delete")
    assert (
        b.put(
            f"/v2/{name}/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
        ).status_code
        == 201
    )
    for reader in (a, c):  # cached on both
        assert reader.get(f"/v2/{name}/manifests/v1").status_code == 200
    assert b.delete(f"/v2/{name}/manifests/{sha256(body)}").status_code == 202
    for reader in (a, b, c):
        assert reader.get(f"/v2/{name}/manifests/v1").status_code == 404
        assert reader.get(f"/v2/{name}/manifests/{sha256(body)}").status_code == 404


def test_concurrent_pushes_of_one_blob_through_every_node(cluster: Cluster) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = sha256(data)

    def push(index: int) -> int:
        with node(cluster, index % 3) as client:
            response = client.post(
                "/v2/nodes/race/blobs/uploads/",
                params={"digest": digest},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            return response.status_code

    with ThreadPoolExecutor(9) as pool:
        statuses = list(pool.map(push, range(9)))
    assert statuses == [201] * 9
    for index in range(3):
        with node(cluster, index) as client:
            assert client.get(f"/v2/nodes/race/blobs/{digest}").content == data


def test_worker_and_gc_run_beside_the_nodes(cluster: Cluster) -> None:
    """`dockyard gc` as one more node: it frees an unreferenced blob in S3 and keeps the
    referenced ones, which every node still serves."""
    a = node(cluster, 0)
    kept = push_blob(a, "nodes/gc", os.urandom(2048))
    config = b'{"os":"linux"}'
    config_digest = push_blob(a, "nodes/gc", config)
    body = manifest_for(config_digest, len(config), kept, 2048, "kept")
    assert (
        a.put(
            "/v2/nodes/gc/manifests/keep", content=body, headers={"Content-Type": OCI_MANIFEST}
        ).status_code
        == 201
    )
    garbage = push_blob(a, "nodes/gc", os.urandom(4096))
    assert a.delete(f"/v2/nodes/gc/blobs/{garbage}").status_code == 202

    result = cluster.dockyard("gc", "--grace-seconds", "0")
    assert result.returncode == 0, result.stderr + result.stdout
    keys = cluster.seaweed.client().list_objects_v2(
        Bucket=cluster.seaweed.bucket, Prefix=cluster.env["DOCKYARD_S3_PREFIX"]
    )
    stored = {item["Key"].rsplit("/", 1)[-1] for item in keys.get("Contents", [])}
    assert garbage.split(":", 1)[1] not in stored
    assert kept.split(":", 1)[1] in stored
    for index in range(3):
        with node(cluster, index) as client:
            assert client.get(f"/v2/nodes/gc/blobs/{kept}").status_code == 200
            assert client.get("/v2/nodes/gc/manifests/keep").status_code == 200
