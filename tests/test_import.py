"""``dockyard import`` from a real CNCF Distribution 2.8.2 storage root.

Content is pushed to a real ``docker-registry`` over HTTP (an OCI image with two tags, a
Docker schema2 image, a two-platform index, an OCI artifact whose subject is the first
image, nested repository names, a layer shared by two repositories, a deleted manifest),
Distribution is stopped and its answers are kept; the root is imported by the command line
into a fresh data directory and a Dockyard serving it must answer the same, byte for byte,
with its blob files hard links to Distribution's. A second run changes no row; a corrupt or
missing blob is reported and skips what needs it, and nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dockyard.registry.importer import ImportReport
from tests.support.oci_client import (
    OCI_MANIFEST,
    Image,
    OciClient,
    explain,
    image_from_blobs,
    random_image,
    sha256_digest,
)
from tests.support.processes import Server, dockyard_command, start_distribution, start_dockyard
from tests.support.seaweed import Seaweed, new_prefix

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("import")]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
EMPTY_CONFIG = b"{}"


@dataclass
class Pushed:
    """What was pushed to Distribution, and what Distribution answered afterwards."""

    root: Path
    manifests: dict[str, list[str]] = field(default_factory=dict)  # repo -> digests
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> digest -> bytes
    catalog: list[str] = field(default_factory=list)
    tags: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[tuple[str, str], tuple[bytes, str, str]] = field(default_factory=dict)
    image_a: Image | None = None
    image_b_tags: tuple[str, ...] = ()
    docker_layer: str = ""
    arm_layer: str = ""
    artifact: str = ""
    index: str = ""
    amd_child: str = ""
    arm_child: str = ""

    def blob(self, repository: str, data: bytes) -> None:
        self.blobs.setdefault(repository, {})[sha256_digest(data)] = data

    def manifest(self, repository: str, body: bytes) -> str:
        digest = sha256_digest(body)
        self.manifests.setdefault(repository, []).append(digest)
        return digest


def _put(client: OciClient, repository: str, reference: str, body: bytes, media_type: str) -> None:
    response = client.put_manifest(repository, reference, body, media_type)
    assert response.status_code == 201, explain(response)


def _push_image(client: OciClient, pushed: Pushed, image: Image, *tags: str) -> str:
    client.push_image(image)
    for blob in image.blobs:
        pushed.blob(image.repository, blob)
    for tag in tags:
        _put(client, image.repository, tag, image.manifest, image.media_type)
    return pushed.manifest(image.repository, image.manifest)


def _docker_image(repository: str, tag: str) -> Image:
    layer = os.urandom(3000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": sha256_digest(layer),
                }
            ],
        },
        indent=3,
    ).encode()
    return Image(repository, tag, config, (layer,), manifest, DOCKER_MANIFEST)


def _fill(client: OciClient, pushed: Pushed) -> None:
    # an OCI image under two tags, and a Docker schema2 image under two others
    image_a = random_image("team/app", "1.0", (5000, 7000))
    _push_image(client, pushed, image_a, "latest")
    pushed.image_a = image_a
    image_b = _docker_image("team/app", "2.0")
    _push_image(client, pushed, image_b, "stable")
    pushed.image_b_tags = ("2.0", "stable")
    pushed.docker_layer = sha256_digest(image_b.layers[0])

    # an artifact (untagged) whose subject is image A: a referrer
    sbom = b'{"spdxVersion": "SPDX-2.3"}'
    for blob in (EMPTY_CONFIG, sbom):
        client.push_blob("team/app", blob)
        pushed.blob("team/app", blob)
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256_digest(EMPTY_CONFIG),
                "size": len(EMPTY_CONFIG),
            },
            "layers": [
                {"mediaType": "application/spdx+json", "digest": sha256_digest(sbom), "size": 27}
            ],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": image_a.digest,
                "size": len(image_a.manifest),
            },
        }
    ).encode()
    pushed.artifact = pushed.manifest("team/app", artifact)
    _put(client, "team/app", pushed.artifact, artifact, OCI_MANIFEST)

    # a manifest pushed and deleted: Distribution keeps its directory, not its link
    gone = random_image("team/app", "gone")
    client.push_image(gone)
    response = client.http.delete(f"/v2/team/app/manifests/{gone.digest}")
    assert response.status_code == 202, explain(response)
    for blob in gone.blobs:  # its blobs stay linked to the repository
        pushed.blob("team/app", blob)

    # a two-platform index in a nested repository
    children = []
    for arch in ("amd64", "arm64"):
        child = random_image("team/tools/multi", arch, (2000,), note=arch)
        client.push_image(child)
        for blob in child.blobs:
            pushed.blob(child.repository, blob)
        children.append((arch, pushed.manifest(child.repository, child.manifest), child))
    pushed.amd_child, pushed.arm_child = children[0][1], children[1][1]
    pushed.arm_layer = sha256_digest(children[1][2].layers[0])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(child.manifest),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for arch, digest, child in children
            ],
        },
        indent=2,
    ).encode()
    pushed.index = pushed.manifest("team/tools/multi", index)
    _put(client, "team/tools/multi", "v1", index, OCI_INDEX)

    # a repository nested inside another one, sharing a layer with it (mounted)
    shared = image_a.layers[0]
    response = client.http.post(
        "/v2/team/app/sub/blobs/uploads/",
        params={"mount": sha256_digest(shared), "from": "team/app"},
    )
    assert response.status_code == 201, explain(response)
    sub_config = json.dumps({"os": "linux", "architecture": "amd64", "sub": True}).encode()
    sub = image_from_blobs("team/app/sub", "edge", sub_config, (shared,))
    client.push_blob(sub.repository, sub_config)
    _put(client, sub.repository, sub.tag, sub.manifest, OCI_MANIFEST)
    pushed.manifest(sub.repository, sub.manifest)
    for blob in sub.blobs:
        pushed.blob(sub.repository, blob)

    # a single-component name
    _push_image(client, pushed, random_image("solo", "1"))


def _answers(url: str, pushed: Pushed) -> tuple[list[str], dict[str, list[str]], dict[Any, Any]]:
    """The registry's catalog, tag lists and manifests (by every tag and digest)."""
    answers: dict[tuple[str, str], tuple[bytes, str, str]] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.get("/v2/_catalog")
        assert response.status_code == 200, explain(response)
        catalog = response.json()["repositories"]
        tags = {}
        for repository in pushed.manifests:
            response = http.get(f"/v2/{repository}/tags/list")
            assert response.status_code == 200, explain(response)
            tags[repository] = sorted(response.json()["tags"] or [])
            for reference in [*tags[repository], *pushed.manifests[repository]]:
                response = http.get(
                    f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT}
                )
                assert response.status_code == 200, explain(response)
                answers[(repository, reference)] = (
                    response.content,
                    response.headers["Content-Type"],
                    response.headers["Docker-Content-Digest"],
                )
    return catalog, tags, answers


