"""Listing tags (/v2/<name>/tags/list) and repositories (/v2/_catalog), with pagination."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.api.content import make_image
from tests.api.protocol import (
    assert_error,
    follow,
    new_repo,
    push_blobs,
    push_image,
    push_manifest,
    registry_client,
)
from tests.support.processes import Server

# Lowercase ASCII only: lexical (case-insensitive) and "ASCIIbetical" orders agree on these.
TAGS = ["1.0", "1.10", "1.9", "2", "alpha", "beta", "latest", "v1", "v10", "v2"]
UNSORTED = "lists tags in storage order and ignores n and last"
LINK_RE = re.compile(r'^<([^>]+)>;\s*rel="?next"?$')


def next_link(response: httpx.Response) -> str | None:
    value = response.headers.get("link")
    if value is None:
        return None
    match = LINK_RE.match(value.strip())
    assert match, f"Link header {value!r} is not '<url>; rel=\"next\"'"
    return match.group(1)


def walk(client: httpx.Client, url: str, key: str) -> Iterator[list[str]]:
    """Follow ``Link: <...>; rel="next"`` from ``url``, yielding each page's list."""
    seen = 0
    next_url: str | None = url
    while next_url is not None:
        response = client.get(follow(client, next_url))
        assert response.status_code == 200, response.content
        page = response.json()[key]
        yield page
        next_url = next_link(response)
        seen += 1
        assert seen < 1000, "pagination does not end"


@pytest.fixture
def tagged(client: httpx.Client, repo: str) -> str:
    image = make_image()
    push_blobs(client, repo, image.blobs)
    for tag in reversed(TAGS):
        push_manifest(client, repo, tag, image.manifest)
    return repo


