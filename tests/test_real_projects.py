"""Real-world Alembic projects: optuna's shipped migrations, env.py files that build their own
engine, import their application, run async, migrate the wrong database; poolers; requirements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
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
    write_alembic_project,
)

REPO = Path(__file__).resolve().parents[1]


def catalog(db: Database, exclude_schemas: tuple[str, ...] = ("db_deploy",)) -> dict[str, list]:
    """Tables, columns with types/defaults/nullability, constraints and indexes of a database."""
    skip = (
        "('pg_catalog', 'information_schema', " + ", ".join(f"'{s}'" for s in exclude_schemas) + ")"
    )
    return {
        "columns": [
            tuple(r)
            for r in db.rows(
                "SELECT table_schema, table_name, column_name, data_type, column_default, is_nullable "
                f"FROM information_schema.columns WHERE table_schema NOT IN {skip} ORDER BY 1, 2, 3"
            )
        ],
        "constraints": [
            tuple(r)
            for r in db.rows(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                f"WHERE connamespace::regnamespace::text NOT IN {skip} ORDER BY 1, 2"
            )
        ],
        "indexes": [
            tuple(r)
            for r in db.rows(
                f"SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname NOT IN {skip} "
                "ORDER BY 1, 2"
            )
        ],
    }


# --------------------------------------------------------------------------- optuna


def sqlite_files() -> set[str]:
    """Every alembic.db under /tmp and the home folder (folders vanishing meanwhile are fine)."""
    found = set()
    for top in ("/tmp", os.path.expanduser("~")):
        for folder, dirs, files in os.walk(top, onerror=lambda e: None):
            dirs[:] = [d for d in dirs if d not in {".venv", ".git", "node_modules", ".cache"}]
            if "alembic.db" in files:
                found.add(os.path.join(folder, "alembic.db"))
    return found


def optuna_rdb() -> Path:
    import optuna

    return Path(optuna.__file__).parent / "storages" / "_rdb"


@pytest.mark.parametrize("where", ["script-folder", "ini"])
def test_optuna_migrations_deploy_unchanged(
    where: str,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    pg_server: EmbeddedServer,
    admin_engine: sa.Engine,
) -> None:
    rdb = optuna_rdb()
    path = rdb / "alembic" if where == "script-folder" else rdb / "alembic.ini"
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(path)})
    before = sqlite_files()
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(rdb / "alembic"))
    heads = set(script.get_heads())
    assert database.version() == heads
    out = github.outputs()
    assert int(out["applied-count"]) == len(list(script.walk_revisions())) >= 10
    assert f"ini {rdb / 'alembic.ini'}" in run.stdout  # the project's own ini was loaded
    # No SQLite file: optuna's ini says sqlite:///alembic.db.
    for folder in (github.workspace, REPO, rdb, rdb / "alembic"):
        assert not (folder / "alembic.db").exists(), folder
    assert sqlite_files() == before

    github.output_file.write_text("")
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "noop"

    # optuna's own `alembic upgrade heads` (its ini and env.py, the URL set as a user would).
    own = create_database(pg_server, admin_engine)
    try:
        from alembic import command

        cfg = Config(str(rdb / "alembic.ini"))
        cfg.set_main_option("script_location", str(rdb / "alembic"))
        cfg.set_main_option(
            "sqlalchemy.url", own.url.replace("postgresql://", "postgresql+psycopg://")
        )
        command.upgrade(cfg, "heads")
        assert catalog(own) == catalog(database)
        assert own.version() == heads
    finally:
        drop_database(admin_engine, own)


# --------------------------------------------------------------------------- env.py variants

OWN_ENGINE_ENV = """
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
{imports}
target_metadata = {metadata}


def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section, {{}}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""


def own_engine_project(root: Path, imports: str = "", metadata: str = "None") -> AlembicProject:
    project = write_alembic_project(root)
    (root / "env.py").write_text(OWN_ENGINE_ENV.format(imports=imports, metadata=metadata))
    return project


