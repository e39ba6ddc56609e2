"""Real clients pulling ``busybox`` from "Docker Hub" through Dockyard as their mirror, set
up exactly as docs/mirror.md says: dockerd with ``registry-mirrors`` in daemon.json, podman
with a ``[[registry.mirror]]`` in registries.conf, containerd with a ``hosts.toml``.

There is no internet here: "Docker Hub" is the built-in upstream ``hub`` pointed at a local
CNCF Distribution (with htpasswd) that holds the e2e test image as ``library/busybox``. The
clients' own fallback is the real Docker Hub, which they cannot reach: a pull that succeeds
came through Dockyard, and the tests also find each client's requests in Dockyard's access
log and check that the upstream sent each piece of content once in all.

One upstream and one Dockyard serve the whole module; each client has its own daemon or
store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.client_logs import docker_pulled_digest
from tests.e2e.containers_tools import ContainersTools, make_containers_tools
from tests.e2e.daemons import running_containerd, running_dockerd
from tests.e2e.images import HELLO_PATH, HELLO_TEXT, ImageSet, shared_image_set
from tests.mirror.conftest import (
    HUB_PASSWORD,
    HUB_USER,
    start_mirror,
    upstream_gets,
    write_htpasswd,
)
from tests.support.processes import Server, start_distribution

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("mirror-clients")]

IMAGE = "library/busybox"


@dataclass
class Setup:
    images: ImageSet
    upstream: Server
    upstream_root: Path
    htpasswd: Path
    mirror: Server
    tools: ContainersTools

    def restart_upstream(self) -> None:
        """Start the upstream again on its port, over the same storage."""
        self.upstream = start_distribution(
            self.upstream_root,
            port=int(self.upstream.url.rsplit(":", 1)[1]),
            htpasswd=self.htpasswd,
        )

    def requests(self, agent: str) -> list[str]:
        """``"GET <path> <status>"`` of every request Dockyard logged for a client whose
        User-Agent contains ``agent``."""
        found = []
        for line in self.mirror.log().splitlines():
            if not line.startswith('{"ts"') or '"route"' not in line:
                continue
            entry = json.loads(line)
            if agent in (entry.get("ua") or ""):
                found.append(f"{entry['method']} {entry['path']} {entry['status']}")
        return found

    def assert_pulled_through(self, agent: str, name: str = IMAGE) -> None:
        """The client fetched the manifest and every blob of the image from Dockyard, and
        the upstream sent each of them once in all (whichever client asked first)."""
        seen = self.requests(agent)
        multi = self.images.multi
        wanted = [f"GET /v2/{name}/blobs/{digest} 200" for digest in multi.blob_digests]
        manifests = [r for r in seen if re.fullmatch(rf"GET /v2/{name}/manifests/\S+ 200", r)]
        assert manifests, seen
        missing = [w for w in wanted if w not in seen]
        assert not missing, f"not pulled through Dockyard: {missing}\n{seen}"
        fetched = upstream_gets(self.upstream, IMAGE)
        for digest in multi.blob_digests:
            assert fetched.count(f"/v2/{IMAGE}/blobs/{digest}") == 1, fetched
        assert fetched.count(f"/v2/{IMAGE}/manifests/latest") == 1, fetched


def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    images = shared_image_set(_run_dir(tmp_path_factory) / "e2e-images")
    root = tmp_path_factory.mktemp("mirror-clients")
    htpasswd = root / "hub.htpasswd"
    write_htpasswd(htpasswd, HUB_USER, HUB_PASSWORD)
    upstream = start_distribution(root / "hub", htpasswd=htpasswd)
    mirror: Server | None = None
    setup: Setup | None = None
    try:
        tools = make_containers_tools(root / "containers", "127.0.0.1")
        # the image the clients know as busybox, in "Docker Hub"
        tools.skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"{HUB_USER}:{HUB_PASSWORD}",
            images.oci("multi"),
            f"docker://{upstream.host}/{IMAGE}:latest",
        )
        hub = {
            "url": upstream.url,
            "username": HUB_USER,
            "password": HUB_PASSWORD,
            "public": True,
            "tag_ttl_seconds": 0,  # every tag pull checks the upstream (or serves stale)
        }
        mirror = start_mirror(root / "mirror", {"hub": hub}, mirror_upstream="hub")
        setup = Setup(images, upstream, root / "hub", htpasswd, mirror, tools)
        yield setup
    finally:
        if mirror is not None:
            mirror.stop()
        (setup.upstream if setup is not None else upstream).stop()


def test_docker_pulls_busybox_through_the_mirror(
    setup: Setup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("mirror-dockerd")
    with running_dockerd(root, [], registry_mirrors=[setup.mirror.url]) as dockerd:
        output = dockerd.docker("pull", "busybox").stdout
        assert docker_pulled_digest(output) == setup.images.multi.digest
        assert "docker.io/library/busybox:latest" in output
        hello = dockerd.docker("run", "--rm", "--network", "none", "busybox", "echo", "hi")
        assert hello.stdout == "hi\n"
        setup.assert_pulled_through("docker/")

        # the upstream stopped: the image still pulls, from the cache
        dockerd.docker("rmi", "busybox")
        setup.upstream.stop()
        try:
            output = dockerd.docker("pull", "busybox").stdout
            assert docker_pulled_digest(output) == setup.images.multi.digest
            assert "Already exists" not in output, output
            hello = dockerd.docker(
                "run", "--rm", "--network", "none", "busybox", "cat", f"/{HELLO_PATH}"
            )
            assert hello.stdout == HELLO_TEXT
        finally:
            setup.restart_upstream()
        blob_gets = [r for r in setup.requests("docker/") if "/blobs/" in r]
        assert len(blob_gets) == 2 * len(setup.images.multi.blob_digests), blob_gets


def test_podman_pulls_through_its_registries_conf_mirror(setup: Setup) -> None:
    tools = setup.tools
    registries = Path(tools.env["CONTAINERS_REGISTRIES_CONF"])
    for location, name in (
        (setup.mirror.host, IMAGE),
        (f"{setup.mirror.host}/hub", f"hub/{IMAGE}"),
    ):
        registries.write_text(
            "unqualified-search-registries = []\n"
            "[[registry]]\n"
            'prefix = "docker.io"\n'
            'location = "docker.io"\n'
            "[[registry.mirror]]\n"
            f'location = "{location}"\n'
            "insecure = true\n"
        )
        tools.podman("rmi", "--all", "--force")
        pulled = tools.podman("--log-level=debug", "pull", "docker.io/library/busybox:latest")
        log = pulled.stderr
        # containers/image asks the mirror for the name under its location, without ?ns=
        assert f"GET http://{setup.mirror.host}/v2/{name}/manifests/latest" in log, log[-4000:]
        assert "ns=docker.io" not in log
        digest = tools.podman(
            "image", "inspect", "--format", "{{.Digest}}", "docker.io/library/busybox:latest"
        ).stdout.strip()
        assert digest == setup.images.multi.digest
        setup.assert_pulled_through("containers/", name)


def test_containerd_pulls_through_its_hosts_toml(
    setup: Setup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("mirror-containerd")
    hosts = root / "certs.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n'
        "\n"
        f'[host."{setup.mirror.url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    with running_containerd(root / "daemon") as containerd:
        result = containerd.ctr(
            "mirror", "images", "pull", "--hosts-dir", str(hosts), "--http-dump",
            "--snapshotter", "native", "docker.io/library/busybox:latest",
        )  # fmt: skip
        dump = result.stderr + result.stdout
        # containerd names the registry it wanted: ?ns=docker.io on every request
        multi = setup.images.multi
        for request in (
            f"HEAD /v2/{IMAGE}/manifests/latest",
            f"GET /v2/{IMAGE}/manifests/{multi.digest}",
            *(f"GET /v2/{IMAGE}/blobs/{digest}" for digest in multi.blob_digests),
        ):
            assert f"{request}?ns=docker.io HTTP/1.1" in dump, dump[-4000:]
        listed = containerd.ctr("mirror", "images", "ls").stdout.splitlines()[1:]
        digests = {line.split()[0]: line.split()[2] for line in listed if line.strip()}
        assert digests["docker.io/library/busybox:latest"] == setup.images.multi.digest
        layer = setup.images.multi.layer_digests[-1]
        assert containerd.content("mirror", layer) == setup.images.blob(layer)
    setup.assert_pulled_through("containerd/")


def test_containerd_pulls_through_a_mirror_with_auth(
    setup: Setup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With authentication on and a private upstream, containerd logs in to the mirror as a
    reader of ``hub/`` (the challenge names ``repository:hub/library/busybox:pull``); an
    anonymous pull is refused."""
    root = tmp_path_factory.mktemp("mirror-containerd-auth")
    hub = {"url": setup.upstream.url, "username": HUB_USER, "password": HUB_PASSWORD}
    mirror = start_mirror(root / "mirror", {"hub": hub}, "--auth", mirror_upstream="hub")
    try:
        found = re.search(r"^\s*password:\s*(\S+)\s*$", mirror.log(), re.MULTILINE)
        assert found, mirror.log()
        with httpx.Client(base_url=mirror.url, auth=("admin", found.group(1))) as admin:
            password = "alice-" + os.urandom(6).hex()
            created = admin.post("/api/v1/users", json={"name": "alice", "password": password})
            assert created.status_code == 201, created.text
            assert admin.post("/api/v1/orgs", json={"name": "hub"}).status_code == 201
            member = admin.put("/api/v1/orgs/hub/members/alice", json={"role": "reader"})
            assert member.status_code == 200, member.text
        hosts = root / "certs.d"
        (hosts / "docker.io").mkdir(parents=True)
        (hosts / "docker.io" / "hosts.toml").write_text(
            f'server = "https://registry-1.docker.io"\n\n[host."{mirror.url}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        ref = "docker.io/library/busybox:latest"
        pull = ["images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native"]
        with running_containerd(root / "daemon") as containerd:
            refused = containerd.ctr("mirror-auth", *pull, ref, check=False, timeout=120)
            assert refused.returncode != 0
            assert "401 Unauthorized" in refused.stderr, refused.stderr
            containerd.ctr("mirror-auth", *pull, "--user", f"alice:{password}", ref)
            listed = containerd.ctr("mirror-auth", "images", "ls").stdout.splitlines()[1:]
            digests = {line.split()[0]: line.split()[2] for line in listed if line.strip()}
            assert digests[ref] == setup.images.multi.digest
        requests = [
            json.loads(line)
            for line in mirror.log().splitlines()
            if line.startswith('{"ts"') and '"route"' in line
        ]
        tokens = [r for r in requests if r["path"] == "/auth/token" and r["status"] == 200]
        assert tokens, requests
        blobs = {
            r["path"]
            for r in requests
            if r["route"] == "blob" and r["status"] == 200 and r["method"] == "GET"
        }
        for digest in setup.images.multi.blob_digests:
            assert f"/v2/{IMAGE}/blobs/{digest}" in blobs
    finally:
        mirror.stop()
