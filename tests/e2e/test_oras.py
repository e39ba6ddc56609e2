"""oras-py: artifacts with custom types, annotations and files (monolithic and chunked
uploads; a layer large enough to be downloaded through a redirect), artifacts whose
``subject`` is an image, and the referrers API listing them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.oci  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import pytest

from tests.e2e.containers_tools import ContainersTools
from tests.e2e.images import ImageSet
from tests.e2e.layout import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, sha256_bytes
from tests.e2e.oras_client import fast_retries, make_client
from tests.e2e.registry_api import (
    TARGET,
    RegistryAPI,
    assert_downloaded_through_redirect,
    assert_uploaded_through_data_port,
)
from tests.support.processes import Server

pytestmark = pytest.mark.e2e

CONFIG_TYPE = "application/vnd.dockyard.e2e.config.v1+json"
NOTES_TYPE = "application/vnd.dockyard.e2e.notes.v1+txt"
SIGNATURE_TYPE = "application/vnd.dockyard.e2e.signature.v1"
SBOM_TYPE = "application/vnd.dockyard.e2e.sbom.v1+json"
TITLE = "org.opencontainers.image.title"


@pytest.fixture
def oras_client(registry: Server) -> Iterator[oras.provider.Registry]:
    with fast_retries():
        client = make_client(registry.host)
        try:
            yield client
        finally:
            client.session.close()


def pushed_digest(response: Any) -> str:
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    digest: str = response.headers["Docker-Content-Digest"]
    return digest


def test_artifact_push_and_pull(
    oras_client: oras.provider.Registry,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    name = repo("artifact")
    src = tmp_path / "src"
    src.mkdir()
    notes = src / "notes.txt"
    notes.write_text("release notes of an e2e artifact\n")
    payload = src / "payload.bin"
    # over 8 MiB: on Dockyard's defaults, its GET is redirected to the download port
    payload.write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    config = src / "config.json"
    config.write_text('{"kind":"e2e"}')
    annotations = {"org.opencontainers.image.description": "e2e artifact", "io.dockyard.e2e": name}

    response = oras_client.push(
        f"{registry.host}/{name}:v1",
        files=[f"{notes}:{NOTES_TYPE}", str(payload)],
        manifest_config=f"{config}:{CONFIG_TYPE}",
        manifest_annotations=annotations,
        disable_path_validation=True,
        do_chunked=True,  # several PATCHes of 1 MiB with Content-Range
        chunk_size=1024 * 1024,
    )
    digest = pushed_digest(response)
    served = api.verify(name, "v1", digest)
    manifest = served.parsed
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert manifest["config"]["digest"] == sha256_bytes(config.read_bytes())
    assert manifest["annotations"] == annotations
    layers = {layer["annotations"][TITLE]: layer for layer in manifest["layers"]}
    assert layers["notes.txt"]["mediaType"] == NOTES_TYPE
    assert layers["payload.bin"]["digest"] == sha256_bytes(payload.read_bytes())

    out = tmp_path / "out"
    files = oras_client.pull(f"{registry.host}/{name}:v1", outdir=str(out))
    assert sorted(Path(f).name for f in files) == ["notes.txt", "payload.bin"]
    assert (out / "notes.txt").read_bytes() == notes.read_bytes()
    assert (out / "payload.bin").read_bytes() == payload.read_bytes()
    assert oras_client.get_tags(f"{registry.host}/{name}") == ["v1"]
    assert_downloaded_through_redirect(registry, name)
    assert_uploaded_through_data_port(registry, name, payload.stat().st_size)


@dataclass(frozen=True)
class Referrers:
    """An image and two artifacts that refer to it."""

    repo: str
    subject: str
    signature: str  # pushed with oras' push(subject=...), typed by its config media type
    signature_response_headers: dict[str, str]
    sbom: str  # an OCI 1.1 artifact: artifactType + empty config


def push_referrers(
    client: oras.provider.Registry,
    tools: ContainersTools,
    images: ImageSet,
    registry: Server,
    name: str,
    work: Path,
) -> Referrers:
    tools.copy(images.oci("multi"), f"docker://{registry.host}/{name}:image")
    subject = oras.oci.Subject(OCI_MANIFEST, images.multi.digest, images.multi.size)
    work.mkdir()
    signature = work / "signature.sig"
    signature.write_bytes(b"not really a signature\n")
    config = work / "sig-config.json"
    config.write_text("{}")
    response = client.push(
        f"{registry.host}/{name}:signature",
        files=[str(signature)],
        manifest_config=f"{config}:{SIGNATURE_TYPE}",
        manifest_annotations={"io.dockyard.e2e.kind": "signature"},
        subject=subject,
        disable_path_validation=True,
    )
    signature_digest = pushed_digest(response)

    # An artifact in the OCI 1.1 shape, with oras-py's lower-level calls.
    container = client.get_container(f"{registry.host}/{name}:sbom")
    sbom = work / "sbom.json"
    sbom.write_text('{"packages":["busybox"]}')
    empty = work / "empty.json"
    empty.write_text("{}")
    empty_config = {"mediaType": OCI_EMPTY, "digest": sha256_bytes(b"{}"), "size": 2}
    sbom_layer = oras.oci.NewLayer(str(sbom), media_type="application/json")
    for path, descriptor in ((empty, empty_config), (sbom, sbom_layer)):
        assert client.upload_blob(str(path), container, descriptor).status_code in (200, 201)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": empty_config,
        "layers": [sbom_layer],
        "subject": {
            "mediaType": OCI_MANIFEST,
            "digest": images.multi.digest,
            "size": images.multi.size,
        },
        "annotations": {"io.dockyard.e2e.kind": "sbom"},
    }
    sbom_digest = pushed_digest(client.upload_manifest(manifest, container))
    return Referrers(
        name, images.multi.digest, signature_digest, dict(response.headers), sbom_digest
    )


def test_artifacts_with_subject(
    oras_client: oras.provider.Registry,
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    refs = push_referrers(oras_client, tools, images, registry, repo("subject"), tmp_path / "w")
    signature = api.verify(refs.repo, "signature", refs.signature).parsed
    assert signature["subject"]["digest"] == refs.subject
    assert signature["config"]["mediaType"] == SIGNATURE_TYPE
    sbom = api.verify(refs.repo, "sbom", refs.sbom).parsed
    assert sbom["artifactType"] == SBOM_TYPE
    assert sbom["subject"]["digest"] == refs.subject
    pulled = oras_client.pull(f"{registry.host}/{refs.repo}:sbom", outdir=str(tmp_path / "out"))
    assert [Path(p).read_text() for p in pulled] == ['{"packages":["busybox"]}']


@pytest.mark.xfail(
    TARGET == "distribution",
    reason="Distribution 2.8.2 predates OCI 1.1: no referrers API, no OCI-Subject header",
    strict=True,
)
def test_referrers_api_lists_artifacts(
    oras_client: oras.provider.Registry,
    tools: ContainersTools,
    images: ImageSet,
    api: RegistryAPI,
    registry: Server,
    repo: Callable[[str], str],
    tmp_path: Path,
) -> None:
    refs = push_referrers(oras_client, tools, images, registry, repo("referrers"), tmp_path / "w")
    headers = {k.lower(): v for k, v in refs.signature_response_headers.items()}
    assert headers.get("oci-subject") == refs.subject

    response = api.referrers(refs.repo, refs.subject)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == OCI_INDEX
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    listed = {entry["digest"]: entry for entry in index["manifests"]}
    assert set(listed) == {refs.signature, refs.sbom}
    assert listed[refs.signature]["artifactType"] == SIGNATURE_TYPE  # from config.mediaType
    assert listed[refs.signature]["annotations"] == {"io.dockyard.e2e.kind": "signature"}
    assert listed[refs.sbom]["artifactType"] == SBOM_TYPE
    assert listed[refs.sbom]["annotations"] == {"io.dockyard.e2e.kind": "sbom"}
    for digest, entry in listed.items():
        body = api.manifest(refs.repo, digest).body
        assert entry["mediaType"] == OCI_MANIFEST
        assert entry["size"] == len(body)

    filtered = api.referrers(refs.repo, refs.subject, artifact_type=SBOM_TYPE)
    assert filtered.status_code == 200, filtered.text
    digests = [entry["digest"] for entry in filtered.json()["manifests"]]
    if "artifactType" in filtered.headers.get("oci-filters-applied", ""):
        assert digests == [refs.sbom]
    else:  # filtering is optional; unfiltered results must then be complete
        assert set(digests) == {refs.signature, refs.sbom}

    # A digest nothing refers to: an empty index, never a 404.
    other = api.referrers(refs.repo, images.multi.config_digest)
    assert other.status_code == 200, other.text
    assert json.loads(other.content)["manifests"] == []
