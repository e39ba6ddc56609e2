"""Real clients log in and push and pull with credentials, against ``dockyard serve --auth``
over plain HTTP and over TLS (a private CA given to each client): docker, podman, skopeo,
containerd's ctr and oras-py, with a user's password, a robot account and a personal
access token. What the registry then serves is checked through its API with a pull token:
the manifest hashes to the digest the client reported, every blob to its digest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oras.provider  # type: ignore[import-untyped]
import pytest

from tests.auth_e2e.accounts import Login
from tests.auth_e2e.certificates import Certificates
from tests.auth_e2e.registry import AuthRegistry
from tests.e2e.client_logs import docker_pulled_digest, docker_pushed_digest
from tests.e2e.commands import run
from tests.e2e.containers_tools import ContainersTools
from tests.e2e.daemons import Containerd, Dockerd
from tests.e2e.images import DOCKER_ARCHIVE_TAG, HELLO_PATH, HELLO_TEXT, ImageSet
from tests.e2e.oras_client import REQUEST_TIMEOUT, fast_retries
from tests.e2e.registry_api import RegistryAPI

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Namespace:
    """A user of the registry under test, a robot and a personal access token of theirs,
    all allowed to pull and push in the user's namespace."""

    user: Login
    robot: Login
    token: Login

    @property
    def name(self) -> str:
        return self.user.username


@pytest.fixture
def owner(target: AuthRegistry, unique: Callable[[str], str]) -> Namespace:
    name = unique("u")
    user = target.accounts.user(name)
    robot = target.accounts.robot(name, "ci", f"{name}/*:pull,push")
    token = target.accounts.access_token(name, "laptop")
    return Namespace(user, robot, token)


@contextmanager
def served(registry: AuthRegistry, login: Login, repository: str) -> Iterator[RegistryAPI]:
    """The e2e suite's registry checks, holding a pull token of ``login``."""
    grant = registry.token(login, f"repository:{repository}:pull")
    assert grant.access == {f"repository:{repository}": {"pull"}}, grant.claims
    api = RegistryAPI(registry.url)
    api.http.close()
    api.http = httpx.Client(
        base_url=registry.url,
        timeout=120,
        follow_redirects=True,
        verify=registry.verify,
        headers=grant.bearer,
    )
    try:
        yield api
    finally:
        api.close()


def token_requests(
    registry: AuthRegistry, since: int, agent: str, method: str | None = None
) -> list[dict[str, Any]]:
    """Requests of ``agent`` (a User-Agent fragment) to the token endpoint since ``since``."""
    return [
        entry
        for entry in registry.access_log(since)
        if entry["path"] == "/auth/token"
        and agent in (entry.get("ua") or "")
        and (method is None or entry["method"] == method)
    ]


# docker


def docker(
    daemon: Dockerd, *args: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        ["docker", "-H", f"unix://{daemon.socket}", *args],
        env={"DOCKER_CONFIG": str(daemon.config_dir), "DOCKER_CLI_HINTS": "false"},
        input=input,
        check=check,
        timeout=300,
    )


@pytest.fixture
def clean_dockerd(dockerd: Dockerd) -> Iterator[Dockerd]:
    """The worker's dockerd without images, and logged out of everything afterwards."""
    docker(dockerd, "image", "prune", "--all", "--force")
    yield dockerd
    config = dockerd.config_dir / "config.json"
    if config.exists():
        for host in json.loads(config.read_text()).get("auths", {}):
            docker(dockerd, "logout", host, check=False)
    docker(dockerd, "image", "prune", "--all", "--force", check=False)