def test_env_py_with_its_own_engine_gets_the_session_settings(
    tmp_path: Path,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    project = own_engine_project(github.workspace / "migrations")
    project.add(
        "0001_seen",
        """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
                   "current_setting('statement_timeout') AS statement_timeout, "
                   "current_setting('application_name') AS app, pg_backend_pid() AS pid")
    """,
    )
    project.add("0002_more", "op.create_table('more', sa.Column('id', sa.Integer))")
    env = github.with_inputs(
        **{
            "database-url": database.url,
            "migrations-path": "migrations",
            "lock-timeout": "4s",
            "statement-timeout": "90s",
        }
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    lock_timeout, statement_timeout, app, _ = database.rows("SELECT * FROM seen")[0]
    # lock_timeout: the lock ladder's first rung (under lock-timeout, its cap), via PGOPTIONS.
    assert (lock_timeout, statement_timeout, app) == ("100ms", "90s", "db-deploy")
    out = github.outputs()
    assert [a["revision"] for a in json.loads(out["applied"])] == ["0001_seen", "0002_more"]
    assert database.version() == {"0002_more"}
    # The per-revision report and the history are the same whichever connection migrated.
    kinds = [
        r[0]
        for r in database.rows(
            "SELECT revision FROM db_deploy.db_deploy_history WHERE kind = 'upgrade' ORDER BY id"
        )
    ]
    assert kinds == ["0001_seen", "0002_more"]


FROM_DATABASE_URL = (
    "import os, sqlalchemy\n    engine = sqlalchemy.create_engine("
    "os.environ['DATABASE_URL'].replace('postgresql://', 'postgresql+psycopg://'),"
    " poolclass=pool.NullPool)"
)


@pytest.mark.parametrize("source", ["sqlalchemy.url", "DATABASE_URL"])
def test_env_py_with_its_own_engine_keeps_the_url_options(
    source: str, database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    """libpq ignores PGOPTIONS when the URL has `options`: env.py's own engine, built from
    sqlalchemy.url or from DATABASE_URL, gets the URL's options and our timeouts after them."""
    project = own_engine_project(github.workspace / "migrations")
    if source == "DATABASE_URL":
        env_py = project.root / "env.py"
        text = env_py.read_text()
        start = text.index("engine = engine_from_config(")
        end = text.index("poolclass=pool.NullPool)", start) + len("poolclass=pool.NullPool)")
        env_py.write_text(text[:start] + FROM_DATABASE_URL + text[end:])
    project.add(
        "0001_seen",
        """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
                   "current_setting('work_mem') AS work_mem")
    """,
    )
    env = github.with_inputs(
        **{
            "database-url": database.url + "&options=-c%20work_mem%3D12345kB",
            "migrations-path": "migrations",
            "lock-timeout": "4s",
        }
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert tuple(database.rows("SELECT * FROM seen")[0]) == ("100ms", "12345kB")


def test_env_py_importing_the_application_from_the_workspace(
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    app = github.workspace / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(
        textwrap.dedent("""
        import sqlalchemy as sa
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class Base(DeclarativeBase):
            pass

        class Widget(Base):
            __tablename__ = "widgets"
            id: Mapped[int] = mapped_column(primary_key=True)
    """)
    )
    project = own_engine_project(
        github.workspace / "db" / "migrations", "import myapp.models", "myapp.models.Base.metadata"
    )
    project.add(
        "0001_widgets", "op.create_table('widgets', sa.Column('id', sa.Integer, primary_key=True))"
    )
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "db/migrations"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert "widgets" in database.tables()


ASYNC_ENV = """
import asyncio
from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = async_engine_from_config(config.get_section(config.config_ini_section, {}),
                                      prefix="sqlalchemy.", poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(run_async_migrations())
"""


def test_async_env_py(
    database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(ASYNC_ENV)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    env = github.with_inputs(
        **{"database-url": database.url, "migrations-path": "migrations", "url-driver": "asyncpg"}
    )
    # url-driver reaches sqlalchemy.url: asyncpg is not installed, so env.py cannot start.
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2, run.output
    assert "env.py failed before migrating" in run.stdout and "asyncpg" in run.stdout
    assert database.tables() == set()
    # psycopg 3 serves async engines too (SQLAlchemy picks its async variant).
    for driver in ("psycopg_async", "psycopg"):
        env["INPUT_URL-DRIVER"] = driver
        run = run_cli(env=env, cwd=github.workspace)
        assert run.returncode == 0, run.output
        assert database.version() == {"0001_a"}


def test_env_py_that_migrates_another_database_fails(
    pg_server: EmbeddedServer,
    admin_engine: sa.Engine,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    other = create_database(pg_server, admin_engine)
    try:
        project = write_alembic_project(github.workspace / "migrations")
        (project.root / "env.py").write_text(
            OWN_ENGINE_ENV.format(imports="", metadata="None").replace(
                "engine = engine_from_config(config.get_section(config.config_ini_section, {}),\n"
                '                                prefix="sqlalchemy.", poolclass=pool.NullPool)',
                "from sqlalchemy import create_engine\n"
                '    engine = create_engine(os.environ["OTHER_DATABASE"], poolclass=pool.NullPool)',
            )
        )
        project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
        env = github.with_inputs(**{"database-url": database.url, "migrations-path": "migrations"})
        env["OTHER_DATABASE"] = other.url.replace("postgresql://", "postgresql+psycopg://")
        run = run_cli(env=env, cwd=github.workspace)
        assert run.returncode == 1, run.output
        assert "env.py connects to another database" in github.outputs()["error"]
        assert database.version() == set()
        assert other.version() == set()  # stopped before any revision ran there
    finally:
        drop_database(admin_engine, other)


# --------------------------------------------------------------------------- finding the project


def test_relative_script_location_and_inputs(
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    # An ini one level above the script folder, with a script_location relative to the ini.
    project = write_alembic_project(github.workspace / "db" / "alembic", ini=False)
    (github.workspace / "db" / "alembic.ini").write_text(
        "[alembic]\nscript_location = alembic\nsqlalchemy.url = sqlite:///alembic.db\n"
    )
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    # The folder holding the ini: script_location resolves relative to the ini's folder.
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "db"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    assert "script folder db/alembic " in run.stdout  # shown relative to the workspace
    assert not (github.workspace / "alembic.db").exists()
    # The inputs for layouts that need them.
    for inputs in ({"alembic-ini": "db/alembic.ini"}, {"script-location": "db/alembic"}):
        github.output_file.write_text("")
        env = github.with_inputs(**{"database-url": database.url, **inputs})
        run = run_cli(env=env, cwd=github.workspace)
        assert run.returncode == 0, run.output
        assert github.outputs()["current-revision"] == "0001_a"
    env = github.with_inputs(**{"database-url": database.url, "alembic-ini": "nope.ini"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2 and "alembic-ini 'nope.ini' does not exist" in run.stdout


# --------------------------------------------------------------------------- poolers


def test_pooled_url_without_direct_url_warns(
    project: AlembicProject, database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    pooled = database.url + "&pgbouncer=true&connection_limit=1"
    env = github.with_inputs(**{"database-url": pooled, "migrations-path": str(project.root)})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert "looks like a connection pooler (pgbouncer=true)" in github.summary()
    env["INPUT_DIRECT-DATABASE-URL"] = database.url
    github.summary_file.write_text("")
    assert run_cli(env=env, cwd=github.workspace).returncode == 0
    assert "connection pooler" not in github.summary()


def test_direct_url_is_used_for_migrations_and_database_url_for_smoke(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    project.add(
        "0001_a",
        "op.execute(\"CREATE TABLE who AS SELECT current_setting('application_name') AS app\")",
    )
    database.execute("CREATE ROLE app_reader LOGIN")
    try:
        env = github.with_inputs(
            **{
                "database-url": database.url.replace("postgres@", "app_reader@"),
                "direct-database-url": database.url,
                "migrations-path": str(project.root),
            }
        )
        run = run_cli(env=env, cwd=github.workspace)
        # The application's role cannot read the new table: the smoke step, on database-url, says so.
        assert run.returncode == 1, run.output
        out = github.outputs()
        assert out["failed-step"] == "smoke", out
        assert "public.who is not readable" in out["error"]
        assert database.version() == {"0001_a"}  # migrated through the direct URL
        report = json.loads((github.workspace / "db-deploy-report.json").read_text())
        assert report["preflight"]["user"] == "app_reader"
    finally:
        database.execute("DROP OWNED BY app_reader")
        database.execute("DROP ROLE app_reader")


# --------------------------------------------------------------------------- requirements


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only what the image holds: the locked runtime
    dependencies and the package."""
    venv = tmp_path_factory.mktemp("image-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "--require-hashes", "-r", str(REPO / "requirements.lock")], check=True)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True)
    return venv


@pytest.mark.slow
def test_requirements_install_makes_the_application_importable(
    image_venv: Path,
    database: Database,
    github: GitHubRunner,
    tmp_path: Path,
) -> None:
    # The application, as a wheel with a hash-pinned requirements file.
    src = tmp_path / "shopapp-src"
    (src / "shopapp").mkdir(parents=True)
    (src / "shopapp" / "__init__.py").write_text("TABLE = 'orders'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "shopapp"\nversion = "1.0"\n'
    )
    wheels = github.workspace / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
    )
    [wheel] = wheels.glob("*.whl")
    import hashlib

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (github.workspace / "requirements.txt").write_text(
        f"shopapp @ file://{wheel} --hash=sha256:{digest}\n"
    )
    project = own_engine_project(github.workspace / "migrations", "import shopapp", "None")
    project.add(
        "0001_orders", "import shopapp\nop.create_table(shopapp.TABLE, sa.Column('id', sa.Integer))"
    )
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "migrations"})
    entry = [str(image_venv / "bin" / "python"), str(REPO / "entrypoint.py")]

    without = subprocess.run(entry, env=env, cwd=github.workspace, capture_output=True, text=True)
    assert without.returncode == 2, without.stdout
    assert "No module named 'shopapp'" in without.stdout

    env["INPUT_REQUIREMENTS"] = "requirements.txt"
    github.summary_file.write_text("")
    ok = subprocess.run(entry, env=env, cwd=github.workspace, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "orders" in database.tables()
    assert "hash-checked" in github.summary() and "shopapp" in github.summary()

    # A wrong hash: pip refuses, exit 2 with pip's own error line.
    subprocess.run(
        [str(image_venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "shopapp"],
        check=True,
    )
    (github.workspace / "requirements.txt").write_text(
        f"shopapp @ file://{wheel} --hash=sha256:{'0' * 64}\n"
    )
    bad = subprocess.run(entry, env=env, cwd=github.workspace, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "installing 'requirements.txt' failed" in bad.stdout and "hash" in bad.stdout.lower()
    assert "Traceback" not in bad.stdout + bad.stderr
    assert os.environ.get("VIRTUAL_ENV") != str(image_venv)


def test_rollback_with_an_own_engine_env_py_is_recorded(
    database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    project = own_engine_project(github.workspace / "migrations")
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))", "op.drop_table('a')")
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))", "op.drop_table('b')")
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": "migrations"})
    assert run_cli(env=env, cwd=github.workspace).returncode == 0
    env = github.with_inputs(
        **{
            "database-url": database.url,
            "migrations-path": "migrations",
            "command": "rollback",
            "target": "0001_a",
        }
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    rows = [
        tuple(r)
        for r in database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history ORDER BY id")
    ]
    assert rows == [("0001_a", "upgrade"), ("0002_b", "upgrade"), ("0002_b", "downgrade")]
