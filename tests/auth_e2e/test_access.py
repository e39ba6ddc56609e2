"""Who may do what, through HTTP: namespaces of users and organizations, the roles, private
and public repositories, cross-repository mounts from repositories the caller cannot read,
and what the catalog shows to whom. Denials after valid credentials are 403 DENIED;
missing credentials are 401 with a challenge."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

import httpx
import pytest

from tests.auth_e2e.accounts import Login
from tests.auth_e2e.conftest import People
from tests.auth_e2e.registry import AuthRegistry, challenge, query_of, show
from tests.support.oci_client import OCI_MANIFEST, Image, random_image, sha256_digest

ALL = "pull,push,delete"


def code(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["code"])


def assert_denied(response: httpx.Response) -> None:
    assert response.status_code == 403, show(response)
    if response.request.method != "HEAD":  # a HEAD answer has no body
        assert code(response) == "DENIED"


def assert_challenged(response: httpx.Response, registry: AuthRegistry, scope: str) -> None:
    assert response.status_code == 401, show(response)
    params = challenge(response)
    assert (params["scheme"], params["realm"], params["service"]) == (
        "Bearer",
        registry.realm,
        "dockyard",
    )
    assert params.get("scope") == scope, response.headers["www-authenticate"]


def push(registry: AuthRegistry, login: Login, repository: str, tag: str = "v1") -> Image:
    image = random_image(repository, tag)
    with registry.pusher(login, repository) as client:
        client.push_image(image)
    return image


def reads(registry: AuthRegistry, image: Image, headers: dict[str, str]) -> list[httpx.Response]:
    """Every way to read a repository: manifest GET/HEAD by tag and digest, blob GET/HEAD,
    tag list, referrers."""
    name, blob = image.repository, sha256_digest(image.layers[0])
    accept = {"Accept": OCI_MANIFEST, **headers}
    http = registry.http
    return [
        http.get(f"/v2/{name}/manifests/{image.tag}", headers=accept),
        http.head(f"/v2/{name}/manifests/{image.digest}", headers=accept),
        http.get(f"/v2/{name}/blobs/{blob}", headers=headers),
        http.head(f"/v2/{name}/blobs/{blob}", headers=headers),
        http.get(f"/v2/{name}/tags/list", headers=headers),
        http.get(f"/v2/{name}/referrers/{image.digest}", headers=headers),
    ]


def writes(registry: AuthRegistry, image: Image, headers: dict[str, str]) -> list[httpx.Response]:
    """Starting an upload, a monolithic blob push, a manifest PUT (of an image whose blobs
    are there) and deletes."""
    name = image.repository
    data = b"intruder"
    http = registry.http
    octets = {"Content-Type": "application/octet-stream", **headers}
    return [
        http.post(f"/v2/{name}/blobs/uploads/", headers=headers),
        http.post(
            f"/v2/{name}/blobs/uploads/", params={"digest": sha256_digest(data)},
            content=data, headers=octets,
        ),
        http.put(
            f"/v2/{name}/manifests/intruder", content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST, **headers},
        ),
        http.delete(f"/v2/{name}/manifests/{image.digest}", headers=headers),
        http.delete(f"/v2/{name}/blobs/{sha256_digest(image.layers[0])}", headers=headers),
    ]  # fmt: skip


def assert_intact(registry: AuthRegistry, owner: Login, image: Image) -> None:
    grant = registry.session(owner, f"repository:{image.repository}:pull")
    with registry.client(grant.bearer) as client:
        client.check_image(image)
        tags = client.http.get(f"/v2/{image.repository}/tags/list").json()["tags"]
    assert tags == [image.tag]


# namespaces


def test_push_into_another_users_namespace_is_denied(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    image = push(plain, bob, f"bob/{unique('mine')}")
    name = image.repository

    # Basic credentials straight on /v2
    for response in writes(plain, image, alice.basic):
        assert_denied(response)
    # a token: asking is not an error, but alice gets nothing there ...
    grant = plain.token(alice, f"repository:{name}:{ALL}")
    assert grant.access == {}, grant.claims
    # ... and the valid token does not open the door either
    for response in writes(plain, image, grant.bearer):
        assert_denied(response)
    # anonymous: a challenge for the scope the request needs
    anonymous = plain.http.post(f"/v2/{name}/blobs/uploads/")
    assert_challenged(anonymous, plain, f"repository:{name}:pull,push")
    assert_intact(plain, bob, image)


def test_robot_stays_in_its_namespace_and_grant(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    owner = plain.accounts.user(unique("rb"))
    ns = owner.username
    robot = plain.accounts.robot(ns, "builder", f"{ns}/apps-*:pull,push")
    mine = push(plain, robot, f"{ns}/apps-web")
    others = push(plain, owner, f"{ns}/secrets")
    elsewhere = push(plain, people["bob"], f"bob/{unique('r')}")

    assert plain.session(robot, f"repository:{mine.repository}:{ALL}").access == {
        f"repository:{mine.repository}": {"pull", "push"}
    }
    for image in (others, elsewhere):
        assert plain.session(robot, f"repository:{image.repository}:{ALL}").access == {}
        for response in reads(plain, image, robot.basic):
            assert_denied(response)
        for response in writes(plain, image, robot.basic):
            assert_denied(response)
    deletion = plain.http.delete(
        f"/v2/{mine.repository}/manifests/{mine.digest}", headers=robot.basic
    )
    assert_denied(deletion)  # granted pull and push only
    assert_intact(plain, owner, mine)


ROLE_ACTIONS = {
    "owner": {"pull", "push", "delete"},
    "admin": {"pull", "push", "delete"},
    "maintainer": {"pull", "push", "delete"},
    "developer": {"pull", "push"},
    "reader": {"pull"},
}
CAST = {"owner": "carol", "admin": "dave", "maintainer": "erin", "developer": "frank",
        "reader": "grace"}  # fmt: skip


def test_organization_roles(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    org = unique("org")
    plain.accounts.org(org, owner=people[CAST["owner"]].username)
    for role, user in CAST.items():
        if role != "owner":
            plain.accounts.member(org, people[user].username, role)
    outsider = people["bob"]
    repository = f"{org}/app"
    seed = push(plain, people[CAST["owner"]], repository)

    grants = {}
    for role, user in CAST.items():
        grants[role] = plain.session(people[user], f"repository:{repository}:{ALL}")
        assert grants[role].access == {f"repository:{repository}": ROLE_ACTIONS[role]}, role
    outsider_grant = plain.session(outsider, f"repository:{repository}:{ALL}")
    assert outsider_grant.access == {}

    # what the registry then enforces, with the tokens (and Basic credentials once each)
    reader, developer = people[CAST["reader"]], people[CAST["developer"]]
    assert plain.http.get(f"/v2/{repository}/manifests/v1", headers=reader.basic).status_code == 200
    for credentials in (reader.basic, grants["reader"].bearer):
        assert_denied(plain.http.post(f"/v2/{repository}/blobs/uploads/", headers=credentials))
    pushed = random_image(repository, "v2")
    with plain.client(grants["developer"].bearer) as client:
        client.push_image(pushed)
    manifest = f"/v2/{repository}/manifests/{pushed.digest}"
    assert_denied(plain.http.delete(manifest, headers=grants["developer"].bearer))
    deleted = plain.http.delete(
        f"/v2/{repository}/manifests/{seed.digest}", headers=grants["maintainer"].bearer
    )
    assert deleted.status_code == 202, show(deleted)
    assert_denied(plain.http.get(manifest, headers=outsider.basic))
    for response in reads(plain, pushed, outsider_grant.bearer):
        assert_denied(response)

    # a member removed from the organization loses everything there
    plain.accounts.member(org, developer.username, "none")
    assert plain.session(developer, f"repository:{repository}:{ALL}").access == {}


# private and public repositories


def test_private_repository_is_not_readable_by_others(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    image = push(plain, alice, f"alice/{unique('private')}")
    scope = f"repository:{image.repository}:pull"

    # anonymous: 401 with a challenge for pull, and nothing of the content
    for response in reads(plain, image, {}):
        assert_challenged(response, plain, scope)
        assert image.digest not in response.text
    # another user: 403 DENIED with Basic credentials, an empty grant at the token endpoint,
    # and 403 DENIED with that (valid) token
    for response in reads(plain, image, bob.basic):
        assert_denied(response)
    grant = plain.session(bob, f"repository:{image.repository}:pull")
    assert grant.access == {}
    for response in reads(plain, image, grant.bearer):
        assert_denied(response)
        assert image.digest not in response.text
    # the owner reads it
    assert_intact(plain, alice, image)


def test_anonymous_client_following_the_challenge_gets_401_on_private_repository(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    """What every client does without credentials: GET, 401 challenge, anonymous token
    from the realm, GET again with it. Credentials are still missing, so the answer must
    still be 401 with a challenge (a 403 would tell the client that logging in is
    pointless)."""
    image = push(plain, people["alice"], f"alice/{unique('private')}")
    first = plain.http.get(f"/v2/{image.repository}/manifests/v1")
    params = challenge(first)
    token = plain.token(None, params["scope"])
    assert token.access == {}
    second = plain.http.get(f"/v2/{image.repository}/manifests/v1", headers=token.bearer)
    assert_challenged(second, plain, f"repository:{image.repository}:pull")


def test_public_repository_and_organization(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    public = push(plain, alice, f"alice/{unique('public')}")
    plain.accounts.visibility(public.repository, "public")
    org = unique("puborg")
    plain.accounts.org(org, owner=alice.username, public=True)
    in_org = push(plain, alice, f"{org}/app")
    hidden = push(plain, alice, f"{org}/internal")
    plain.accounts.visibility(hidden.repository, "private")

    names = (public.repository, in_org.repository, hidden.repository)
    bob_grant = plain.session(bob, *(f"repository:{name}:{ALL}" for name in names))
    assert bob_grant.access == {
        f"repository:{public.repository}": {"pull"},
        f"repository:{in_org.repository}": {"pull"},
    }
    anonymous_grant = plain.token(None, *(f"repository:{name}:pull" for name in names))
    assert anonymous_grant.access == {
        f"repository:{public.repository}": {"pull"},
        f"repository:{in_org.repository}": {"pull"},
    }
    for image in (public, in_org):
        for headers in ({}, anonymous_grant.bearer, bob_grant.bearer):
            for response in reads(plain, image, headers):
                assert response.status_code == 200, show(response)
        # pulling is all: anonymous writes are challenged, bob's are denied
        for response in writes(plain, image, {}):
            assert response.status_code == 401, show(response)
        for response in writes(plain, image, bob_grant.bearer):
            assert_denied(response)
        assert_intact(plain, alice, image)
    # the same with Basic credentials
    pulled = plain.http.get(f"/v2/{in_org.repository}/manifests/v1", headers=bob.basic)
    assert pulled.status_code == 200 and pulled.content == in_org.manifest
    assert_denied(plain.http.post(f"/v2/{in_org.repository}/blobs/uploads/", headers=bob.basic))
    # a private repository in the public organization
    for response in reads(plain, hidden, {}):
        assert_challenged(response, plain, f"repository:{hidden.repository}:pull")
    for response in reads(plain, hidden, bob_grant.bearer):
        assert_denied(response)


# cross-repository mounts


def mount(
    registry: AuthRegistry, target: str, digest: str, source: str, headers: dict[str, str]
) -> httpx.Response:
    return registry.http.post(
        f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source}, headers=headers
    )


def test_mount_from_unreadable_repository_falls_back_to_upload(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    source = push(plain, alice, f"alice/{unique('src')}")
    digest = sha256_digest(source.layers[0])
    target = f"bob/{unique('dst')}"

    with_basic = mount(plain, target, digest, source.repository, bob.basic)
    grant = plain.session(
        bob, f"repository:{target}:pull,push", f"repository:{source.repository}:pull"
    )
    assert grant.access == {f"repository:{target}": {"pull", "push"}}
    with_token = mount(plain, target, digest, source.repository, grant.bearer)
    for response in (with_basic, with_token):
        # an upload session, not a mount
        assert response.status_code == 202, show(response)
        assert response.headers.get("Docker-Upload-UUID")
        assert "/blobs/uploads/" in response.headers["Location"]
    for headers in (bob.basic, grant.bearer):
        head = plain.http.head(f"/v2/{target}/blobs/{digest}", headers=headers)
        assert head.status_code == 404, show(head)
        get = plain.http.get(f"/v2/{target}/blobs/{digest}", headers=headers)
        assert get.status_code == 404 and code(get) == "BLOB_UNKNOWN", show(get)

    # the control: the same mount is made for a caller who may read the source
    plain.accounts.visibility(source.repository, "public")
    public_mount = mount(plain, target, digest, source.repository, bob.basic)
    assert public_mount.status_code == 201, show(public_mount)
    fetched = plain.http.get(f"/v2/{target}/blobs/{digest}", headers=bob.basic)
    assert fetched.status_code == 200 and fetched.content == source.layers[0]


def test_mount_between_own_repositories(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> None:
    alice = people["alice"]
    source = push(plain, alice, f"alice/{unique('src')}")
    digest = sha256_digest(source.layers[0])
    target = f"alice/{unique('dst')}"
    grant = plain.session(
        alice, f"repository:{target}:pull,push", f"repository:{source.repository}:pull"
    )
    response = mount(plain, target, digest, source.repository, grant.bearer)
    assert response.status_code == 201, show(response)
    fetched = plain.http.get(f"/v2/{target}/blobs/{digest}", headers=grant.bearer)
    assert fetched.content == source.layers[0]


# the catalog


def catalog_pages(
    registry: AuthRegistry, headers: dict[str, str], start: str, page: int
) -> tuple[list[str], list[str]]:
    """Names listed after ``start`` that share its prefix, ``page`` at a time, following
    Link headers; and every ``last`` value those headers carried."""
    names: list[str] = []
    cursors: list[str] = []
    params = {"n": str(page), "last": start}
    while True:
        response = registry.http.get("/v2/_catalog", params=params, headers=headers)
        assert response.status_code == 200, show(response)
        batch = response.json()["repositories"]
        names += [n for n in batch if n.startswith(start)]
        link = response.headers.get("link")
        if not link:
            return names, cursors
        match = re.match(r"<([^>]+)>", link)
        assert match, link
        params = query_of(match.group(1))
        cursor = unquote(params.get("last", ""))
        if not cursor.startswith(start):
            return names, cursors
        cursors.append(cursor)


@pytest.fixture
def catalog_world(
    plain: AuthRegistry, people: People, unique: Callable[[str], str]
) -> tuple[str, dict[str, Login], dict[str, str]]:
    """Two users and an organization whose names sort together (``<prefix>-a`` ...), each
    with repositories: {repository: owner name}."""
    prefix = unique("cat")
    a = plain.accounts.user(f"{prefix}-a")
    b = plain.accounts.user(f"{prefix}-b")
    org = f"{prefix}-o"
    plain.accounts.org(org, owner=a.username)
    owners = {
        f"{a.username}/one": "a",
        f"{a.username}/two": "a",
        f"{a.username}/shown": "a",
        f"{b.username}/mine": "b",
        f"{org}/internal": "a",
    }
    logins = {"a": a, "b": b}
    for repository, owner in owners.items():
        push(plain, logins[owner], repository)
    plain.accounts.visibility(f"{a.username}/shown", "public")
    return prefix, logins, owners


def test_catalog_lists_only_what_the_caller_may_pull(
    plain: AuthRegistry, catalog_world: tuple[str, dict[str, Login], dict[str, str]]
) -> None:
    prefix, logins, owners = catalog_world
    a, b = logins["a"], logins["b"]
    everything = sorted(owners)
    b_sees = sorted([f"{b.username}/mine", f"{a.username}/shown"])

    assert plain.http.get("/v2/_catalog").status_code == 401
    b_token = plain.session(b, "registry:catalog:*")
    assert b_token.access == {}  # the whole catalog is for administrators
    admin_token = plain.session(plain.admin, "registry:catalog:*")
    assert admin_token.access == {"registry:catalog": {"*"}}
    for headers, expected in (
        (b.basic, b_sees),
        (b_token.bearer, b_sees),
        (a.basic, sorted(set(everything) - {f"{b.username}/mine"})),
        (plain.admin.basic, everything),
        (admin_token.bearer, everything),
    ):
        names, _ = catalog_pages(plain, headers, prefix, 1000)
        assert names == expected


def test_catalog_pages_do_not_reveal_hidden_names(
    plain: AuthRegistry, catalog_world: tuple[str, dict[str, Login], dict[str, str]]
) -> None:
    """Page by page (n=1), user b sees what b may pull and nothing else: not in a page and
    not in the ``last`` of a Link header either."""
    prefix, logins, owners = catalog_world
    a, b = logins["a"], logins["b"]
    b_sees = [f"{a.username}/shown", f"{b.username}/mine"]
    grant = plain.session(b)
    names, cursors = catalog_pages(plain, grant.bearer, prefix, 1)
    assert sorted(names) == sorted(b_sees)
    revealed = sorted((set(owners) - set(b_sees)) & set(cursors))
    assert not revealed, f"Link headers named repositories b may not see: {revealed}"