@pytest.mark.xdist_group("auth-docker")
def test_docker_login_push_pull(
    target: AuthRegistry,
    owner: Namespace,
    clean_dockerd: Dockerd,
    images: ImageSet,
) -> None:
    if not target.plain:
        assert not target.host.startswith("127."), (
            "docker never checks the certificate of a registry on 127.0.0.0/8 (it counts as "
            "insecure): the TLS test needs a non-loopback address on this machine"
        )
    # over HTTP the user logs in with a password; over TLS, the robot account
    login = owner.user if target.plain else owner.robot
    repository = f"{owner.name}/app"
    ref = f"{target.host}/{repository}:v1"

    mark = target.log_mark()
    result = docker(
        clean_dockerd, "login", "--username", login.username, "--password-stdin", target.host,
        input=login.secret.encode(),
    )  # fmt: skip
    assert "Login Succeeded" in result.stdout
    # The token flow with offline_token: docker keeps the refresh token, not the secret.
    saved = json.loads((clean_dockerd.config_dir / "config.json").read_text())["auths"]
    entry = saved[target.host]
    target.remember(entry.get("identitytoken", ""))
    assert entry.get("identitytoken", "").startswith("dyf_"), entry
    assert base64.b64decode(entry["auth"]).decode() == f"{login.username}:"
    logins = token_requests(target, mark, "docker/", "GET")
    assert [e["status"] for e in logins] == [200], target.access_log(mark)

    docker(clean_dockerd, "load", "--input", str(images.docker_archive))
    docker(clean_dockerd, "tag", DOCKER_ARCHIVE_TAG, ref)
    mark = target.log_mark()
    digest = docker_pushed_digest(docker(clean_dockerd, "push", ref).stdout)
    # pushes trade the refresh token for access tokens (OAuth2 POST, refresh_token grant)
    refreshes = token_requests(target, mark, "docker/", "POST")
    assert refreshes and all(e["status"] == 200 for e in refreshes), target.access_log(mark)
    with served(target, owner.user, repository) as api:
        manifest = api.verify(repository, "v1", digest)  # docker recompresses the layers
        assert manifest.parsed["config"]["digest"] == images.multi.config_digest
        assert api.read_file(repository, "v1", HELLO_PATH) == HELLO_TEXT.encode()

    docker(clean_dockerd, "rmi", ref, DOCKER_ARCHIVE_TAG)
    pulled = docker(clean_dockerd, "pull", ref).stdout
    assert "Already exists" not in pulled, pulled
    assert docker_pulled_digest(pulled) == digest
    image_id = docker(clean_dockerd, "image", "inspect", "--format", "{{.Id}}", ref).stdout
    assert image_id.strip() == images.multi.config_digest
    shown = docker(clean_dockerd, "run", "--rm", "--network", "none", ref, "cat", f"/{HELLO_PATH}")
    assert shown.stdout == HELLO_TEXT

    # Logged out, the private repository is out of reach.
    docker(clean_dockerd, "rmi", ref)
    docker(clean_dockerd, "logout", target.host)
    refused = docker(clean_dockerd, "pull", ref, check=False)
    assert refused.returncode != 0
    assert "denied" in refused.stderr or "unauthorized" in refused.stderr, refused.stderr


# podman and skopeo


def tls_flags(target: AuthRegistry, certificates: Certificates, prefix: str = "") -> list[str]:
    """``--cert-dir D`` for the TLS registry, ``--tls-verify=false`` (plain HTTP allowed)
    for the other; ``prefix`` makes them ``--src-...`` or ``--dest-...`` for skopeo copy."""
    if target.plain:
        return [f"--{prefix}tls-verify=false"]
    return [f"--{prefix}cert-dir={certificates.cert_dir}"]


def podman(
    tools: ContainersTools, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], env=tools.env, input=input, timeout=300)


