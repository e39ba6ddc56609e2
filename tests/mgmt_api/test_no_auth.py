"""Without ``--auth`` there is nobody to manage: the API says how to turn it on; the
document is still served."""

from __future__ import annotations

from pathlib import Path

import httpx

from dockyard.http.api import ENDPOINTS
from tests.mgmt_api.api import assert_error
from tests.mgmt_api.test_openapi import concrete
from tests.support.processes import running_dockyard


def test_management_needs_auth(tmp_path: Path) -> None:
    with (
        running_dockyard(tmp_path / "data", "--workers", "1") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for endpoint in ENDPOINTS:
            response = client.request(endpoint.method, concrete(endpoint.path), json={})
            if endpoint.authenticated:
                message = assert_error(response, 404, "--auth")
                assert response.json()["error"] == "management_disabled"
                assert "dockyard serve --auth" in message
            else:
                assert response.status_code == 200
                assert response.json()["openapi"] == "3.1.0"
        assert_error(client.get("/api/v1/nothing"), 404, "no such API endpoint")
