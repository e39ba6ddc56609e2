"""The base endpoint, the API version header on every response, the error body format and
the extension discovery endpoint."""

from __future__ import annotations

import httpx
import pytest

from tests.api.content import random_blob
from tests.api.protocol import (
    API_VERSION,
    API_VERSION_HEADER,
    assert_error,
    new_repo,
    push_blob,
    raw_request,
)
from tests.support.processes import Server


def test_base_endpoint_answers_200_with_api_version(client: httpx.Client) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers[API_VERSION_HEADER] == API_VERSION


def test_base_endpoint_head(client: httpx.Client) -> None:
    response = client.head("/v2/")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/{repo}/blobs/sha256:" + "0" * 64),
        ("HEAD", "/v2/{repo}/blobs/sha256:" + "0" * 64),
        ("GET", "/v2/{repo}/manifests/latest"),
        ("HEAD", "/v2/{repo}/manifests/latest"),
        ("DELETE", "/v2/{repo}/manifests/sha256:" + "0" * 64),
        ("GET", "/v2/{repo}/tags/list"),
        ("GET", "/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000"),
        ("PUT", "/v2/{repo}/manifests/latest"),
        ("GET", "/v2/{repo}/blobs/sha256:zz"),
    ],
)
def test_error_responses_carry_api_version(client: httpx.Client, method: str, path: str) -> None:
    # The client's response hook checks the header on every response; this states it.
    response = client.request(method, path.format(repo=new_repo()), content=b"{")
    assert 400 <= response.status_code < 500
    assert response.headers[API_VERSION_HEADER] == API_VERSION


def test_error_body_has_code_and_message(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, random_blob(16))
    response = client.get(f"/v2/{repo}/blobs/sha256:" + "1" * 64)
    assert_error(response, 404, "BLOB_UNKNOWN")
    (entry,) = response.json()["errors"]
    assert set(entry) <= {"code", "message", "detail"}
    assert isinstance(entry["message"], str) and entry["message"]


def test_unknown_endpoint_is_404_not_5xx(client: httpx.Client) -> None:
    response = client.get(f"/v2/{new_repo()}/no-such-endpoint/at/all")
    assert response.status_code == 404
    assert response.headers[API_VERSION_HEADER] == API_VERSION


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/v2/{repo}/manifests/latest"),
        ("POST", "/v2/{repo}/manifests/latest"),
        ("PUT", "/v2/{repo}/tags/list"),
        ("POST", "/v2/{repo}/blobs/sha256:" + "0" * 64),
    ],
)
def test_wrong_method_is_a_client_error(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path.format(repo=new_repo()), content=b"")
    assert response.status_code in (404, 405), response.status_code


def test_raw_client_also_gets_api_version_header(registry: Server) -> None:
    response = raw_request(registry.url, "GET", "/v2/")
    assert response.status == 200
    assert response.header(API_VERSION_HEADER) == API_VERSION


@pytest.mark.dockyard_only("no /v2/_oci/ext/discover endpoint")
def test_extension_discovery(client: httpx.Client) -> None:
    response = client.get("/v2/_oci/ext/discover")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert isinstance(document["extensions"], list)
    for extension in document["extensions"]:
        assert isinstance(extension["name"], str) and extension["name"].startswith("_")
        assert isinstance(extension["url"], str) and extension["url"]
        assert isinstance(extension["endpoints"], list)
        assert all(isinstance(endpoint, str) for endpoint in extension["endpoints"])
        if "description" in extension:
            assert isinstance(extension["description"], str)


def test_unknown_extension_is_not_a_server_error(client: httpx.Client) -> None:
    response = client.get("/v2/_oci/ext/no-such-extension")
    assert response.status_code in (400, 404, 405)
    if response.headers.get("content-type", "").startswith("application/json"):
        assert_error(response, response.status_code)
