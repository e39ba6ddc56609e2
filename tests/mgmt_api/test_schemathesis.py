"""Schemathesis against the served OpenAPI document: generated requests (valid and not) as a
site administrator and as an ordinary user; no 5xx, answers as documented.

Runs when schemathesis is installed (``pip install schemathesis``); skipped otherwise.
``DOCKYARD_SCHEMATHESIS_SECONDS`` sets the time budget of each run (default 40)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mgmt_api.api import Registry

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "use_after_free",
    ]
)


def _schemathesis() -> str:
    pytest.importorskip("schemathesis")
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("no schemathesis command")
    return found


@pytest.mark.parametrize("who", ["admin", "user"])
def test_fuzzing_finds_no_server_error(own_registry: Registry, tmp_path: Path, who: str) -> None:
    command = _schemathesis()
    admin = own_registry.admin()
    if who == "admin":
        name, password = "admin", own_registry.admin_password
    else:
        caller = own_registry.new_user(admin)
        own_registry.new_org(caller)
        name, password = caller.name, caller.password
    # A Bearer token, not the password: generated requests change passwords too.
    token = own_registry.bearer(name, password)
    seconds = os.environ.get("DOCKYARD_SCHEMATHESIS_SECONDS", "40")
    result = subprocess.run(
        [
            command,
            "run",
            f"{own_registry.url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            CHECKS,
            "--max-time",
            seconds,
            "--workers",
            "1",
            "--seed",
            "1",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=int(seconds) + 240,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    assert "passed" in output, output[-5000:]
