"""skopeo, podman and buildah with a private store and private configuration.

They all read containers/storage and containers/image configuration; pointing the
CONTAINERS_* variables and REGISTRY_AUTH_FILE at files of our own keeps the tests away from
the machine's store (/var/lib/containers) and makes them parallel-safe.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.commands import run

POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}\n'


@dataclass(frozen=True)
class ContainersTools:
    root: Path
    env: dict[str, str]
    policy: Path

    def skopeo(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["skopeo", "--policy", str(self.policy), *args],
            env=self.env,
            timeout=timeout,
            check=check,
        )

    def copy(self, source: str, dest: str, *flags: str) -> tuple[str, str]:
        """``skopeo copy`` (plain HTTP both ways); returns (reported digest, debug output)."""
        digestfile = Path(tempfile.mkstemp(dir=self.root / "tmp", suffix=".digest")[1])
        try:
            result = self.skopeo(
                "--debug",
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--digestfile",
                str(digestfile),
                *flags,
                source,
                dest,
            )
            return digestfile.read_text().strip(), result.stderr + result.stdout
        finally:
            digestfile.unlink(missing_ok=True)

    def podman(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], env=self.env, timeout=timeout, check=check)

    def buildah(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["buildah", *args], env=self.env, timeout=timeout, check=check)


def make_containers_tools(root: Path, registry_host: str) -> ContainersTools:
    """Write private storage/registries/containers configs under ``root``."""
    for sub in ("graph", "run", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    storage = root / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
    )
    registries = root / "registries.conf"
    registries.write_text(
        "unqualified-search-registries = []\n"
        f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n'
    )
    containers = root / "containers.conf"
    containers.write_text(
        "[engine]\n"
        f'tmp_dir = "{root / "tmp"}"\n'
        'events_logger = "none"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    auth = root / "auth.json"
    auth.write_text('{"auths":{}}\n')
    policy = root / "policy.json"
    policy.write_text(POLICY)
    env = {
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "CONTAINERS_CONF": str(containers),
        "REGISTRY_AUTH_FILE": str(auth),
        "TMPDIR": str(root / "tmp"),
        "BUILDAH_ISOLATION": "chroot",
    }
    return ContainersTools(root, env, policy)
