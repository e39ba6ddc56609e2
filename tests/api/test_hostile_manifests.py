"""Manifests no registry may store: broken JSON, wrong types, bad descriptors, lies about
the media type, bodies cut short. Each is refused with the spec's error, nothing of it
becomes visible, and what was stored before stays intact."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.content import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Manifest,
    make_image,
    serialize,
)
from tests.api.protocol import (
    Sentinel,
    assert_error,
    manifest_exists,
    push_blobs,
    push_image,
    put_manifest,
    raw_exchange,
    raw_status,
    request_head,
)
from tests.api.server_limits import CHUNKED_BODY_ERRORS_INVISIBLE
from tests.support.processes import Server

MIB = 1024 * 1024


@pytest.fixture
def image(client: httpx.Client, repo: str) -> Image:
    """An image whose blobs are in ``repo`` (so only the manifest itself can be wrong)."""
    pushed = make_image(layer_count=1)
    push_blobs(client, repo, pushed.blobs)
    return pushed


def refused(
    client: httpx.Client,
    repo: str,
    body: bytes,
    content_type: str = OCI_MANIFEST,
    *codes: str,
) -> None:
    response = client.put(
        f"/v2/{repo}/manifests/hostile", content=body, headers={"Content-Type": content_type}
    )
    assert_error(response, 400, *(codes or ("MANIFEST_INVALID",)))
    assert not manifest_exists(client, repo, "hostile")
    assert not manifest_exists(client, repo, Manifest(body, content_type).digest)


DISTRIBUTION_500 = "answers 500 (or stores it) instead of MANIFEST_INVALID"
NOT_MANIFESTS = [
    b"",
    b"{",
    b"[]",
    pytest.param(b"null", marks=pytest.mark.dockyard_only(DISTRIBUTION_500)),
    b'"string"',
    b"42",
    b"true",
    b"\xff\xfe\x00garbage",
    pytest.param(b"{}", marks=pytest.mark.dockyard_only(DISTRIBUTION_500)),
    b'{"schemaVersion": 2} trailing',
    b"\x00" * 100,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
]


@pytest.mark.parametrize("body", NOT_MANIFESTS, ids=lambda b: repr(b[:16]))
def test_not_a_manifest(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image, body: bytes
) -> None:
    refused(client, repo, body)
    sentinel.assert_intact(client)


Mutation = Callable[[dict[str, Any]], None]


def set_path(path: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def delete_key(key: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        del document[key]

    return mutate


MUTATIONS: dict[str, Mutation] = {
    "schemaVersion string": set_path("schemaVersion", "2"),
    "schemaVersion 3": set_path("schemaVersion", 3),
    "schemaVersion -1": set_path("schemaVersion", -1),
    "schemaVersion null": set_path("schemaVersion", None),
    "no schemaVersion": delete_key("schemaVersion"),
    "no config": delete_key("config"),
    "config string": set_path("config", "sha256:abc"),
    "config list": set_path("config", []),
    "layers object": set_path("layers", {"0": {}}),
    "layers string": set_path("layers", "layers"),
    "layer string": set_path("layers.0", "sha256:abc"),
    "layer null": set_path("layers.0", None),
    "digest sha256:zz": set_path("layers.0.digest", "sha256:zz"),
    "digest md5": set_path("layers.0.digest", "md5:d41d8cd98f00b204e9800998ecf8427e"),
    "digest short": set_path("layers.0.digest", "sha256:" + "a" * 63),
    "digest uppercase": set_path("layers.0.digest", "sha256:" + "A" * 64),
    "digest number": set_path("layers.0.digest", 12345),
    "digest missing": lambda d: d["layers"][0].pop("digest"),
    "digest path": set_path("layers.0.digest", "sha256:../../../../etc/passwd"),
    "size negative": set_path("layers.0.size", -1),
    "size string": set_path("layers.0.size", "512"),
    "size float": set_path("layers.0.size", 1.5),
    "size huge": set_path("layers.0.size", 2**70),
    "size bool": set_path("layers.0.size", True),
    "size missing": lambda d: d["layers"][0].pop("size"),
    "mediaType number": set_path("layers.0.mediaType", 7),
    "mediaType missing": lambda d: d["layers"][0].pop("mediaType"),
    "mediaType garbage": set_path("layers.0.mediaType", "not a media type"),
    "config digest invalid": set_path("config.digest", "sha256:zz"),
    "annotations list": set_path("annotations", ["a", "b"]),
    "annotation value number": set_path("annotations", {"a": 1}),
    "subject string": set_path("subject", "sha256:" + "a" * 64),
    "subject bad digest": set_path(
        "subject", {"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 2}
    ),
    "artifactType number": set_path("artifactType", 5),
}


# Mutations Distribution 2.8.2 stores, or answers with a 500.
DISTRIBUTION_MISSES = {
    "artifactType number",
    "config digest invalid",
    "digest md5",
    "digest path",
    "digest sha256:zz",
    "digest short",
    "mediaType garbage",
    "mediaType missing",
    "no schemaVersion",
    "schemaVersion -1",
    "schemaVersion 3",
    "schemaVersion null",
    "size missing",
    "size negative",
    "subject bad digest",
    "subject string",
}


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(name, marks=pytest.mark.dockyard_only(DISTRIBUTION_500))
        if name in DISTRIBUTION_MISSES
        else name
        for name in sorted(MUTATIONS)
    ],
)
def test_malformed_image_manifest(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image, mutation: str
) -> None:
    document = image.manifest.document()
    MUTATIONS[mutation](document)
    refused(
        client,
        repo,
        serialize(document),
        OCI_MANIFEST,
        "MANIFEST_INVALID",
        "DIGEST_INVALID",
        "SIZE_INVALID",
    )
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    "literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"99999999999999999999999999999"]
)
def test_non_json_numbers_as_size(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image, literal: bytes
) -> None:
    body = serialize(image.manifest.document())
    body = body.replace(f'"size" :  {image.layers[0].size}'.encode(), b'"size" :  ' + literal)
    assert literal in body
    refused(client, repo, body, OCI_MANIFEST, "MANIFEST_INVALID", "SIZE_INVALID")
    sentinel.assert_intact(client)


@pytest.mark.dockyard_only(DISTRIBUTION_500)
def test_index_with_malformed_children(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    push_image(client, repo, image, image.manifest.digest)
    good = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [image.manifest.descriptor()]}
    for bad in (
        {**good, "manifests": {"0": image.manifest.descriptor()}},
        {**good, "manifests": "x"},
        {**good, "manifests": [None]},
        {**good, "manifests": [{**image.manifest.descriptor(), "digest": "sha256:zz"}]},
        {**good, "manifests": [{**image.manifest.descriptor(), "size": -5}]},
        {**good, "schemaVersion": 1},
    ):
        refused(
            client,
            repo,
            serialize(bad),
            OCI_INDEX,
            "MANIFEST_INVALID",
            "DIGEST_INVALID",
            "SIZE_INVALID",
        )
    sentinel.assert_intact(client)


@pytest.mark.parametrize(
    ("declared", "pushed_as"),
    [
        (OCI_MANIFEST, DOCKER_MANIFEST),
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (OCI_INDEX, OCI_MANIFEST),
        (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
    ],
)
def test_media_type_field_contradicts_content_type(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image, declared: str, pushed_as: str
) -> None:
    document = image.manifest.document()
    document["mediaType"] = declared
    refused(client, repo, serialize(document), pushed_as)
    sentinel.assert_intact(client)


def test_index_pushed_as_image_manifest(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    push_image(client, repo, image, image.manifest.digest)
    index = {"schemaVersion": 2, "manifests": [image.manifest.descriptor()]}
    refused(client, repo, serialize(index), OCI_MANIFEST)
    sentinel.assert_intact(client)


@pytest.mark.dockyard_only("refuses a big manifest with 400, not 413")
def test_oversized_manifest_streamed_without_length(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "pad": "'
        for _ in range(6):
            yield b"p" * MIB
        yield b'"}'

    response = client.put(
        f"/v2/{repo}/manifests/huge", content=body(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413)
    assert not manifest_exists(client, repo, "huge")
    sentinel.assert_intact(client)


@pytest.mark.dockyard_only(DISTRIBUTION_500)
def test_oversized_manifest_declared_length(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str
) -> None:
    """A 1 GiB Content-Length must be refused from the headers, not read."""
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/huge",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Content-Length", str(1024 * MIB))],
    )
    reply = raw_exchange(registry.url, head + b'{"schemaVersion": 2', half_close=False, timeout=20)
    assert raw_status(reply) == 413, reply[:300]
    assert not manifest_exists(client, repo, "huge")
    sentinel.assert_intact(client)


def test_truncated_manifest_body(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    """Content-Length promises more than is sent: the part sent is a complete, valid
    manifest, and still must not be stored."""
    body = image.manifest.body
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/cut",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Content-Length", str(len(body) + 100))],
    )
    reply = raw_exchange(registry.url, head + body)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    assert not manifest_exists(client, repo, "cut")
    assert not manifest_exists(client, repo, image.manifest.digest)
    sentinel.assert_intact(client)


def test_truncated_manifest_body_by_digest(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    body = image.manifest.body
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/{image.manifest.digest}",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Content-Length", str(len(body) * 2))],
    )
    reply = raw_exchange(registry.url, head + body)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    assert not manifest_exists(client, repo, image.manifest.digest)
    sentinel.assert_intact(client)


@CHUNKED_BODY_ERRORS_INVISIBLE
def test_chunked_manifest_body_cut_short(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    """Transfer-Encoding: chunked, the whole manifest in one chunk, and the connection ends
    before the last (empty) chunk: the request is incomplete and must not be stored."""
    body = image.manifest.body
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/cut",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Transfer-Encoding", "chunked")],
    )
    reply = raw_exchange(registry.url, head + f"{len(body):x}\r\n".encode() + body + b"\r\n")
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    assert not manifest_exists(client, repo, "cut")
    assert not manifest_exists(client, repo, image.manifest.digest)
    sentinel.assert_intact(client)


@CHUNKED_BODY_ERRORS_INVISIBLE
def test_broken_chunked_manifest_body(
    registry: Server, client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    body = image.manifest.body
    head = request_head(
        "PUT",
        f"/v2/{repo}/manifests/chunky",
        registry.host,
        [("Content-Type", OCI_MANIFEST), ("Transfer-Encoding", "chunked")],
    )
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\nzz\r\ngarbage\r\n"
    reply = raw_exchange(registry.url, head + chunked)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    assert not manifest_exists(client, repo, "chunky")
    sentinel.assert_intact(client)


@pytest.mark.dockyard_only(DISTRIBUTION_500)
def test_hostile_pushes_do_not_disturb_a_good_one(
    client: httpx.Client, sentinel: Sentinel, repo: str, image: Image
) -> None:
    response = put_manifest(client, repo, "good", image.manifest)
    assert response.status_code == 201
    document = image.manifest.document()
    document["layers"][0]["digest"] = "sha256:zz"
    bad = Manifest(serialize(document), OCI_MANIFEST)
    assert put_manifest(client, repo, "good", bad).status_code == 400
    pulled = client.get(f"/v2/{repo}/manifests/good", headers={"Accept": OCI_MANIFEST})
    assert pulled.content == image.manifest.body
    assert json.loads(pulled.content) == image.manifest.document()
    sentinel.assert_intact(client)
