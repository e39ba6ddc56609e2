"""The scale-out setup, started for real: PostgreSQL, Redis and SeaweedFS S3 from their
binaries, several Dockyard nodes sharing them (each with its own data directory, as on
separate machines), and a round-robin balancer in front.

``DOCKYARD_TEST_TARGET=scaleout`` runs the API and real-client suites against it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.balancer import Balancer, balancing
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.processes import Server, dockyard_command, start_dockyard
from tests.support.redis_server import RedisServer, running_redis
from tests.support.seaweed import Seaweed, start_seaweed


@dataclass
class Cluster:
    nodes: list[Server]
    balancer: Balancer
    postgres: PostgresServer
    redis: RedisServer
    seaweed: Seaweed
    database_url: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.balancer.host}"

    @property
    def host(self) -> str:
        return self.balancer.host

    def as_server(self) -> Server:
        """The balancer as the ``Server`` the suites talk to (logs: the first node's)."""
        first = self.nodes[0]
        return Server(self.url, first.data_dir, first.proc, first.log_path, first.args)

    def dockyard(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a ``dockyard`` command (``gc``, ``worker --once``...) as one more node."""
        return subprocess.run(
            [*dockyard_command(), *args],
            env={**os.environ, **self.env, "DOCKYARD_DATA_DIR": str(self.root / "cli")},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def cluster_env(
    database_url: str, redis: RedisServer, seaweed: Seaweed, keys_dir: Path
) -> dict[str, str]:
    return {
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_REDIS_URL": redis.url,
        "DOCKYARD_REDIS_PREFIX": f"t{secrets.token_hex(4)}",
        "DOCKYARD_KEYS_DIR": str(keys_dir),  # token signing keys: every node the same
        **seaweed.settings(f"c-{secrets.token_hex(6)}"),
        # blobs streamed through the nodes, so the API suite sees the registry's own
        # answers (the redirects to presigned URLs have tests of their own)
        "DOCKYARD_S3_REDIRECT": "false",
    }


@contextlib.contextmanager
def running_cluster(
    root: Path, nodes: int = 2, auth: bool = False, s3_redirect: bool = False
) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        stack.callback(postgres.close)
        redis = stack.enter_context(running_redis(root / "redis"))
        seaweed = start_seaweed(root / "seaweed")
        stack.callback(seaweed.stop)
        database = postgres.migrated_database()
        env = cluster_env(postgres.url(database), redis, seaweed, root / "keys")
        env["DOCKYARD_S3_REDIRECT"] = "true" if s3_redirect else "false"
        servers: list[Server] = []
        for index in range(nodes):
            server = start_dockyard(
                root / f"node{index}", env={**env, "DOCKYARD_WORKERS": "2"}, auth=auth
            )
            stack.callback(server.stop, signal.SIGTERM)
            servers.append(server)
        balancer = stack.enter_context(
            balancing([("127.0.0.1", int(s.url.rsplit(":", 1)[1])) for s in servers])
        )
        yield Cluster(
            servers, balancer, postgres, redis, seaweed, postgres.url(database), root, env
        )