def _import(
    root: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [*dockyard_command(), "import", str(root), "--data-dir", str(data_dir), "--json", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    assert result.stdout, stderr
    return result.returncode, json.loads(result.stdout), stderr


def _blob_file(data_dir: Path, digest: str) -> Path:
    return data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]


def _source_blob(root: Path, digest: str) -> Path:
    hex_part = digest[7:]
    return root / "docker/registry/v2/blobs/sha256" / hex_part[:2] / hex_part / "data"


def _rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the registry core keeps, to compare before and after a run (without the
    pull times, which the server records as the other tests pull)."""
    conn = sqlite3.connect(f"file:{data_dir / 'dockyard.db'}?mode=ro", uri=True)

    def select(table: str) -> list[tuple[Any, ...]]:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        kept = ", ".join(c for c in columns if "pull" not in c)
        return sorted(conn.execute(f"SELECT {kept} FROM {table}").fetchall(), key=repr)

    try:
        return {
            table: select(table)
            for table in (
                "repositories",
                "blobs",
                "repository_blobs",
                "manifests",
                "manifest_references",
                "tags",
            )
        }
    finally:
        conn.close()


def _push_to_distribution(directory: Path) -> Pushed:
    root = directory / "root"
    server = start_distribution(root)
    try:
        result = Pushed(root)
        with OciClient(server.url) as client:
            _fill(client, result)
        result.catalog, result.tags, result.answers = _answers(server.url, result)
    finally:
        server.stop()
    return result


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Pushed:
    """The Distribution root, filled once per run: parallel test workers share it (they
    only read it), under a lock in the run's temporary directory."""
    if worker_id == "master":
        return _push_to_distribution(tmp_path_factory.mktemp("distribution"))
    shared = tmp_path_factory.getbasetemp().parent / "import-distribution"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = shared / "pushed.pickle"
        if saved.exists():
            result: Pushed = pickle.loads(saved.read_bytes())
            return result
        result = _push_to_distribution(shared)
        saved.write_bytes(pickle.dumps(result))
        return result


@dataclass
class Imported:
    data_dir: Path
    report: dict[str, Any]
    stderr: str
    server: Server


@pytest.fixture(scope="module")
def imported(pushed: Pushed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    data_dir = tmp_path_factory.mktemp("dockyard") / "data"
    code, report, stderr = _import(pushed.root, data_dir)
    assert code == 0, stderr
    server = start_dockyard(data_dir)
    try:
        yield Imported(data_dir, report, stderr, server)
    finally:
        server.stop()


def _all_blobs(pushed: Pushed) -> dict[str, bytes]:
    return {d: b for blobs in pushed.blobs.values() for d, b in blobs.items()}


def test_the_report_counts_everything_and_skips_nothing(pushed: Pushed, imported: Imported) -> None:
    report = imported.report
    assert report["skipped"] == [] and report["corrupt"] == 0
    assert report["repositories"] == {"found": 4, "changed": 4}
    assert report["manifests"]["imported"] == sum(map(len, pushed.manifests.values())) == 8
    assert report["tags"]["imported"] == sum(map(len, pushed.tags.values())) == 9
    distinct = _all_blobs(pushed)
    assert report["blobs"]["imported"] == report["blobs"]["linked"] == len(distinct)
    assert report["blobs"]["copied"] == report["blobs"]["uploaded"] == 0
    assert report["bytes"]["linked"] == sum(map(len, distinct.values()))
    assert report["repository_blob_links_added"] == sum(map(len, pushed.blobs.values()))
    assert "team/tools/multi: 3 manifests, 3 tags, 4 blobs imported" in imported.stderr


def test_catalog_tags_and_manifests_answer_as_distribution_did(
    pushed: Pushed, imported: Imported
) -> None:
    catalog, tags, answers = _answers(imported.server.url, pushed)
    assert catalog == pushed.catalog == ["solo", "team/app", "team/app/sub", "team/tools/multi"]
    assert tags == pushed.tags
    assert tags["team/app"] == ["1.0", "2.0", "latest", "stable"]
    assert answers.keys() == pushed.answers.keys()
    for key, (body, content_type, digest) in pushed.answers.items():
        assert answers[key] == (body, content_type, digest), key
        assert sha256_digest(body) == digest


def test_every_blob_is_served_byte_for_byte_from_its_repositories(
    pushed: Pushed, imported: Imported
) -> None:
    with OciClient(imported.server.url) as client:
        for repository, blobs in pushed.blobs.items():
            for digest, data in blobs.items():
                assert client.get_blob(repository, digest) == data
        # a blob is served only where Distribution had it linked
        assert client.blob_status("solo", pushed.docker_layer) == 404
        assert client.blob_status("team/app", pushed.docker_layer) == 200


def test_referrers_of_the_image_list_the_artifact(pushed: Pushed, imported: Imported) -> None:
    assert pushed.image_a is not None
    response = httpx.get(
        f"{imported.server.url}/v2/team/app/referrers/{pushed.image_a.digest}", timeout=10
    )
    assert response.status_code == 200, explain(response)
    manifests = response.json()["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in manifests] == [
        (pushed.artifact, "application/spdx+json")
    ]


def test_blob_files_are_hard_links_to_distributions(pushed: Pushed, imported: Imported) -> None:
    for digest in _all_blobs(pushed):
        ours = os.stat(_blob_file(imported.data_dir, digest))
        theirs = os.stat(_source_blob(pushed.root, digest))
        assert (ours.st_ino, ours.st_dev) == (theirs.st_ino, theirs.st_dev), digest
        assert ours.st_nlink >= 2


def test_a_second_run_changes_nothing(pushed: Pushed, imported: Imported) -> None:
    before = _rows(imported.data_dir)
    code, report, _ = _import(pushed.root, imported.data_dir)  # online: the server runs
    assert code == 0
    assert _rows(imported.data_dir) == before
    first = imported.report
    assert report["repositories"] == {"found": 4, "changed": 0}
    for kind in ("manifests", "tags", "blobs"):
        assert report[kind]["imported"] == 0
        assert report[kind]["already_present"] == first[kind]["imported"]
    assert report["repository_blob_links_added"] == 0
    assert report["skipped"] == []
    summary = ImportReport(dry_run=False, manifests_present=8, blobs_present=14).summary()
    assert summary[-1] == "nothing to import: everything was already there"


def test_dry_run_counts_what_a_run_imports_and_stores_nothing(
    pushed: Pushed, imported: Imported, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    code, report, _ = _import(pushed.root, data_dir, "--dry-run")
    assert code == 0
    assert report["dry_run"] is True
    first = imported.report
    for kind in ("manifests", "tags", "blobs"):
        assert report[kind]["imported"] == first[kind]["imported"], kind
    assert report["bytes"]["imported"] == first["bytes"]["imported"]
    assert report["repository_blob_links_added"] == first["repository_blob_links_added"]
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert all(not rows for rows in _rows(data_dir).values())


def test_corrupt_and_missing_blobs_skip_what_needs_them_and_nothing_else(
    pushed: Pushed, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(pushed.root, root)  # copies: the imported registry keeps its files
    corrupt = _source_blob(root, pushed.docker_layer)
    data = bytearray(corrupt.read_bytes())
    data[0] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    _source_blob(root, pushed.arm_layer).unlink()

    data_dir = tmp_path / "data"
    code, report, stderr = _import(root, data_dir)
    assert code == 1, stderr
    assert "1 corrupt item(s) skipped" in stderr
    skipped = {(s["kind"], s["repository"], s["reference"]): s for s in report["skipped"]}
    assert skipped[("blob", "team/app", pushed.docker_layer)]["corrupt"] is True
    assert "hash to" in skipped[("blob", "team/app", pushed.docker_layer)]["reason"]
    assert "missing" in skipped[("blob", "team/tools/multi", pushed.arm_layer)]["reason"]
    assert skipped[("blob", "team/tools/multi", pushed.arm_layer)]["corrupt"] is False
    image_b = sha256_digest(pushed.answers[("team/app", "2.0")][0])
    assert ("manifest", "team/app", image_b) in skipped
    assert ("manifest", "team/tools/multi", pushed.arm_child) in skipped
    assert pushed.arm_child in skipped[("manifest", "team/tools/multi", pushed.index)]["reason"]
    assert {k[2] for k in skipped if k[0] == "tag"} == {*pushed.image_b_tags, "arm64", "v1"}
    assert len(skipped) == 2 + 3 + 4  # two blobs, three manifests, four tags
    assert report["manifests"]["imported"] == 8 - 3
    assert not _blob_file(data_dir, pushed.docker_layer).exists()

    server = start_dockyard(data_dir)
    try:
        with OciClient(server.url) as client:
            assert pushed.image_a is not None
            client.check_image(pushed.image_a)
            assert client.get_manifest("team/app", "2.0").status_code == 404
            assert client.get_manifest("team/tools/multi", "v1").status_code == 404
            assert client.get_manifest("team/tools/multi", pushed.amd_child).status_code == 200
            assert client.blob_status("team/app", pushed.docker_layer) == 404
    finally:
        server.stop()


def test_across_filesystems_blobs_are_copied_and_a_pattern_selects(
    pushed: Pushed, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary directory")
    root = shm / f"dockyard-import-{uuid.uuid4().hex}"
    try:
        shutil.copytree(pushed.root, root)
        data_dir = tmp_path / "data"
        code, report, stderr = _import(root, data_dir, "--repository", "team/tools/*")
        assert code == 0, stderr
        assert report["repositories"]["found"] == 1
        expected = pushed.blobs["team/tools/multi"]
        assert report["blobs"]["copied"] == len(expected) and report["blobs"]["linked"] == 0
        assert report["manifests"]["imported"] == 3
        for digest, data in expected.items():
            path = _blob_file(data_dir, digest)
            assert path.read_bytes() == data
            assert os.stat(path).st_nlink == 1
        names = [row[1] for row in _rows(data_dir)["repositories"]]
        assert names == ["team/tools/multi"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_into_an_s3_store_blobs_are_streamed_through_its_uploads(
    pushed: Pushed, tmp_path: Path, seaweed: Seaweed
) -> None:
    env = seaweed.settings(new_prefix())
    data_dir = tmp_path / "data"
    code, report, stderr = _import(pushed.root, data_dir, "--repository", "team/app*", env=env)
    assert code == 0, stderr
    expected = {**pushed.blobs["team/app"], **pushed.blobs["team/app/sub"]}
    assert report["blobs"]["uploaded"] == report["blobs"]["imported"] == len(expected)
    assert report["blobs"]["linked"] == report["blobs"]["copied"] == 0
    assert report["manifests"]["imported"] == 4 and report["skipped"] == []
    assert not (data_dir / "blobs").exists() or not any((data_dir / "blobs").rglob("*"))
    server = start_dockyard(data_dir, env={**env, "DOCKYARD_S3_REDIRECT": "false"})
    try:
        with OciClient(server.url) as client:
            for repository in ("team/app", "team/app/sub"):
                for digest, data in pushed.blobs[repository].items():
                    assert client.get_blob(repository, digest) == data
            for tag in ("1.0", "2.0"):
                body = pushed.answers[("team/app", tag)][0]
                response = client.http.get(
                    f"/v2/team/app/manifests/{tag}", headers={"Accept": ACCEPT}
                )
                assert response.content == body, explain(response)
    finally:
        server.stop()


def test_a_hostile_or_wrong_source_is_reported_not_crashed_on(tmp_path: Path) -> None:
    from dockyard.cli import main  # in process: no server, nothing to wait for

    runner = CliRunner()
    data_dir = tmp_path / "data"
    not_a_root = tmp_path / "empty"
    not_a_root.mkdir()
    result = runner.invoke(main, ["import", str(not_a_root), "--data-dir", str(data_dir)])
    assert result.exit_code == 2
    assert "not a Distribution storage root" in result.output

    v2 = tmp_path / "root" / "docker" / "registry" / "v2"
    repos = v2 / "repositories"
    (repos / "Bad_Name" / "_manifests").mkdir(parents=True)
    (v2 / "blobs").mkdir(parents=True)
    ok = repos / "ok"
    link = ok / "_manifests" / "tags" / "latest" / "current" / "link"
    link.parent.mkdir(parents=True)
    link.write_bytes(b"\xff\x00not a digest" * 1000)
    (ok / "_manifests" / "tags" / "-bad" / "current").mkdir(parents=True)
    (ok / "_layers" / "sha256" / "abc").mkdir(parents=True)
    (ok / "_layers" / "sha256" / "abc" / "link").write_text("sha256:abc")
    ghost = "sha256:" + hashlib.sha256(b"ghost").hexdigest()
    revision = ok / "_manifests" / "revisions" / "sha256" / ghost[7:] / "link"
    revision.parent.mkdir(parents=True)
    revision.write_text(ghost)
    layer = "sha256:" + hashlib.sha256(b"layer").hexdigest()
    (ok / "_layers" / "sha256" / layer[7:]).mkdir(parents=True)
    (ok / "_layers" / "sha256" / layer[7:] / "link").write_text(layer)

    result = runner.invoke(main, ["import", str(tmp_path / "root"), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "manifests:    0 imported, 0 already present, 1 skipped" in lines
    for expected in (
        "skipped repository Bad_Name: invalid repository name",
        "skipped tag ok: latest: current/link holds",
        "skipped tag ok: -bad: not a valid tag name",
        "skipped blob ok: sha256:abc: not a sha256 or sha512 digest",
        f"skipped manifest ok: {ghost}: missing from the source",
        f"skipped blob ok: {layer}: missing from the source",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
