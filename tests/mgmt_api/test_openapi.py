"""The OpenAPI document: served, valid OpenAPI 3.1, and generated from the same table as the
routing, so every endpoint is documented and every documented endpoint exists."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
import pytest

from dockyard.auth import administration as adm
from dockyard.auth import management as mgmt
from dockyard.http.api import ENDPOINTS
from tests.mgmt_api.api import Api, Registry, assert_error

SAMPLE_PARAMS = {
    "name": "someone",
    "org": "someorg",
    "user": "someone",
    "ns": "someorg",
    "robot": "ci",
    "token_id": "0123456789abcdef",
    "repository": "someorg/app",
    "rule_id": "1",
    "policy_id": "1",
}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: SAMPLE_PARAMS[m[1]], template)


@pytest.fixture(scope="module")
def document(registry: Registry) -> dict[str, Any]:
    response = httpx.get(f"{registry.url}/api/v1/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return dict(response.json())


def test_served_to_anyone_as_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert set(document["components"]["securitySchemes"]) == {"basic", "bearer"}


def test_every_route_is_documented_and_every_documented_route_exists(
    document: dict[str, Any],
) -> None:
    routed = {(e.method.lower(), e.document_path) for e in ENDPOINTS}
    documented = {
        (method, p)
        for p, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routed == documented
    # ... and what the brief asked for is all there
    expected = {
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/user"),
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users"),
        ("get", "/api/v1/users/{name}"),
        ("patch", "/api/v1/users/{name}"),
        ("delete", "/api/v1/users/{name}"),
        ("get", "/api/v1/orgs"),
        ("post", "/api/v1/orgs"),
        ("get", "/api/v1/orgs/{org}"),
        ("patch", "/api/v1/orgs/{org}"),
        ("delete", "/api/v1/orgs/{org}"),
        ("get", "/api/v1/orgs/{org}/members"),
        ("put", "/api/v1/orgs/{org}/members/{user}"),
        ("delete", "/api/v1/orgs/{org}/members/{user}"),
        ("get", "/api/v1/namespaces/{ns}/robots"),
        ("post", "/api/v1/namespaces/{ns}/robots"),
        ("delete", "/api/v1/namespaces/{ns}/robots/{robot}"),
        ("get", "/api/v1/user/tokens"),
        ("post", "/api/v1/user/tokens"),
        ("delete", "/api/v1/user/tokens/{token_id}"),
        ("get", "/api/v1/repositories"),
        ("get", "/api/v1/repositories/{repository}"),
        ("patch", "/api/v1/repositories/{repository}"),
        ("get", "/api/v1/audit"),
        # the storage lifecycle (api_lifecycle)
        ("get", "/api/v1/namespaces/{ns}/quota"),
        ("put", "/api/v1/namespaces/{ns}/quota"),
        ("delete", "/api/v1/namespaces/{ns}/quota"),
        ("get", "/api/v1/namespaces/{ns}/immutable-rules"),
        ("post", "/api/v1/namespaces/{ns}/immutable-rules"),
        ("get", "/api/v1/namespaces/{ns}/immutable-rules/{rule_id}"),
        ("delete", "/api/v1/namespaces/{ns}/immutable-rules/{rule_id}"),
        ("get", "/api/v1/namespaces/{ns}/retention-policies"),
        ("post", "/api/v1/namespaces/{ns}/retention-policies"),
        ("get", "/api/v1/namespaces/{ns}/retention-policies/{policy_id}"),
        ("put", "/api/v1/namespaces/{ns}/retention-policies/{policy_id}"),
        ("delete", "/api/v1/namespaces/{ns}/retention-policies/{policy_id}"),
        ("post", "/api/v1/namespaces/{ns}/retention-runs"),
        ("get", "/api/v1/namespaces/{ns}/usage"),
        ("get", "/api/v1/usage/repositories/{repository}"),
        ("get", "/api/v1/usage"),
        ("post", "/api/v1/gc"),
        # the registry mirror (api_mirror)
        ("get", "/api/v1/upstreams"),
    }
    assert documented == expected


def test_operations_are_complete(document: dict[str, Any]) -> None:
    ids = []
    for p, item in document["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["tags"], (method, p)
            assert any(code.startswith("2") for code in operation["responses"]), (method, p)
            declared = {x["name"] for x in operation.get("parameters", []) if x["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", p)), (method, p)
            if p != "/api/v1/openapi.json":
                assert "401" in operation["responses"], (method, p)
            if "requestBody" in operation:
                assert "400" in operation["responses"], (method, p)
    assert len(ids) == len(set(ids))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref


def test_valid_by_the_openapi_schema(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_component_schemas_are_valid_json_schema(document: dict[str, Any]) -> None:
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_documented_patterns_are_the_rules(document: dict[str, Any]) -> None:
    assert mgmt._NAME_RE.pattern == adm.NAME_PATTERN
    create_user = document["paths"]["/api/v1/users"]["post"]
    schema = create_user["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["name"]["pattern"] == adm.NAME_PATTERN
    assert schema["properties"]["password"]["minLength"] == mgmt.MIN_PASSWORD_LENGTH
    assert schema["additionalProperties"] is False


def conforms(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    root = {**schema, "components": document["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)


def test_answers_match_their_documented_schemas(
    document: dict[str, Any], registry: Registry, admin: Api
) -> None:
    user = registry.new_user(admin)
    org = registry.new_org(user)
    robot = registry.new_robot(user, org)
    token = registry.new_token(user)
    registry.push(user.name, user.password, f"{org}/app")
    for method, template, instance in [
        ("get", "/api/v1/user", user.ok("GET", "user")),
        ("get", "/api/v1/users", admin.ok("GET", "users")),
        ("get", "/api/v1/users/{name}", admin.ok("GET", f"users/{user.name}")),
        ("get", "/api/v1/orgs", user.ok("GET", "orgs")),
        ("get", "/api/v1/orgs/{org}", user.ok("GET", f"orgs/{org}")),
        ("get", "/api/v1/orgs/{org}/members", user.ok("GET", f"orgs/{org}/members")),
        ("get", "/api/v1/namespaces/{ns}/robots", user.ok("GET", f"namespaces/{org}/robots")),
        ("post", "/api/v1/namespaces/{ns}/robots", robot),
        ("post", "/api/v1/user/tokens", token),
        ("get", "/api/v1/user/tokens", user.ok("GET", "user/tokens")),
        ("get", "/api/v1/repositories", user.ok("GET", "repositories")),
        ("get", "/api/v1/repositories/{repository}", user.ok("GET", f"repositories/{org}/app")),
        ("get", "/api/v1/audit", user.ok("GET", "audit")),
        ("get", "/api/v1/audit", admin.ok("GET", "audit", params={"limit": 5})),
    ]:
        operation = document["paths"][template][method]
        success = next(v for k, v in operation["responses"].items() if k.startswith("2"))
        conforms(document, success["content"]["application/json"]["schema"], instance)
    error = user.get("users")
    conforms(document, {"$ref": "#/components/schemas/Error"}, error.json())


def test_every_endpoint_but_the_document_demands_credentials(anonymous: Api) -> None:
    for endpoint in ENDPOINTS:
        response = anonymous.request(endpoint.method, concrete(endpoint.path), json={})
        if endpoint.authenticated:
            assert_error(response, 401, "authentication required")
        else:
            assert response.status_code == 200


def test_unknown_endpoints_and_methods(admin: Api) -> None:
    assert_error(admin.get("nothing-here"), 404, "no such API endpoint")
    assert_error(admin.get("/api/v2/users"), 404)
    assert_error(admin.get("users/"), 404)
    response = admin.request("PUT", "users")
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, POST, HEAD"
    response = admin.request("POST", "repositories/a/b")
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, PATCH, HEAD"


def test_head_is_get_without_a_body(admin: Api) -> None:
    response = admin.request("HEAD", "users")
    assert response.status_code == 200 and response.content == b""
