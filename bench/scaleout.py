#!/usr/bin/env python3
"""The scale-out setup beside the embedded one, on this machine, alternating rounds.

``embedded``: one ``dockyard serve`` on SQLite and the local filesystem (the defaults).
``scaleout``: one node of the setup the tests use (tests/support/scaleout.py: PostgreSQL,
SeaweedFS S3 and Redis started from their binaries; two nodes, the first one measured),
and ``scaleout x2`` for manifest GETs spread over both nodes at once.

Everything shares this machine's cores, so the numbers say what one node costs on each
backend, not how far several machines scale. Needs the test extras (``pip install
-e '.[test]'``), ``wrk`` and ``curl``.

    .venv/bin/python bench/scaleout.py [--rounds 3] [--duration 10] [--big-mib 256]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from tests.support.processes import Server, start_dockyard  # noqa: E402
from tests.support.scaleout import running_cluster  # noqa: E402

import run as bench  # noqa: E402  (bench/run.py: wrk scripts and its runner)

REPO = "bench/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MIB = 1024 * 1024


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(url: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        config = b'{"architecture":"amd64","os":"linux"}'
        layer = os.urandom(1024 * 1024)
        for blob in (config, layer):
            response = client.post(
                f"/v2/{REPO}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob
            )
            response.raise_for_status()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        client.put(
            f"/v2/{REPO}/manifests/latest",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ).raise_for_status()


def manifest_rps(urls: list[str], duration: int, script: Path) -> tuple[float, float]:
    """wrk on every URL at once (64 connections in all): total req/s, worst p99 (ms)."""
    results: list[bench.WrkResult] = []
    conns = 64 // len(urls)

    def one(url: str) -> None:
        results.append(
            bench.run_wrk(
                f"{url}/v2/{REPO}/manifests/latest",
                conns,
                duration,
                script,
                [f"Accept: {OCI_MANIFEST}"],
            )
        )

    threads = [threading.Thread(target=one, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(results) != len(urls):
        raise RuntimeError("a wrk run failed")
    return (
        sum(r.requests / r.duration_s for r in results),
        max(r.p99_ms for r in results),
    )


def push_big(url: str, path: Path, digest: str) -> float:
    size = path.stat().st_size
    started = time.perf_counter()
    with path.open("rb") as body, httpx.Client(base_url=url, timeout=600) as client:
        response = client.post(
            f"/v2/{REPO}/blobs/uploads/",
            params={"digest": digest},
            content=iter(lambda: body.read(MIB), b""),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
    response.raise_for_status()
    return size / (time.perf_counter() - started) / 1e9


def get_big(url: str, digest: str, size: int) -> float:
    out = subprocess.run(
        ["curl", "-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{size_download} "
         "%{time_total}", f"{url}/v2/{REPO}/blobs/{digest}"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout.split()  # fmt: skip
    if out[0] != "200" or int(out[1]) != size:
        raise RuntimeError(f"GET big blob: {out}")
    return size / float(out[2]) / 1e9


@contextlib.contextmanager
def embedded(root: Path) -> Iterator[list[Server]]:
    server = start_dockyard(root / "embedded", env={"DOCKYARD_ACCESS_LOG": "false"})
    try:
        yield [server]
    finally:
        server.stop()


@contextlib.contextmanager
def scaleout(root: Path) -> Iterator[list[Server]]:
    os.environ["DOCKYARD_ACCESS_LOG"] = "false"
    with running_cluster(root / "cluster", nodes=2, s3_redirect=True) as cluster:
        yield cluster.nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("DOCKYARD_AUTH", "false")

    work = Path(tempfile.mkdtemp(prefix="dockyard-scaleout-bench-"))
    script = work / "get.lua"
    script.write_text(bench.WRK_METHOD % "GET" + bench.WRK_DONE)
    big = work / "big.bin"
    with big.open("wb") as handle:
        for _ in range(args.big_mib):
            handle.write(os.urandom(MIB))
    digest = bench.sha256_file(big)

    samples: dict[str, dict[str, list[float]]] = {}
    for round_number in range(1, args.rounds + 1):
        for label, setup in (("embedded", embedded), ("scaleout", scaleout)):
            with setup(work / f"{label}-{round_number}") as nodes:
                push_image(nodes[0].url)
                rps, p99 = manifest_rps([nodes[0].url], args.duration, script)
                row = samples.setdefault(label, {})
                row.setdefault("manifest GET req/s (one node, 64 conns)", []).append(rps)
                row.setdefault("  p99 ms", []).append(p99)
                if len(nodes) > 1:
                    rps2, p99_2 = manifest_rps([n.url for n in nodes], args.duration, script)
                    row.setdefault("manifest GET req/s (two nodes, 32 conns each)", []).append(rps2)
                    row.setdefault("  p99 ms (two nodes)", []).append(p99_2)
                row.setdefault(f"push {args.big_mib} MiB, one PUT (GB/s)", []).append(
                    push_big(nodes[0].url, big, digest)
                )
                row.setdefault(f"GET {args.big_mib} MiB (GB/s; S3: via redirect)", []).append(
                    get_big(nodes[0].url, digest, big.stat().st_size)
                )
            print(f"round {round_number} {label}: done", file=sys.stderr)

    keys = list(dict.fromkeys(k for row in samples.values() for k in row))
    lines = [
        f"Embedded vs scale-out on this machine ({os.cpu_count()} CPUs), medians of "
        f"{args.rounds} alternating rounds. Command: `{' '.join(sys.argv)}`",
        "",
        "| measurement | embedded (SQLite + files) | scale-out node (PostgreSQL + S3 + Redis) |",
        "|---|---|---|",
    ]
    for key in keys:
        cells = []
        for label in ("embedded", "scaleout"):
            values = samples.get(label, {}).get(key)
            cells.append(f"{statistics.median(values):,.2f}" if values else "n/a")
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