def test_podman_login_push_pull(
    target: AuthRegistry,
    owner: Namespace,
    tools: ContainersTools,
    certificates: Certificates,
    images: ImageSet,
    tmp_path: Path,
) -> None:
    tools.podman("rmi", "--all", "--force")
    # over HTTP a personal access token is the password; over TLS the user's own password
    login = owner.token if target.plain else owner.user
    repository = f"{owner.name}/podman"
    ref = f"{target.host}/{repository}:v1"
    certs = tls_flags(target, certificates)

    podman(
        tools, "login", *certs, "--username", login.username, "--password-stdin", target.host,
        input=login.secret.encode(),
    )  # fmt: skip
    auths = json.loads(Path(tools.env["REGISTRY_AUTH_FILE"]).read_text())["auths"]
    assert target.host in auths, auths
    try:
        image_id = podman(tools, "pull", "--quiet", images.oci("multi")).stdout.strip()
        digestfile = tmp_path / "digest"
        podman(tools, "push", *certs, "--digestfile", str(digestfile), image_id, f"docker://{ref}")
        digest = digestfile.read_text().strip()
        with served(target, owner.user, repository) as api:
            api.verify(repository, "v1", digest)  # podman may re-serialize the manifest
            assert api.read_file(repository, "v1", HELLO_PATH) == HELLO_TEXT.encode()

        tools.podman("rmi", "--all", "--force")
        podman(tools, "pull", *certs, ref)
        inspected = podman(tools, "image", "inspect", "--format", "{{.Digest}} {{.Id}}", ref)
        pulled_digest, pulled_id = inspected.stdout.split()
        assert pulled_digest == digest
        assert f"sha256:{pulled_id}" == images.multi.config_digest
    finally:
        tools.podman("logout", target.host, check=False)
        tools.podman("rmi", "--all", "--force", check=False)


def oci_layout_blobs(layout: Path, tag: str) -> tuple[str, dict[str, bytes]]:
    """The manifest digest of ``tag`` in an OCI layout, and every blob it references."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]  # fmt: skip

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(entry["digest"]))
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    return entry["digest"], {digest: blob(digest) for digest in digests}


def skopeo_push(
    target: AuthRegistry, tools: ContainersTools, certificates: Certificates, login: Login,
    source: str, ref: str, *flags: str,
) -> None:  # fmt: skip
    """``skopeo copy`` from ``source`` to the registry with ``login``'s credentials."""
    tools.skopeo(
        "copy", "--dest-creds", login.colon, *tls_flags(target, certificates, "dest-"),
        *flags, source, ref,
    )  # fmt: skip


def skopeo_pull(
    target: AuthRegistry, tools: ContainersTools, certificates: Certificates, login: Login,
    ref: str, out: Path,
) -> tuple[str, dict[str, bytes]]:  # fmt: skip
    """``skopeo copy`` from the registry into an OCI layout with ``login``'s credentials;
    the manifest digest and the blobs that arrived."""
    tools.skopeo(
        "copy", "--src-creds", login.colon, *tls_flags(target, certificates, "src-"),
        ref, f"oci:{out}:v1",
    )  # fmt: skip
    return oci_layout_blobs(out, "v1")


def test_skopeo_copy_with_credentials(
    target: AuthRegistry,
    owner: Namespace,
    tools: ContainersTools,
    certificates: Certificates,
    images: ImageSet,
    tmp_path: Path,
) -> None:
    # push and pull with different kinds of credentials
    if target.plain:
        pusher, puller = owner.robot, owner.user
    else:
        pusher, puller = owner.token, owner.robot
    repository = f"{owner.name}/skopeo"
    ref = f"docker://{target.host}/{repository}:v1"
    digestfile = tmp_path / "digest"
    skopeo_push(
        target, tools, certificates, pusher, images.oci("multi"), ref,
        "--digestfile", str(digestfile),
    )  # fmt: skip
    assert digestfile.read_text().strip() == images.multi.digest

    # without credentials the private repository cannot even be inspected
    refused = tools.skopeo("inspect", *tls_flags(target, certificates), ref, check=False)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "denied" in refused.stderr.lower()

    digest, blobs = skopeo_pull(target, tools, certificates, puller, ref, tmp_path / "out")
    assert digest == images.multi.digest
    assert blobs == {d: images.blob(d) for d in images.multi.blob_digests}


