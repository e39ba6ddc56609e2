"""PostgreSQL as the metadata database: URLs and pool settings, `dockyard db upgrade`
through the CLI, the hot queries' plans, and a served registry on it (the registry core's
tests run on it too: tests/registry, parametrised by backend)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import event

from dockyard.auth import administration as adm
from dockyard.auth import management as mgmt
from dockyard.auth.identities import Identity
from dockyard.auth.management import ConflictError, ensure_first_admin
from dockyard.config import Settings
from dockyard.db import blobs as blob_db
from dockyard.db import identities as id_db
from dockyard.db import lifecycle as life_db
from dockyard.db import manifests as manifest_db
from dockyard.db import namespaces as ns_db
from dockyard.db import repositories as repo_db
from dockyard.db import tags as tag_db
from dockyard.db import uploads as upload_db
from dockyard.db.engine import _MIGRATIONS, Database, normalize_url
from dockyard.db.schema import metadata
from dockyard.oci import mediatypes as mt
from tests.registry.conftest import open_registry
from tests.registry.test_core import digest_of, push_image
from tests.support.oci_client import with_digest
from tests.support.processes import dockyard_command, running_dockyard


def head_revision() -> str:
    script = ScriptDirectory(str(_MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def test_postgresql_urls_mean_psycopg() -> None:
    assert normalize_url("postgresql://u:p@db:5432/reg") == "postgresql+psycopg://u:p@db:5432/reg"
    assert normalize_url("postgres://u@db/reg?sslmode=require") == (
        "postgresql+psycopg://u@db/reg?sslmode=require"
    )
    assert normalize_url("postgresql+psycopg://u@db/reg") == "postgresql+psycopg://u@db/reg"
    assert normalize_url("sqlite:////var/lib/dockyard.db") == "sqlite:////var/lib/dockyard.db"


def test_pool_settings_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("DOCKYARD_DATABASE_POOL_PRE_PING", "false")
    settings = Settings(
        database_url="postgresql://dockyard@127.0.0.1:1/none",
        database_max_overflow=7,
        database_pool_recycle_seconds=0,
        database_pool_timeout_seconds=2.5,
    )
    database = Database.from_settings(settings)  # no connection is made yet
    try:
        engine = database.writer
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        pool: Any = engine.pool
        assert pool.size() == 3 and pool._max_overflow == 7
        assert pool._pre_ping is False and pool._recycle == -1 and pool._timeout == 2.5
        assert database.url.startswith("postgresql+psycopg://")
    finally:
        database.dispose()
    defaults: Any = Database(settings.resolved_database_url).writer.pool
    assert defaults.size() == 10 and defaults._max_overflow == 20 and defaults._pre_ping
    with pytest.raises(ValueError):
        Settings(database_pool_size=0)


def _upgrade(url: str, data_dir: Path, *, via_env: bool) -> subprocess.Popen[bytes]:
    args = [*dockyard_command(), "db", "upgrade", "--data-dir", str(data_dir)]
    env = dict(os.environ)
    if via_env:
        env["DOCKYARD_DATABASE_URL"] = url
    else:
        args += ["--database-url", url]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finished(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_db_upgrade_through_the_cli(postgres_empty_url: str, tmp_path: Path) -> None:
    """Two nodes upgrading an empty database at once both succeed (one migrates, the
    other waits and finds it done); again, through the environment, changes nothing."""
    first = _upgrade(postgres_empty_url, tmp_path / "a", via_env=False)
    second = _upgrade(postgres_empty_url, tmp_path / "b", via_env=True)
    assert "up to date" in _finished(first) and "up to date" in _finished(second)
    assert "up to date" in _finished(_upgrade(postgres_empty_url, tmp_path / "a", via_env=True))
    with psycopg.connect(postgres_empty_url) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(head_revision(),)]
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        assert set(metadata.tables) <= tables
        collations = dict(
            conn.execute(
                "SELECT table_name, collation_name FROM information_schema.columns "
                "WHERE column_name = 'name' AND table_name IN ('repositories', 'tags')"
            ).fetchall()
        )
        assert collations == {"repositories": "C", "tags": "C"}
    assert not (tmp_path / "a" / "dockyard.db").exists()  # PostgreSQL, not SQLite


def test_migrations_go_down_and_up_again(postgres_empty_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    database = Database(postgres_empty_url)
    try:
        database.upgrade()
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with database.writer.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        with database.reader.connect() as conn:
            left = conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_name <> 'alembic_version'"
            ).scalar()
        assert left == 0
        database.upgrade()
        with database.reader.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        assert version == head_revision()
    finally:
        database.dispose()


@pytest.fixture
def explained(postgres_url: str, tmp_path: Path) -> Iterator[Callable[[Callable[..., Any]], str]]:
    """Run a query function of dockyard.db on a small registry; return the plans
    PostgreSQL chooses for the statements it sends, with sequential scans and hash/merge
    joins priced out: a sequential scan left in a plan means no index can serve it."""
    registry = open_registry(tmp_path / "data", postgres_url)
    subject = asyncio.run(push_image(registry, "team/app", "v1", b"layer"))
    engine = registry.ctx.db.writer

    def explain(call: Callable[..., Any]) -> str:
        statements: list[tuple[str, Any]] = []
        with engine.connect() as conn:

            def grab(*args: Any) -> None:
                statements.append((args[2], args[3]))

            event.listen(conn, "before_cursor_execute", grab)
            call(conn, subject)
            event.remove(conn, "before_cursor_execute", grab)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(
                "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"
            )
            plans = []
            for statement, parameters in statements:
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
                plans.append(json.dumps(cursor.fetchone()[0]))
            conn.rollback()
        assert plans, "the query function sent no statement"
        return "\n".join(plans)

    yield explain
    registry.close()


HOT_QUERIES: dict[str, Callable[[Any, str], Any]] = {
    "repository by name": lambda conn, d: repo_db.get_id(conn, "team/app"),
    "manifest by tag": lambda conn, d: manifest_db.by_tag(conn, 1, "v1"),
    "manifest by digest": lambda conn, d: manifest_db.by_digest(conn, 1, d),
    "referrers": lambda conn, d: manifest_db.referrers(conn, 1, d, None, "sha256:0", 100),
    "catalog page": lambda conn, d: repo_db.list_names(conn, "a", 100),
    "tags page": lambda conn, d: tag_db.list_names(conn, 1, "a", 100),
    "linked blob": lambda conn, d: blob_db.linked_size(conn, 1, digest_of(b"layer")),
    "blob": lambda conn, d: blob_db.size(conn, digest_of(b"layer")),
    "upload": lambda conn, d: upload_db.get(conn, "00000000-0000-0000-0000-000000000000"),
    "namespace bytes": lambda conn, d: life_db.namespace_bytes(conn, "team"),
    "namespace repositories": lambda conn, d: life_db.namespace_repository_count(conn, "team"),
}


@pytest.mark.parametrize("query", sorted(HOT_QUERIES))
def test_hot_queries_are_indexed(
    explained: Callable[[Callable[..., Any]], str], query: str
) -> None:
    plan = explained(HOT_QUERIES[query])
    assert "Seq Scan" not in plan, plan
    if query.startswith("namespace"):
        # the prefix is an index range (bytewise names, migration 0006), not a full scan
        assert "name >= 'team/'" in plan.replace("(name)::text", "name"), plan


def test_a_served_registry_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """`dockyard serve` (two worker processes) on PostgreSQL: push a blob and a manifest,
    pull them, list tags and the catalog, delete."""
    layer = b"a layer served from PostgreSQL metadata" * 100
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_EMPTY, "digest": config_digest, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    data_dir = tmp_path / "data"
    env = {"DOCKYARD_DATABASE_URL": postgres_url, "DOCKYARD_ACCESS_LOG": "false"}
    with (
        running_dockyard(data_dir, "--workers", "2", env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        # monolithic push of the config; chunked push (POST, PATCH, PUT) of the layer
        pushed = http.post(f"/v2/pg/app/blobs/uploads/?digest={config_digest}", content=config)
        assert pushed.status_code == 201, pushed.text
        started = http.post("/v2/pg/app/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        patched = http.patch(location, content=layer[:1000])
        assert patched.status_code == 202, patched.text
        finished = http.put(
            with_digest(patched.headers["Location"], layer_digest), content=layer[1000:]
        )
        assert finished.status_code == 201, finished.text
        put = http.put(
            "/v2/pg/app/manifests/v1",
            content=manifest,
            headers={"Content-Type": mt.OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
        assert put.headers["Docker-Content-Digest"] == manifest_digest
        for reference in ("v1", manifest_digest):
            got = http.get(f"/v2/pg/app/manifests/{reference}", headers={"Accept": mt.OCI_MANIFEST})
            assert got.status_code == 200 and got.content == manifest
        blob = http.get(f"/v2/pg/app/blobs/{layer_digest}")
        assert blob.status_code == 200 and blob.content == layer
        assert http.get("/v2/pg/app/tags/list").json() == {"name": "pg/app", "tags": ["v1"]}
        assert http.get("/v2/_catalog").json() == {"repositories": ["pg/app"]}
        assert http.delete(f"/v2/pg/app/manifests/{manifest_digest}").status_code == 202
        assert http.get("/v2/pg/app/manifests/v1").status_code == 404
        assert http.get("/v2/pg/app/tags/list").json()["tags"] == []
    # the metadata lives in PostgreSQL: blob rows there, no SQLite file in the data dir
    with psycopg.connect(postgres_url) as conn:
        stored = {row[0] for row in conn.execute("SELECT digest FROM blobs")}
        assert {layer_digest, config_digest} <= stored
        assert conn.execute("SELECT count(*) FROM manifests").fetchone() == (0,)
    assert not (data_dir / "dockyard.db").exists()


def _at_once(database: Database, jobs: list[Callable[[Any], Any]]) -> list[Any]:
    """Each job in its own write transaction, all started together; results or errors."""
    barrier = threading.Barrier(len(jobs))

    def one(job: Callable[[Any], Any]) -> Any:
        barrier.wait(timeout=30)
        with database.writer.begin() as conn:
            return job(conn)

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(one, job) for job in jobs]
        results: list[Any] = []
        for future in futures:
            try:
                results.append(future.result(timeout=60))
            except Exception as exc:
                results.append(exc)
        return results


def test_nodes_starting_together_create_one_first_admin(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        results = _at_once(database, [ensure_first_admin] * 4)
        assert sum(isinstance(r, str) for r in results) == 1, results
        assert sum(r is None for r in results) == 3, results
        with database.reader.connect() as conn:
            assert [u.name for u in id_db.list_users(conn)] == ["admin"]
    finally:
        database.dispose()


def test_two_admins_demoting_each_other_at_once_leave_one(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        with database.writer.begin() as conn:
            ids = {n: mgmt.create_user(conn, n, "a long password 1", True) for n in ("ann", "bob")}

        def demote(actor: str, target: str) -> Callable[[Any], Any]:
            identity = Identity("user", actor, user_id=ids[actor], is_admin=True)
            return lambda conn: adm.update_user(conn, identity, target, admin=False)

        results = _at_once(database, [demote("ann", "bob"), demote("bob", "ann")])
        assert sum(isinstance(r, ConflictError) for r in results) == 1, results
        with database.reader.connect() as conn:
            assert ns_db.count_active_admins(conn) == 1
    finally:
        database.dispose()
