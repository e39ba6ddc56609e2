"""Zero-copy downloads: blob GETs redirected to the sendfile port with signed links."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.http.sendfile import BlobLinks
from tests.support.processes import Server, free_port, running_dockyard

SECRET = "test-secret-0123456789"
MIN_BYTES = 64 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def side_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, side_port: int) -> Iterator[Server]:
    env = {
        "DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{side_port}",
        "DOCKYARD_SENDFILE_SECRET": SECRET,
        "DOCKYARD_SENDFILE_MIN_BYTES": str(MIN_BYTES),
        "DOCKYARD_WORKERS": "2",
    }
    with running_dockyard(tmp_path_factory.mktemp("sendfile") / "data", env=env) as srv:
        yield srv


def push(server: Server, name: str, data: bytes) -> str:
    digest = digest_of(data)
    response = httpx.post(
        f"{server.url}/v2/{name}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return digest


def test_large_blob_is_redirected_to_signed_link(server: Server, side_port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = push(server, "sf/large", data)
    first = httpx.get(f"{server.url}/v2/sf/large/blobs/{digest}")
    assert first.status_code == 307
    assert first.headers["docker-content-digest"] == digest
    assert first.headers["cache-control"] == "no-store"
    location = first.headers["location"]
    assert location.startswith(f"http://127.0.0.1:{side_port}/blobs/{digest}?")

    followed = httpx.get(f"{server.url}/v2/sf/large/blobs/{digest}", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.content == data
    assert followed.headers["docker-content-digest"] == digest
    assert int(followed.headers["content-length"]) == len(data)


def test_range_through_the_redirect(server: Server) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = push(server, "sf/range", data)
    response = httpx.get(
        f"{server.url}/v2/sf/range/blobs/{digest}",
        headers={"Range": "bytes=1000-1999"},
        follow_redirects=True,
    )
    assert response.status_code == 206
    assert response.content == data[1000:2000]
    assert response.headers["content-range"] == f"bytes 1000-1999/{len(data)}"


def test_small_blobs_and_heads_are_served_directly(server: Server) -> None:
    small = os.urandom(MIN_BYTES - 1)
    digest = push(server, "sf/small", small)
    response = httpx.get(f"{server.url}/v2/sf/small/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == small

    large = os.urandom(MIN_BYTES * 4)
    large_digest = push(server, "sf/small", large)
    head = httpx.head(f"{server.url}/v2/sf/small/blobs/{large_digest}")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(large)


def test_unknown_blob_is_not_redirected(server: Server) -> None:
    missing = digest_of(b"never pushed")
    response = httpx.get(f"{server.url}/v2/sf/large/blobs/{missing}")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_forged_expired_and_swapped_links_are_refused(server: Server, side_port: int) -> None:
    data = os.urandom(MIN_BYTES * 2)
    digest = push(server, "sf/forged", data)
    other = push(server, "sf/forged", os.urandom(MIN_BYTES * 2))
    base = f"http://127.0.0.1:{side_port}"

    good = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1")
    assert httpx.get(good).content == data

    wrong_key = BlobLinks(b"another key", side_port).url(digest, "127.0.0.1")
    expired = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1", now=time.time() - 120)
    swapped = good.replace(digest, other)
    unsigned = f"{base}/blobs/{digest}"
    for url in (wrong_key, expired, swapped, unsigned):
        response = httpx.get(url)
        assert response.status_code == 403, url
        assert response.json()["errors"][0]["code"] == "DENIED"

    assert httpx.get(f"{base}/blobs/sha256:..%2F..%2Fetc?expires=1&signature=x").status_code in (
        400,
        403,
        404,
    )
    assert httpx.get(f"{base}/v2/").status_code == 404


def test_a_valid_link_to_a_deleted_blob_is_404(server: Server, side_port: int) -> None:
    data = os.urandom(MIN_BYTES * 2)
    digest = push(server, "sf/deleted", data)
    link = BlobLinks(SECRET.encode(), side_port).url(digest, "127.0.0.1")
    store_file = Path(server.data_dir) / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert store_file.exists()
    store_file.unlink()  # what garbage collection does to the bytes
    response = httpx.get(link)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_authorization_happens_before_the_redirect(tmp_path: Path) -> None:
    side = free_port()
    env = {"DOCKYARD_SENDFILE_LISTEN": f"127.0.0.1:{side}", "DOCKYARD_ANONYMOUS_PULL": "false"}
    with running_dockyard(tmp_path / "data", env=env, auth=True) as srv:
        response = httpx.get(f"{srv.url}/v2/private/app/blobs/{digest_of(b'x')}")
        assert response.status_code == 401
        assert "location" not in response.headers


def test_clients_behind_a_proxy_or_port_mapping_get_the_blob_directly(server: Server) -> None:
    """A link keeps the client's hostname and changes the port: a client that came through
    a proxy, or reached us at another port (NAT, a container's port mapping), might not
    reach the side port, so it gets the bytes from the port it used."""
    data = os.urandom(MIN_BYTES * 2)
    digest = push(server, "sf/proxied", data)
    url = f"{server.url}/v2/sf/proxied/blobs/{digest}"
    assert httpx.get(url).status_code == 307
    for headers in (
        {"X-Forwarded-For": "192.0.2.7"},
        {"Forwarded": "for=192.0.2.7;proto=https"},
        {"X-Forwarded-Proto": "https"},
        {"X-Real-IP": "192.0.2.7"},
        {"Host": "registry.example.com"},  # port 80, not ours
        {"Host": "registry.example.com:8443"},
        {"Host": "registry.example.com:99999"},  # not a port at all
    ):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 200, headers
        assert response.content == data
    assert httpx.head(url).status_code == 200
    # none of those answers is reused from the read cache for a client that can follow
    same_port = server.url.rsplit(":", 1)[1]
    response = httpx.get(url, headers={"Host": f"registry.example.com:{same_port}"})
    assert response.status_code == 307
    assert response.headers["location"].startswith("http://registry.example.com:")


def test_on_by_default_at_the_next_port(tmp_path: Path) -> None:
    """`dockyard serve` with no sendfile setting serves the listen port + 1 and redirects
    blob GETs of 8 MiB and more there; smaller ones are sent directly."""
    with running_dockyard(tmp_path / "data") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        assert f"data port 127.0.0.1:{port + 1}: large blob GETs are redirected" in srv.log()
        large = os.urandom(8 * 1024 * 1024)
        digest = push(srv, "default/large", large)
        first = httpx.get(f"{srv.url}/v2/default/large/blobs/{digest}")
        assert first.status_code == 307
        assert first.headers["location"].startswith(f"http://127.0.0.1:{port + 1}/blobs/")
        followed = httpx.get(first.headers["location"])
        assert followed.status_code == 200
        assert hashlib.sha256(followed.content).hexdigest() == digest[7:]
        small = os.urandom(8 * 1024 * 1024 - 1)
        small_digest = push(srv, "default/large", small)
        direct = httpx.get(f"{srv.url}/v2/default/large/blobs/{small_digest}")
        assert direct.status_code == 200
        assert direct.content == small


def test_turned_off_from_the_command_line(tmp_path: Path) -> None:
    with running_dockyard(tmp_path / "data", "--sendfile-listen", "off") as srv:
        large = os.urandom(8 * 1024 * 1024)
        digest = push(srv, "off/large", large)
        response = httpx.get(f"{srv.url}/v2/off/large/blobs/{digest}")
        assert response.status_code == 200
        assert response.content == large
        assert "data port" not in srv.log()


def test_auto_turns_itself_off_where_it_cannot_help_or_bind(tmp_path: Path) -> None:
    import socket

    from dockyard.config import Settings
    from dockyard.server import resolve_sendfile

    port = free_port()

    def settle(**values: object) -> tuple[str | None, str]:
        settings = Settings(listen=f"127.0.0.1:{port}", data_dir=tmp_path, **values)  # type: ignore[arg-type]
        resolved, message = resolve_sendfile(settings)
        return resolved.sendfile_listen, message

    listen, message = settle()
    assert listen == f"127.0.0.1:{port + 1}"
    assert f"data port 127.0.0.1:{port + 1}:" in message
    cert = tmp_path / "cert.pem"
    listen, message = settle(tls_cert=cert, tls_key=cert)
    assert listen is None and "TLS" in message
    listen, message = settle(storage="s3", s3_bucket="b")
    assert listen is None and "s3" in message
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        listen, message = settle()
        assert listen is None and f"127.0.0.1:{port + 1}" in message
    for off in ("off", ""):
        assert settle(sendfile_listen=off) == (None, "")
    explicit = f"127.0.0.1:{free_port()}"
    assert settle(sendfile_listen=explicit) == (explicit, "")


def test_off_in_every_spelling(tmp_path: Path) -> None:
    from dockyard.config import load_settings

    config = tmp_path / "dockyard.yml"
    config.write_text("sendfile_listen: off\n")  # YAML reads a bare off as false
    assert load_settings(config).sendfile_listen is None
    for value in ("off", "OFF", "", "none"):
        assert load_settings(sendfile_listen=value).sendfile_listen is None
    assert load_settings().sendfile_listen == "auto"


def test_refuses_the_same_port_twice(tmp_path: Path) -> None:
    from dockyard.config import Settings
    from dockyard.server import ServeRefused, check

    port = free_port()
    settings = Settings(
        listen=f"127.0.0.1:{port}", sendfile_listen=f"127.0.0.1:{port}", data_dir=tmp_path
    )
    with pytest.raises(ServeRefused, match="sendfile_listen must differ"):
        check(settings)
