"""The connection env.py is handed (issue 21, point 3): `env-connection` shared (the deployer's,
in a transaction), autocommit (as applications that migrate that way expect: concurrent indexes
without `autocommit_block()`) or none (env.py builds its own engine), and `url-driver` applied
to that connection too (a psycopg2-only data migration). In every mode the deploy history gets
its rows, the report tells what ran, and a crash loses nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    AlembicProject,
    Database,
    GitHubRunner,
    start_deploy,
    version_number,
    wait_for,
)
from tests.helpers.projects import write_alembic_project

# env.py as applications that migrate on an autocommit engine write it (dagster's shape): the
# connection it is handed, nothing else, and revisions that rely on it being autocommit.
HANDED_ONLY_ENV = """\
from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("no connection set in the alembic config")
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

# env.py that always builds its own engine from sqlalchemy.url and refuses a handed connection.
OWN_ENGINE_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
if config.attributes.get("connection") is not None:
    raise RuntimeError("this env.py builds its own engine: no connection expected")
engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                            prefix="sqlalchemy.", poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

# The data migration of issue 21: the id compared with a string (an untyped column), which
# psycopg2's client-side interpolation tolerates and psycopg 3's server-side binding refuses.
PSYCOPG2_ONLY = """\
t = sa.table('t', sa.column('id'), sa.column('n'))
op.execute(t.update().where(t.c.id == '1').values(n=5))
"""


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def history(database: Database) -> list[tuple[str, str]]:
    rows = database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history ORDER BY id")
    return [(r[0], r[1]) for r in rows]


def concurrent_project(root: Path, *, per_migration: bool = False) -> AlembicProject:
    """Three revisions, the second and third creating indexes CONCURRENTLY without
    `autocommit_block()` (upgrade and downgrade), as dagster's do."""
    project = write_alembic_project(root)
    env = HANDED_ONLY_ENV
    if per_migration:
        env = env.replace(
            "target_metadata=None", "target_metadata=None, transaction_per_migration=True"
        )
    (root / "env.py").write_text(env)
    project.add(
        "0001_t",
        "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('v', sa.Integer))\n"
        "op.execute('INSERT INTO t SELECT g, g FROM generate_series(1, 500) g')",
        "op.drop_table('t')",
    )
    project.add(
        "0002_idx",
        "op.create_index('t_v_idx', 't', ['v'], postgresql_concurrently=True)",
        "op.drop_index('t_v_idx', table_name='t', postgresql_concurrently=True)",
    )
    project.add(
        "0003_idx2",
        "op.create_index('t_v2_idx', 't', ['id', 'v'], postgresql_concurrently=True)",
        "op.drop_index('t_v2_idx', table_name='t', postgresql_concurrently=True)",
    )
    return project


def valid_indexes(database: Database) -> set[str]:
    rows = database.rows(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass('public.t') AND i.indisvalid AND NOT i.indisprimary"
    )
    return {r[0] for r in rows}


# --------------------------------------------------------------------------- autocommit


def test_concurrent_indexes_fail_on_the_shared_connection(
    tmp_path: Path, database: Database, deploy
) -> None:
    """The premise: handed a connection in a transaction (the default), such revisions fail."""
    project = concurrent_project(tmp_path / "migrations")
    run = deploy(project)
    assert run.returncode == 1, run.output
    assert "CREATE INDEX CONCURRENTLY cannot run inside a transaction block" in run.output
    assert database.version() == set()  # one transaction for the whole upgrade: rolled back


