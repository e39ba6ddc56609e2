#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 machine, then run them all:
# lint, types, unit, API, crash/concurrency and real-client end-to-end tests.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Real clients and the reference registry the tests run against (see docs/testing.md).
PACKAGES=(skopeo podman buildah docker.io containerd docker-registry busybox-static uidmap postgresql redis-server curl)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-4}" -p no:cacheprovider "$@"

# With no arguments (the whole suite, as CI runs it): the API and real-client suites once
# more, against the scale-out setup — two Dockyard nodes on PostgreSQL, SeaweedFS S3 and
# Redis behind a round-robin balancer (tests/support/scaleout.py).
if [ "$#" -eq 0 ]; then
    DOCKYARD_TEST_TARGET=scaleout .venv/bin/python -m pytest -n "${PYTEST_SCALEOUT_WORKERS:-3}" \
        -p no:cacheprovider tests/api tests/e2e
fi