class TestTags:
    def test_list(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        document = response.json()
        assert document["name"] == tagged
        assert sorted(document["tags"]) == TAGS

    @pytest.mark.dockyard_only(UNSORTED)
    def test_lexical_order(self, client: httpx.Client, tagged: str) -> None:
        assert client.get(f"/v2/{tagged}/tags/list").json()["tags"] == TAGS

    def test_unknown_repository(self, client: httpx.Client) -> None:
        assert_error(client.get(f"/v2/{new_repo()}/tags/list"), 404, "NAME_UNKNOWN")

    @pytest.mark.dockyard_only(UNSORTED)
    def test_first_page(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=3")
        assert response.status_code == 200
        assert response.json()["tags"] == TAGS[:3]
        assert next_link(response) is not None

    @pytest.mark.dockyard_only(UNSORTED)
    def test_walk_pages(self, client: httpx.Client, tagged: str) -> None:
        pages = list(walk(client, f"/v2/{tagged}/tags/list?n=3", "tags"))
        assert [tag for page in pages for tag in page] == TAGS
        assert all(len(page) <= 3 for page in pages)
        assert pages[0] == TAGS[:3]

    @pytest.mark.dockyard_only(UNSORTED)
    def test_last(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=2&last=alpha")
        assert response.json()["tags"] == ["beta", "latest"]
        response = client.get(f"/v2/{tagged}/tags/list?last=v1")
        assert response.json()["tags"] == ["v10", "v2"]

    @pytest.mark.dockyard_only(UNSORTED)
    def test_last_between_tags(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=2&last=b")
        assert response.json()["tags"] == ["beta", "latest"]

    @pytest.mark.dockyard_only(UNSORTED)
    def test_last_after_everything(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=5&last=zzz")
        assert response.status_code == 200
        assert response.json()["tags"] == []
        assert next_link(response) is None

    @pytest.mark.dockyard_only(UNSORTED)
    def test_n_larger_than_count(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=1000")
        assert response.json()["tags"] == TAGS
        assert next_link(response) is None

    @pytest.mark.dockyard_only(UNSORTED)
    def test_exact_last_page_has_no_useless_link(self, client: httpx.Client, tagged: str) -> None:
        pages = list(walk(client, f"/v2/{tagged}/tags/list?n=5", "tags"))
        assert pages == [TAGS[:5], TAGS[5:]]

    @pytest.mark.dockyard_only(UNSORTED)
    def test_n_zero(self, client: httpx.Client, tagged: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n=0")
        assert response.status_code == 200
        assert response.json()["tags"] == []
        assert "link" not in response.headers

    @pytest.mark.dockyard_only(UNSORTED)
    @pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999999999999999999", ""])
    def test_invalid_n(self, client: httpx.Client, tagged: str, n: str) -> None:
        response = client.get(f"/v2/{tagged}/tags/list?n={n}")
        if n == "" and response.status_code == 200:
            return  # an empty n may mean "no limit"
        assert_error(response, 400, "PAGINATION_NUMBER_INVALID")

    def test_tag_list_follows_pushes(self, client: httpx.Client, repo: str) -> None:
        image = make_image()
        push_image(client, repo, image, "one")
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["one"]
        push_manifest(client, repo, "two", image.manifest)
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["one", "two"]

    def test_manifest_pushed_by_digest_has_no_tag(self, client: httpx.Client, repo: str) -> None:
        tagged_image, untagged = make_image(), make_image()
        push_image(client, repo, tagged_image, "only")
        push_image(client, repo, untagged, untagged.manifest.digest)
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["only"]


CATALOG_REPOS = sorted(
    [
        "alpha",
        "beta",
        "beta/one",
        "beta/two",
        "gamma-delta",
        "gamma.delta",
        "library/busybox",
        "zeta/a/b/c",
    ]
)


@pytest.fixture(scope="module")
def catalog_registry(module_registry: Server) -> Server:
    image = make_image()
    with registry_client(module_registry.url) as session:
        for name in CATALOG_REPOS:
            push_image(session, name, image, "latest")
    return module_registry


@pytest.fixture
def catalog_client(catalog_registry: Server) -> Iterator[httpx.Client]:
    with registry_client(catalog_registry.url) as session:
        yield session


def ascii_sorted(names: list[str]) -> bool:
    return names == sorted(names)


class TestCatalog:
    def test_full_catalog(self, catalog_client: httpx.Client) -> None:
        response = catalog_client.get("/v2/_catalog")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["repositories"] == CATALOG_REPOS

    def test_first_page(self, catalog_client: httpx.Client) -> None:
        response = catalog_client.get("/v2/_catalog?n=3")
        assert response.json()["repositories"] == CATALOG_REPOS[:3]
        assert next_link(response) is not None

    def test_walk_pages(self, catalog_client: httpx.Client) -> None:
        pages = list(walk(catalog_client, "/v2/_catalog?n=3", "repositories"))
        assert [name for page in pages for name in page] == CATALOG_REPOS
        assert all(len(page) <= 3 for page in pages)

    def test_last(self, catalog_client: httpx.Client) -> None:
        response = catalog_client.get("/v2/_catalog?n=2&last=beta")
        assert response.json()["repositories"] == ["beta/one", "beta/two"]

    def test_n_larger_than_count(self, catalog_client: httpx.Client) -> None:
        response = catalog_client.get("/v2/_catalog?n=500")
        assert response.json()["repositories"] == CATALOG_REPOS
        assert next_link(response) is None

    def test_n_zero(self, catalog_client: httpx.Client) -> None:
        response = catalog_client.get("/v2/_catalog?n=0")
        assert response.status_code == 200
        assert response.json()["repositories"] == []
        assert "link" not in response.headers

    @pytest.mark.dockyard_only("ignores a malformed n on the catalog")
    @pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999999999999999999"])
    def test_invalid_n(self, catalog_client: httpx.Client, n: str) -> None:
        assert_error(catalog_client.get(f"/v2/_catalog?n={n}"), 400, "PAGINATION_NUMBER_INVALID")


def test_catalog_lists_new_repository_in_order(client: httpx.Client) -> None:
    repo = new_repo("catalog")
    push_image(client, repo, make_image(), "latest")
    names = [name for page in walk(client, "/v2/_catalog?n=50", "repositories") for name in page]
    assert repo in names
    assert ascii_sorted(names)
    assert len(names) == len(set(names))