@pytest.mark.parametrize("target", ["http"], indirect=True)  # TLS: no download port
def test_skopeo_pulls_a_large_layer_through_the_download_port(
    target: AuthRegistry,
    owner: Namespace,
    tools: ContainersTools,
    certificates: Certificates,
    images: ImageSet,
    tmp_path: Path,
) -> None:
    """With authentication on, a GET of the ~100 MiB layer is authorized on the registry
    port and then redirected to a signed link on the download port, which needs no
    credentials of its own."""
    repository = f"{owner.name}/large"
    ref = f"docker://{target.host}/{repository}:v1"
    skopeo_push(target, tools, certificates, owner.user, images.oci("large"), ref)
    digest, blobs = skopeo_pull(target, tools, certificates, owner.robot, ref, tmp_path / "out")
    assert digest == images.large.digest
    assert blobs == {d: images.blob(d) for d in images.large.blob_digests}
    assert 307 in target.server.blob_get_statuses(repository)


# containerd


def ctr_image_digest(containerd: Containerd, namespace: str, ref: str) -> str:
    for line in containerd.ctr(namespace, "images", "ls").stdout.splitlines()[1:]:
        columns = line.split()
        if columns and columns[0] == ref:
            return columns[2]
    raise AssertionError(f"{ref} not in the containerd image list")


@pytest.mark.xdist_group("auth-containerd")
def test_ctr_push_pull_with_credentials(
    target: AuthRegistry,
    owner: Namespace,
    containerd: Containerd,
    namespace: str,
    certificates: Certificates,
    images: ImageSet,
) -> None:
    plain = target.plain
    transport = ["--plain-http"] if plain else ["--tlscacert", str(certificates.ca)]
    repository = f"{owner.name}/ctr"
    base = f"{target.host}/{repository}"
    ref = f"{base}:multi"
    containerd.ctr(
        namespace, "images", "import", "--base-name", base, "--snapshotter", "native",
        str(images.oci_archive),
    )  # fmt: skip
    assert ctr_image_digest(containerd, namespace, ref) == images.multi.digest

    # containerd holding credentials asks for a token with the OAuth2 POST
    # (grant_type=password) first, and falls back to GET only if that is refused.
    pusher = owner.user if plain else owner.robot
    mark = target.log_mark()
    result = containerd.ctr(
        namespace, "images", "push", *transport, "--http-dump", "--user", pusher.colon, ref
    )
    dump = result.stderr + result.stdout
    assert "POST /auth/token" in dump, dump[-4000:]
    posts = token_requests(target, mark, "containerd/", "POST")
    assert posts and all(e["status"] == 200 for e in posts), target.access_log(mark)
    assert not token_requests(target, mark, "containerd/", "GET"), target.access_log(mark)
    with served(target, owner.user, repository) as api:
        api.verify(repository, "multi", images.multi.digest)

    # pull into an empty content store: every blob comes from the registry
    containerd.ctr(namespace, "images", "rm", "--sync", *containerd.ctr(
        namespace, "images", "ls", "--quiet").stdout.split())  # fmt: skip
    if plain:
        credentials = ["--user", owner.token.colon]  # a personal access token
    else:
        # a refresh token (offline_token=true) traded with grant_type=refresh_token
        refresh = target.token(owner.user, offline=True).refresh_token
        assert refresh is not None
        credentials = ["--refresh", refresh]
    mark = target.log_mark()
    result = containerd.ctr(
        namespace, "images", "pull", *transport, "--http-dump", "--snapshotter", "native",
        *credentials, ref,
    )  # fmt: skip
    dump = result.stderr + result.stdout
    for digest in images.multi.blob_digests:
        assert f"GET /v2/{repository}/blobs/{digest} " in dump, f"{digest} not fetched"
    assert ctr_image_digest(containerd, namespace, ref) == images.multi.digest
    for digest in (images.multi.digest, *images.multi.blob_digests):
        assert containerd.content(namespace, digest) == images.blob(digest)
    posts = token_requests(target, mark, "containerd/", "POST")
    assert posts and all(e["status"] == 200 for e in posts), target.access_log(mark)


# oras-py


