"""env.py files written the way large applications write them (issue 21), deployed unchanged:
one that must run in a worker thread of an AnyIO event loop (prefect's `run_async_from_worker_
thread`), one that sets its own version locations, one that falls back to a SQLite file when
its URL variable is missing; and what the reports say of a project without revisions and of
multi-line revision docstrings. Real PostgreSQL, real subprocesses, real signals."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import (
    AlembicProject,
    Database,
    GitHubRunner,
    Run,
    app_url_env,
    write_alembic_project,
)
from tests.helpers.pgcluster import (
    PLAIN_PASSWORD,
    PLAIN_ROLE,
    SPECIAL_PASSWORD,
    SPECIAL_ROLE,
    ClusterDatabase,
    PgCluster,
    encode,
)
from tests.helpers.scenarios import cancel_during_python, cancel_during_sleep

# prefect's style: env.py builds its own async engine, switches to the event loop with
# anyio.from_thread (which works only in a worker thread of an AnyIO loop) and sets the
# version locations itself, just before migrating.
WORKER_ENV = """\
import threading
from pathlib import Path

import anyio.from_thread
from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
VERSIONS = {versions!r}


def run_async_from_worker_thread(fn):
    return anyio.from_thread.run(fn)


def do_run_migrations(connection):
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def apply_migrations():
    assert threading.current_thread() is not threading.main_thread()
    if VERSIONS:
        context.script.version_locations = [Path(VERSIONS)]
    engine = create_async_engine(config.get_main_option("sqlalchemy.url"),
                                 poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    if VERSIONS:
        context.script.version_locations = [Path(VERSIONS)]
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_async_from_worker_thread(apply_migrations)
"""

# The tests' usual env.py (the handed connection), with a guard that it runs in a worker
# thread of an event loop: anyio.from_thread raises NoEventLoopError anywhere else.
GUARD = "import anyio.from_thread\nanyio.from_thread.run_sync(lambda: None)\n"


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def deploy_in(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database, *args: str, **inputs: str
) -> Run:
    github.output_file.write_text("")
    github.summary_file.write_text("")
    inputs = {"database-url": database.url, "migrations-path": "migrations", **inputs}
    return run_cli(*args, env=github.with_inputs(**inputs), cwd=github.workspace)


def warning_lines(run: Run, kind: str = "warning") -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith(f"::{kind}")]


# --------------------------------------------------------------------------- worker thread


def prefect_like(github: GitHubRunner, *, versions: Path | None) -> AlembicProject:
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(
        WORKER_ENV.format(versions=str(versions) if versions else "")
    )
    return project


def test_worker_env_py_runs_in_an_event_loop_worker_thread(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    project = prefect_like(github, versions=None)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    # On the main thread (the default) such an env.py cannot start: exit 2, nothing changed.
    run = deploy_in(github, run_cli, database)
    assert run.returncode == 2, run.output
    assert "env.py failed before migrating" in run.stdout
    assert database.tables() == set()
    # env-thread: worker: deploy, then status and plan, read as a main-thread env.py's.
    run = deploy_in(github, run_cli, database, **{"env-thread": "worker"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}
    assert {"a", "b"} <= database.tables()
    out = github.outputs()
    assert out["status"] == "success" and out["current-revision"] == "0002_b"
    rep = report(github)
    assert [a["revision"] for a in rep["migrate"]["applied"]] == ["0001_a", "0002_b"]
    history = database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history ORDER BY id")
    assert history == [("0001_a", "upgrade"), ("0002_b", "upgrade")]
    run = deploy_in(github, run_cli, database, "status", **{"env-thread": "worker"})
    assert run.returncode == 0, run.output
    assert "db-deploy status: up to date" in run.stdout
    run = deploy_in(github, run_cli, database, "plan", **{"env-thread": "worker"})
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "noop"


def test_worker_env_py_secrets_are_masked(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    """What env.py prints from its worker thread is masked like the rest of the output."""
    project = write_alembic_project(github.workspace / "migrations")
    env = project.root / "env.py"
    env.write_text(
        GUARD + "import os\nprint('url is', os.environ['DATABASE_URL'])\n" + env.read_text()
    )
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    url = database.url.replace("postgres@", "postgres:s3cr3t-pw@")
    database.execute("ALTER ROLE postgres PASSWORD 's3cr3t-pw'")
    run = deploy_in(github, run_cli, database, **{"env-thread": "worker", "database-url": url})
    assert run.returncode == 0, run.output
    assert "url is" in run.stdout
    assert "s3cr3t-pw" not in run.visible


def test_worker_env_py_failures_are_reported_as_on_the_main_thread(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    """A failing revision: the same record (file, line, statement, class); env.py ending the
    process (sys.exit) from its worker thread: the usual one line, exit 2."""
    project = write_alembic_project(github.workspace / "migrations")
    env = project.root / "env.py"
    plain = env.read_text()
    env.write_text(GUARD + plain)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_bad", "op.execute('SELECT * FROM missing_table')")
    run = deploy_in(github, run_cli, database, **{"env-thread": "worker"})
    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output
    out = github.outputs()
    assert out["error-class"] == "sql-error" and out["current-revision"] == "0001_a"
    failure = report(github)["failure"]
    assert failure["file"] == "migrations/versions/0002_bad.py" and failure["line"] == 13
    assert "missing_table" in failure["statement"]
    env.write_text(GUARD + "import sys\nsys.exit(3)\n" + plain)
    run = deploy_in(github, run_cli, database, **{"env-thread": "worker"})
    assert run.returncode == 2, run.output
    assert "env.py called sys.exit(3)" in run.stdout and "Traceback" not in run.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_worker_env_py_is_cancelled_like_a_main_thread_one(
    project: AlembicProject, database: Database, github: GitHubRunner, sig: signal.Signals
) -> None:
    env = project.root / "env.py"
    env.write_text(GUARD + env.read_text())
    cancel_during_sleep(project, database, github, sig, **{"env-thread": "worker"})


def test_worker_env_py_busy_in_python_is_cancelled_in_time(
    project: AlembicProject, database: Database, github: GitHubRunner, tmp_path: Path
) -> None:
    """A revision busy in Python code (beyond a server-side cancel): the run still ends, as
    cancelled, in time; the open revision rolled back."""
    env = project.root / "env.py"
    env.write_text(GUARD + env.read_text())
    cancel_during_python(
        project, database, github, tmp_path / "sleeping", **{"env-thread": "worker"}
    )


# --------------------------------------------------------------------------- version locations


def located_elsewhere(github: GitHubRunner) -> tuple[AlembicProject, Path]:
    """A project whose env.py points Alembic at a versions folder of its own (outside the
    script folder), as prefect's does; the script folder's own `versions` stays empty."""
    project = write_alembic_project(github.workspace / "migrations")
    elsewhere = github.workspace / "app" / "versions"
    elsewhere.mkdir(parents=True)
    env = project.root / "env.py"
    env.write_text(
        "from alembic import context as _c\n"
        f"_c.script.version_locations = [{str(elsewhere)!r}]\n" + env.read_text()
    )
    writer = AlembicProject(root=elsewhere.parent)
    return writer, elsewhere


def test_version_locations_set_by_env_py_are_honoured(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    writer, _ = located_elsewhere(github)
    writer.add("v1", "op.create_table('a', sa.Column('id', sa.Integer))", "op.drop_table('a')")
    writer.add("v2", "op.create_table('b', sa.Column('id', sa.Integer))", "op.drop_table('b')")
    # plan: both pending (not "base → base").
    run = deploy_in(github, run_cli, database, "plan")
    assert run.returncode == 0, run.output
    assert [p["revision"] for p in report(github)["migrate"]["pending"]] == ["v1", "v2"]
    assert database.tables() == set()
    # deploy to a named revision (known only once env.py ran), then to the head.
    run = deploy_in(github, run_cli, database, target="v1")
    assert run.returncode == 0, run.output
    assert database.version() == {"v1"}
    run = deploy_in(github, run_cli, database)
    assert run.returncode == 0, run.output
    assert database.version() == {"v2"} and {"a", "b"} <= database.tables()
    assert not warning_lines(run)
    # status, drift, rollback read the same revisions.
    run = deploy_in(github, run_cli, database, "status")
    assert run.returncode == 0, run.output
    assert "up to date" in run.stdout
    assert report(github)["status_check"]["script_heads"] == ["v2"]
    run = deploy_in(github, run_cli, database, "drift")
    assert run.returncode == 0, run.output
    run = deploy_in(github, run_cli, database, "rollback", target="v1")
    assert run.returncode == 0, run.output
    assert database.version() == {"v1"} and "b" not in database.tables()


def test_version_locations_in_alembic_ini_are_honoured(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    project = write_alembic_project(github.workspace / "migrations")
    (github.workspace / "app" / "versions").mkdir(parents=True)
    ini = project.root / "alembic.ini"
    ini.write_text(ini.read_text() + "version_locations = %(here)s/../app/versions\n")
    writer = AlembicProject(root=github.workspace / "app")
    writer.add("i1", "op.create_table('a', sa.Column('id', sa.Integer))")
    run = deploy_in(github, run_cli, database)
    assert run.returncode == 0, run.output
    assert database.version() == {"i1"}


def test_no_revisions_found_is_never_a_silent_green(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    write_alembic_project(github.workspace / "migrations")
    run = deploy_in(github, run_cli, database)
    assert run.returncode == 0, run.output
    warned = warning_lines(run)
    assert len(warned) == 1 and "no revisions found in 'migrations/versions'" in warned[0], warned
    assert any("no revisions found" in w for w in report(github)["warnings"])
    run = deploy_in(github, run_cli, database, "status")
    assert run.returncode == 0, run.output
    assert "db-deploy status: no revisions found" in run.stdout
    assert "no revisions found" in github.summary()


# --------------------------------------------------------------------------- SQLite fallback

FALLBACK_ENV = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool

# The application's own variable; without it, a local SQLite file.
url = os.environ.get("MYAPP_DATABASE_URL", "sqlite:///myapp.db")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""


def test_env_py_falling_back_to_sqlite_is_named(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(FALLBACK_ENV)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    run = deploy_in(github, run_cli, database)
    assert run.returncode == 1, run.output
    error = github.outputs()["error"]
    assert "env.py connects to another database: sqlite:///myapp.db" in error, error
    assert "variable of its own" in error and "DATABASE_URL" in error
    assert "Traceback" not in run.output
    assert database.tables() == set()
    # Stopped before any revision ran there either.
    db_file = github.workspace / "myapp.db"
    if db_file.exists():
        import sqlite3

        with sqlite3.connect(db_file) as lite:
            names = {r[0] for r in lite.execute("SELECT name FROM sqlite_master")}
        assert "a" not in names
    # The variable it reads, set to the database: deployed.
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "migrations"})
    env["MYAPP_DATABASE_URL"] = database.url.replace("postgresql://", "postgresql+psycopg://")
    github.output_file.write_text("")
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}


def test_env_py_falling_back_to_sqlite_in_a_worker_thread(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(GUARD + FALLBACK_ENV)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    run = deploy_in(github, run_cli, database, **{"env-thread": "worker"})
    assert run.returncode == 1, run.output
    assert "env.py connects to another database: sqlite:///myapp.db" in github.outputs()["error"]


@pytest.fixture
def same_name_elsewhere(database: Database, pg_cluster: PgCluster) -> Iterator[None]:
    """A database of the target's name on another server (the TCP cluster), owned by
    app_special; dropped after the test."""
    pg_cluster.execute(f'CREATE DATABASE "{database.name}" OWNER "{SPECIAL_ROLE}"')
    try:
        yield
    finally:
        pg_cluster.execute(f'DROP DATABASE "{database.name}" WITH (FORCE)')


def stopped_elsewhere(
    run: Run, github: GitHubRunner, database: Database, pg_cluster: PgCluster
) -> str:
    """Assert the run was stopped for migrating on the same-name database on the other server,
    before anything was written on either; returns the error."""
    assert run.returncode == 1, run.output
    error = github.outputs()["error"]
    assert "env.py connects to another database" in error, error
    assert "nothing was run there" in error, error
    assert "same name on another server" in error, error
    assert SPECIAL_PASSWORD not in run.output and SPECIAL_PASSWORD not in error
    assert "Traceback" not in run.output
    # Stopped before Alembic wrote anything there, the version table included.
    assert pg_cluster.tables(database.name) == set()
    assert database.tables() == set()
    return error


@pytest.mark.parametrize(
    "engine_kw, configure_kw, handed",
    [
        ("", "", "shared"),
        ("", ", transaction_per_migration=True", "shared"),
        # Each statement commits at once: Alembic's version table would be there for good.
        (", isolation_level='AUTOCOMMIT'", "", "shared"),
        # No connection handed: the target's identity is read on a session of its own.
        ("", "", "none"),
    ],
    ids=["one-transaction", "transaction-per-migration", "autocommit", "nothing-handed"],
)
def test_env_py_on_a_database_of_the_same_name_on_another_server_is_stopped(
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
    pg_cluster: PgCluster,
    same_name_elsewhere: None,
    engine_kw: str,
    configure_kw: str,
    handed: str,
) -> None:
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(app_url_env(engine_kw, configure_kw))
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    github.output_file.write_text("")
    env = github.with_inputs(
        **{"database-url": database.url, "migrations-path": "migrations", "env-connection": handed}
    )
    env["MYAPP_DATABASE_URL"] = pg_cluster.url(database.name, scheme="postgresql+psycopg")
    stopped_elsewhere(run_cli(env=env, cwd=github.workspace), github, database, pg_cluster)


# The engine is built from the target's own URL (DATABASE_URL), and then connects elsewhere.
REDIRECTED_ENV = """\
import os

import psycopg
import sqlalchemy as sa
from alembic import context

url = sa.make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg")
engine = sa.create_engine(url, poolclass=sa.pool.NullPool, {engine_kw})
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

CONNECT_ARGS = (
    'connect_args={"host": os.environ["OTHER_HOST"], "port": int(os.environ["OTHER_PORT"]),'
    ' "user": os.environ["OTHER_USER"], "password": os.environ["OTHER_PASSWORD"]}'
)
# name: (the driver, the engine's arguments that send it to the other server)
REDIRECTIONS = {
    "connect-args": ("psycopg", CONNECT_ARGS),
    "creator": ("psycopg", 'creator=lambda: psycopg.connect(os.environ["OTHER_DSN"])'),
    # pg8000 (as asyncpg) does not say where it connected, as libpq does
    "pg8000": ("pg8000", CONNECT_ARGS),
    # the same, each statement committing at once (no transaction block to ask it in)
    "pg8000-autocommit": ("pg8000", CONNECT_ARGS + ', isolation_level="AUTOCOMMIT"'),
}


def redirected_run(
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
    pg_cluster: PgCluster,
    driver: str,
    engine_kw: str,
    handed: str,
) -> str:
    """Deploy with an env.py whose engine, built from the target's URL on `driver`, is sent to
    the same-name database on the other server (the `same_name_elsewhere` fixture must have
    made it) by `engine_kw`; assert it was stopped there before anything was written
    (`stopped_elsewhere`); returns the error."""
    project = write_alembic_project(github.workspace / "migrations")
    env_py = REDIRECTED_ENV.replace("postgresql+psycopg", f"postgresql+{driver}")
    (project.root / "env.py").write_text(env_py.format(engine_kw=engine_kw))
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    github.output_file.write_text("")
    env = github.with_inputs(
        **{"database-url": database.url, "migrations-path": "migrations", "env-connection": handed}
    )
    env.update(
        # libpq takes the socket folder; pg8000 speaks TCP only, to the same server
        OTHER_HOST=str(pg_cluster.sockets) if driver == "psycopg" else pg_cluster.host,
        OTHER_PORT=str(pg_cluster.port),
        OTHER_USER=SPECIAL_ROLE,
        OTHER_PASSWORD=SPECIAL_PASSWORD,
        OTHER_DSN=pg_cluster.url(database.name),
    )
    return stopped_elsewhere(run_cli(env=env, cwd=github.workspace), github, database, pg_cluster)


@pytest.mark.parametrize("handed", ["shared", "none"])
@pytest.mark.parametrize("redirection", list(REDIRECTIONS))
def test_env_py_whose_engine_connects_elsewhere_than_its_url_is_stopped(
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
    pg_cluster: PgCluster,
    same_name_elsewhere: None,
    redirection: str,
    handed: str,
) -> None:
    """The URL is the target's, so it cannot tell: the driver says where the connection went,
    compared with what it says of the connection env.py was handed, or without one (`none`)
    with the URL as written. A driver that does not say (pg8000, asyncpg): the database the
    server says it is decides, not the URL."""
    driver, engine_kw = REDIRECTIONS[redirection]
    if driver != "psycopg":
        pytest.importorskip(driver)
    error = redirected_run(github, run_cli, database, pg_cluster, driver, engine_kw, handed)
    assert "`creator` or `connect_args`" in error, error
    if driver == "psycopg":  # where it went, as the driver says
        assert f"port={pg_cluster.port}" in error or f":{pg_cluster.port}/" in error, error
        assert "does not say where it went" not in error, error
    else:
        assert "does not say where it went" in error, error


@pytest.mark.parametrize("handed", ["shared", "none"])
def test_env_py_whose_engine_changes_only_the_port_is_stopped(
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
    pg_cluster: PgCluster,
    same_name_elsewhere: None,
    handed: str,
) -> None:
    """The target's URL leaves its port to libpq's default (5432, or PGPORT); env.py's engine,
    built from it, sets only another port (`connect_args`): another server on the same host.
    Without a connection handed to env.py (`none`) the URL as written cannot tell (it has no
    port to compare): a session of the deployer's own to the URL says where the default took
    it. Both servers are reached through one socket folder, as two clusters on one host are."""
    target = sa.make_url(database.url)
    folder = Path(tempfile.mkdtemp(prefix="dbd-port-", dir="/tmp"))  # short: socket paths
    try:
        ours = Path(target.query["host"]) / f".s.PGSQL.{target.port or 5432}"
        (folder / ".s.PGSQL.5432").symlink_to(ours)
        theirs = pg_cluster.sockets / f".s.PGSQL.{pg_cluster.port}"
        (folder / f".s.PGSQL.{pg_cluster.port}").symlink_to(theirs)
        url = target.set(port=None).update_query_dict({"host": str(folder)})
        project = write_alembic_project(github.workspace / "migrations")
        (project.root / "env.py").write_text(
            REDIRECTED_ENV.format(
                engine_kw='connect_args={"port": int(os.environ["OTHER_PORT"]), '
                '"user": os.environ["OTHER_USER"], "password": os.environ["OTHER_PASSWORD"]}'
            )
        )
        project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
        github.output_file.write_text("")
        env = github.with_inputs(
            **{
                "database-url": url.render_as_string(hide_password=False),
                "migrations-path": "migrations",
                "env-connection": handed,
            }
        )
        env.update(
            PGPORT="5432",
            OTHER_PORT=str(pg_cluster.port),
            OTHER_USER=SPECIAL_ROLE,
            OTHER_PASSWORD=SPECIAL_PASSWORD,
        )
        error = stopped_elsewhere(
            run_cli(env=env, cwd=github.workspace), github, database, pg_cluster
        )
        assert "`creator` or `connect_args`" in error, error
        assert f"port={pg_cluster.port}" in error or f":{pg_cluster.port}/" in error, error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_pg8000_engine_on_another_database_of_the_same_server_is_stopped(
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
    second_database: Database,
) -> None:
    """The redirect stays on the target's server, to another database: the message names the
    database the server says the connection is in, not the URL's."""
    pytest.importorskip("pg8000")
    other = second_database.name
    project = write_alembic_project(github.workspace / "migrations")
    env_py = REDIRECTED_ENV.replace("postgresql+psycopg", "postgresql+pg8000")
    target = sa.make_url(database.url)  # a socket folder: pg8000 takes the socket's path
    socket = f"{target.query['host']}/.s.PGSQL.{target.port or 5432}"
    (project.root / "env.py").write_text(
        env_py.format(engine_kw=f'connect_args={{"database": "{other}", "unix_sock": "{socket}"}}')
    )
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    github.output_file.write_text("")
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "migrations"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 1, run.output
    error = github.outputs()["error"]
    assert "env.py connects to another database: postgresql+pg8000:" in error, error
    assert f"/{other}" in error and "another server" not in error, error
    assert "nothing was run there" in error
    assert database.tables() == set() and second_database.tables() == set()


def test_a_version_table_the_deploy_role_may_not_read_is_said_in_one_line(
    github: GitHubRunner, run_cli: Callable[..., Run], cluster_db: ClusterDatabase
) -> None:
    """env.py migrates as app_plain (its own variable), which creates alembic_version; the
    deploy role, app_special, may not read it: one line saying what to grant, exit 1, class
    config (it was an internal error with SQLAlchemy's traceback link)."""
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(app_url_env())
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    github.output_file.write_text("")
    env = github.with_inputs(**{"database-url": cluster_db.url(), "migrations-path": "migrations"})
    env["MYAPP_DATABASE_URL"] = cluster_db.url(role=PLAIN_ROLE, scheme="postgresql+psycopg")
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["error-class"] == "config", out
    assert "cannot read the revision from alembic_version: permission denied" in out["error"]
    assert "Grant SELECT on alembic_version to the deploy role" in out["error"]
    assert "internal error" not in run.output and "sqlalche.me" not in run.output
    assert "Traceback" not in run.output
    assert SPECIAL_PASSWORD not in run.output and PLAIN_PASSWORD not in run.output
    # The revision is unknown because it may not be read, not because a connection was lost.
    assert "connection lost" not in run.output + github.summary()
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["revisions"]["current"] == "unknown (version table unreadable)"
    assert out["current-revision"] == ""


def test_env_py_on_the_target_through_another_address_deploys(
    github: GitHubRunner, run_cli: Callable[..., Run], cluster_db: ClusterDatabase
) -> None:
    # The target by TCP (127.0.0.1), env.py's variable by the server's Unix socket: another
    # address, the same database (as a pooler's URL beside the direct one), and another
    # TimeZone for the session (the server's start time must compare all the same).
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(app_url_env())
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    cluster = cluster_db.cluster
    socket_url = (
        f"postgresql+psycopg://{encode(SPECIAL_ROLE)}:{encode(SPECIAL_PASSWORD)}@/"
        f"{cluster_db.name}?host={cluster.sockets}&port={cluster.port}"
        "&options=-c%20TimeZone%3DAmerica%2FNew_York"
    )
    github.output_file.write_text("")
    env = github.with_inputs(**{"database-url": cluster_db.url(), "migrations-path": "migrations"})
    env["MYAPP_DATABASE_URL"] = socket_url
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert "a" in cluster_db.tables()


# --------------------------------------------------------------------------- docstrings


def test_multi_line_docstrings_are_shown_by_their_first_line(
    project: AlembicProject, github: GitHubRunner, run_cli: Callable[..., Run], database: Database
) -> None:
    message = textwrap.dedent(
        """\
        Add the users table
        Revision ID: 0001_users
        Revises:
        Create Date: 2024-01-01 00:00:00"""
    )
    project.add(
        "0001_users", "op.create_table('users', sa.Column('id', sa.Integer))", message=message
    )
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(project.root)})
    run = run_cli("plan", env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert report(github)["migrate"]["pending"][0]["description"] == "Add the users table"
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert "Add the users table" in run.stdout
    assert "Revision ID" not in run.stdout and "Create Date" not in run.stdout
    assert report(github)["migrate"]["applied"][0]["description"] == "Add the users table"
    assert "Revision ID" not in github.summary()