@pytest.mark.parametrize("per_migration", [False, True], ids=["one-block", "per-migration"])
def test_autocommit_upgrade_and_rollback_with_concurrent_indexes(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy, per_migration: bool
) -> None:
    """env-connection autocommit: the revisions apply as the application's own tool applies
    them; each has its history row; the report says each committed; rollback reverts them
    (DROP INDEX CONCURRENTLY) with its downgrade rows. Whether env.py asks for a transaction
    per migration or one for all makes no difference on an autocommit connection."""
    project = concurrent_project(tmp_path / "migrations", per_migration=per_migration)
    run = deploy(project, **{"env-connection": "autocommit"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_idx2"}
    assert valid_indexes(database) == {"t_v_idx", "t_v2_idx"}
    assert history(database) == [
        ("0001_t", "upgrade"),
        ("0002_idx", "upgrade"),
        ("0003_idx2", "upgrade"),
    ]
    rep = report(github)
    applied = rep["migrate"]["applied"]
    assert [a["revision"] for a in applied] == ["0001_t", "0002_idx", "0003_idx2"]
    assert all(a["committed"] for a in applied)
    assert "applied 0002_idx" in run.stdout
    assert github.outputs()["current-revision"] == "0003_idx2"

    run = deploy(project, command="rollback", target="0001_t", **{"env-connection": "autocommit"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_t"}
    assert valid_indexes(database) == set()
    assert history(database)[3:] == [("0003_idx2", "downgrade"), ("0002_idx", "downgrade")]
    assert "reverted 0003_idx2" in run.stdout


def test_autocommit_failure_says_what_stays(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy
) -> None:
    """A revision failing on an autocommit connection: what it ran before the error stays
    (nothing to roll back), the error says so; the revisions before it keep their rows; the
    database is at the last revision that completed."""
    project = concurrent_project(tmp_path / "migrations")
    project.add(
        "0004_bad",
        "op.create_table('kept', sa.Column('id', sa.Integer))\n"
        "op.execute('SELECT no_such_function()')",
    )
    run = deploy(project, **{"env-connection": "autocommit"})
    assert run.returncode == 1, run.output
    assert database.version() == {"0003_idx2"}
    assert "kept" in database.tables()
    assert "committed as they ran and are not rolled back" in run.output
    assert [r for r, _ in history(database)] == ["0001_t", "0002_idx", "0003_idx2"]
    assert report(github)["migrate"]["failed_revision"] == "0004_bad"
    assert unfinished_rows(database) == ["0004_bad"]

    # The next run says it did not complete before, and fails the same way, saying so too.
    run = deploy(project, **{"env-connection": "autocommit"})
    assert run.returncode == 1, run.output
    assert "revision 0004_bad (upgrade started" in run.output
    assert "it did not complete in an earlier run either" in run.output
    assert "already exists" in run.output  # its first statement had committed

    # Written to cope with what stayed, it completes; the mark goes with its history row.
    path = project.versions / "0004_bad.py"
    path.write_text(
        path.read_text()
        .replace(
            "op.create_table('kept', sa.Column('id', sa.Integer))",
            "op.execute('CREATE TABLE IF NOT EXISTS kept (id int)')",
        )
        .replace("op.execute('SELECT no_such_function()')", "pass")
    )
    run = deploy(project, **{"env-connection": "autocommit"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0004_bad"}
    assert history(database)[-1] == ("0004_bad", "upgrade")
    assert unfinished_rows(database) == []


def test_autocommit_status_and_drift_replay(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy, pg_server
) -> None:
    """status reads the revision through an env.py handed an autocommit connection; drift
    replays the concurrent indexes on its scratch database the same way (no drift)."""
    project = concurrent_project(tmp_path / "migrations")
    inputs = {"env-connection": "autocommit"}
    assert deploy(project, **inputs).returncode == 0
    run = deploy(project, command="status", **inputs)
    assert run.returncode == 0, run.output
    assert github.outputs()["current-revision"] == "0003_idx2"
    run = deploy(
        project,
        command="drift",
        **inputs,
        **{"scratch-database-url": pg_server.url("postgres")},
    )
    assert run.returncode == 0, run.output
    assert github.outputs()["drift-count"] == "0"


# --------------------------------------------------------------------------- none


def test_none_hands_no_connection_and_env_py_builds_its_own_engine(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy
) -> None:
    """env-connection none: env.py (refusing a handed connection) migrates on its own engine;
    the history rows are written inside its revisions' transactions; the report and a second,
    no-op run are as usual."""
    project = write_alembic_project(tmp_path / "migrations")
    (project.root / "env.py").write_text(OWN_ENGINE_ENV)
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))", "op.drop_table('b')")
    run = deploy(project)
    assert run.returncode == 2, run.output  # the default hands one over: this env.py refuses
    assert "no connection expected" in run.output

    run = deploy(project, **{"env-connection": "none"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}
    assert history(database) == [("0001_a", "upgrade"), ("0002_b", "upgrade")]
    rep = report(github)
    assert [a["revision"] for a in rep["migrate"]["applied"]] == ["0001_a", "0002_b"]
    assert rep["migrate"]["history_inline"] is True

    run = deploy(project, **{"env-connection": "none"})
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "noop"

    # Every command that runs env.py hands it nothing.
    for command in ("status", "plan"):
        run = deploy(project, command=command, **{"env-connection": "none"})
        assert run.returncode == 0, (command, run.output)
    run = deploy(project, command="rollback", target="0001_a", **{"env-connection": "none"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    assert history(database)[-1] == ("0002_b", "downgrade")


# --------------------------------------------------------------------------- url-driver


def psycopg2_project(root: Path, env: str | None = None) -> AlembicProject:
    project = write_alembic_project(root)
    if env is not None:
        (root / "env.py").write_text(env)
    project.add(
        "0001_t",
        "op.create_table('t', sa.Column('id', sa.Integer), sa.Column('n', sa.Integer))\n"
        "op.execute('INSERT INTO t VALUES (1, 0), (2, 0)')",
    )
    project.add("0002_data", PSYCOPG2_ONLY)
    return project


def test_psycopg2_only_data_migration_fails_clearly_with_psycopg(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy
) -> None:
    project = psycopg2_project(tmp_path / "migrations")
    run = deploy(project)
    assert run.returncode == 1, run.output
    assert "revision 0002_data failed" in run.output
    assert "operator does not exist: integer = character varying" in run.output
    assert database.version() == {"0001_t"}
    assert report(github)["migrate"]["failed_revision"] == "0002_data"


@pytest.mark.parametrize("mode", ["shared", "autocommit", "none"])
def test_psycopg2_only_data_migration_with_url_driver_psycopg2(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy, mode: str
) -> None:
    """url-driver psycopg2: the connection env.py is handed (shared, autocommit) or builds
    (none) is a psycopg2 one; the data migration applies, with its history rows."""
    project = psycopg2_project(tmp_path / "migrations")
    run = deploy(project, **{"url-driver": "psycopg2", "env-connection": mode})
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_data"}
    assert database.rows("SELECT id, n FROM t ORDER BY id") == [(1, 5), (2, 0)]
    assert history(database) == [("0001_t", "upgrade"), ("0002_data", "upgrade")]
    assert [a["revision"] for a in report(github)["migrate"]["applied"]] == [
        "0001_t",
        "0002_data",
    ]


# --------------------------------------------------------------------------- crash


REVISIONS = 30


def sleeping(database: Database) -> bool:
    return bool(
        database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'db-deploy' AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%'"
        )
    )


def unfinished_rows(database: Database) -> list[str]:
    if not database.scalar("SELECT to_regclass('db_deploy.db_deploy_unfinished') IS NOT NULL"):
        return []
    return [r[0] for r in database.rows("SELECT revision FROM db_deploy.db_deploy_unfinished")]


def test_sigkill_in_autocommit_mode_loses_nothing_and_the_next_run_says_what_stayed(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy
) -> None:
    """SIGKILL in the middle of a revision on an autocommit connection: its first statement
    is committed (its table exists) while the version table shows the revision before, and
    every revision the version table shows has its history row, none more (the version row
    and the history row commit together). The next run warns that the revision did not
    complete and what that means, runs it again (it is re-runnable) and forgets the mark; no
    row is a `baseline`."""
    project = write_alembic_project(tmp_path / "migrations")
    (project.root / "env.py").write_text(HANDED_ONLY_ENV)
    for i in range(1, REVISIONS + 1):
        project.add(
            f"r{i:03d}",
            f"op.execute('CREATE TABLE IF NOT EXISTS t{i:03d} (id int)')\n"
            "op.execute('SELECT pg_sleep(0.3)')",
        )
    env = github.with_inputs(
        **{
            "database-url": database.url,
            "migrations-path": str(project.root),
            "env-connection": "autocommit",
        }
    )
    proc = start_deploy(env, github.workspace)
    try:
        wait_for(lambda: version_number(database) >= 4 and sleeping(database), what="r005+")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(
        lambda: (
            not database.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'db-deploy'"
            )
        ),
        timeout=30,
        what="the killed deploy's sessions to end",
    )
    at = version_number(database)
    assert 4 <= at < REVISIONS
    cut = f"r{at + 1:03d}"
    assert history(database) == [(f"r{i:03d}", "upgrade") for i in range(1, at + 1)]
    assert f"t{at + 1:03d}" in database.tables()  # committed, the version table says otherwise
    assert unfinished_rows(database) == [cut]

    run = deploy(project, **{"env-connection": "autocommit"})
    assert run.returncode == 0, run.output
    assert f"revision {cut} (upgrade started" in run.output
    assert "octocat" in run.output and "did not complete" in run.output
    assert database.version() == {f"r{REVISIONS:03d}"}
    rows = history(database)
    assert [r for r, _ in rows] == [f"r{i:03d}" for i in range(1, REVISIONS + 1)]
    assert {k for _, k in rows} == {"upgrade"}
    assert unfinished_rows(database) == []


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sigterm_in_autocommit_mode(
    project: AlembicProject, database: Database, github: GitHubRunner, driver: str
) -> None:
    """A cancel in the middle of a revision on an autocommit connection: the running
    statement is cancelled on the server in time (psycopg2 too, blocked in C), the run ends
    `cancelled` with its report; what the revision ran before is committed and marked, the
    version table and the history show the revision before; nothing of ours stays on the
    server."""
    from tests.test_cancel import DEADLINE, cancel_mid_revision, sessions

    (project.root / "env.py").write_text(HANDED_ONLY_ENV)
    proc, out, took = cancel_mid_revision(
        project,
        database,
        github,
        signal.SIGTERM,
        busy="op.execute('SELECT pg_sleep(60)')",
        running=lambda: sessions(database, "%pg_sleep(60)%") > 0,
        **{"env-connection": "autocommit", "url-driver": driver},
    )
    assert proc.returncode == 143, out
    assert took < DEADLINE, f"{took:.1f}s"
    assert "Traceback" not in out, out
    assert github.outputs()["status"] == "cancelled"
    assert github.outputs()["current-revision"] == "0001_a"
    rep = report(github)
    assert [a["revision"] for a in rep["migrate"]["applied"]] == ["0001_a"]
    assert database.version() == {"0001_a"}
    cols = database.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
    )
    assert sorted(c[0] for c in cols) == ["id", "x"]  # committed as it ran
    assert history(database) == [("0001_a", "upgrade")]
    assert unfinished_rows(database) == ["0002_slow"]
    assert sessions(database) == 0
    assert database.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