@contextmanager
def oras_client(
    registry: AuthRegistry, login: Login | None, backend: str = "token"
) -> Iterator[oras.provider.Registry]:
    """oras-py with a user name and secret, short timeouts, and the CA for TLS.

    ``token``: the Docker token flow (Basic credentials at the token endpoint).
    ``basic``: Basic credentials on every /v2 request, which Dockyard accepts too. oras-py
    0.2 keeps the first token it gets for the rest of a push and asks for another only
    after a 403, so its token flow cannot push to a registry that answers a token lacking
    the push scope with 401 insufficient_scope (as Distribution and Dockyard do).
    """
    with fast_retries():
        client = oras.provider.Registry(
            hostname=registry.host,
            insecure=registry.plain,
            tls_verify=registry.ca or True,
            auth_backend=backend,
        )
        session = client.session
        original = session.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT)
            return original(method, url, *args, **kwargs)

        session.request = request
        if login is not None:
            client.auth.set_basic_auth(login.username, login.secret)
        try:
            yield client
        finally:
            session.close()


def test_oras_push_pull_with_credentials(
    target: AuthRegistry, owner: Namespace, tmp_path: Path
) -> None:
    if target.plain:
        pusher, puller = owner.token, owner.robot
    else:
        pusher, puller = owner.user, owner.token
    repository = f"{owner.name}/artifact"
    ref = f"{target.host}/{repository}:v1"
    # small: oras-py's Basic backend sends each request without credentials first, and over
    # TLS the registry resets a connection whose body it refused unread (test_transport.py)
    payload = os.urandom(8 * 1024 + 7)
    src = Path(tempfile.mkdtemp(dir=tmp_path))
    (src / "payload.bin").write_bytes(payload)
    cwd = Path.cwd()
    os.chdir(src)  # oras-py wants the files under the working directory
    try:
        with oras_client(target, pusher, backend="basic") as client:
            response = client.push(ref, files=["payload.bin"])
        assert response.status_code == 201, response.text
        digest = response.headers["Docker-Content-Digest"]
    finally:
        os.chdir(cwd)
    with served(target, owner.user, repository) as api:
        manifest = api.verify(repository, "v1", digest)
        [layer] = manifest.parsed["layers"]
        assert api.blob(repository, layer["digest"]) == payload

    out = tmp_path / "out"
    with oras_client(target, puller) as client:
        files = client.pull(target=ref, outdir=str(out))
    assert [Path(f).name for f in files] == ["payload.bin"]
    assert (out / "payload.bin").read_bytes() == payload

    # without credentials: an anonymous token, and nothing pulled
    with oras_client(target, None) as client, pytest.raises(ValueError):
        client.pull(target=ref, outdir=str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "payload.bin").exists()


# migrating from registry:2


@pytest.mark.xdist_group("auth-docker")
def test_htpasswd_users_log_in_with_docker_and_skopeo(
    plain: AuthRegistry,
    htpasswd_users: list[Login],
    clean_dockerd: Dockerd,
    tools: ContainersTools,
    images: ImageSet,
    tmp_path: Path,
) -> None:
    """Users imported from a registry:2 htpasswd file keep their passwords."""
    first, second = htpasswd_users
    repository = f"{first.username}/migrated"
    ref = f"{plain.host}/{repository}:v1"
    result = docker(
        clean_dockerd, "login", "--username", first.username, "--password-stdin", plain.host,
        input=first.secret.encode(),
    )  # fmt: skip
    assert "Login Succeeded" in result.stdout
    docker(clean_dockerd, "load", "--input", str(images.docker_archive))
    docker(clean_dockerd, "tag", DOCKER_ARCHIVE_TAG, ref)
    digest = docker_pushed_digest(docker(clean_dockerd, "push", ref).stdout)
    plain.accounts.visibility(repository, "public")  # so that the second user may pull

    run(
        ["skopeo", "login", "--tls-verify=false", "--username", second.username,
         "--password-stdin", plain.host],
        env=tools.env, input=second.secret.encode(),
    )  # fmt: skip
    try:
        # dir: keeps the manifest as served (oci: would convert docker's to OCI)
        out = tmp_path / "out"
        tools.skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{out}")
        manifest = (out / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest
        config = json.loads(manifest)["config"]["digest"]
        assert config == images.multi.config_digest
        assert (out / config.split(":", 1)[1]).read_bytes() == images.blob(config)
    finally:
        tools.skopeo("logout", plain.host, check=False)
