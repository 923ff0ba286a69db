"""Crashes, lost connections and lock waits, for real (issue 15, points 2, 3 and 6): a deploy
killed with SIGKILL at any moment keeps one history row per committed revision, whatever
connection env.py migrates on; a server stopped under a deploy (`pg_ctl stop -m fast` /
`-m immediate`) never makes the report name a revision the database is not at; a plain
`alembic upgrade` running at the same time is a lock wait (blocker named, lock-retries, exit 1),
not bad configuration; and a run refused with exit 2 creates no history."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
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
from tests.helpers.pgcluster import PgCluster, start_cluster
from tests.helpers.projects import alembic_upgrade, write_alembic_project
from tests.helpers.scenarios import start

# env.py as many projects write it: its own engine from sqlalchemy.url, never the deployer's
# connection (config.attributes["connection"]).
OWN_ENGINE_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                            prefix="sqlalchemy.", poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISIONS = 30


def own_engine_project(root: Path, sleep: float) -> AlembicProject:
    project = write_alembic_project(root)
    (root / "env.py").write_text(OWN_ENGINE_ENV)
    for i in range(1, REVISIONS + 1):
        project.add(
            f"r{i:03d}",
            f"op.create_table('t{i:03d}', sa.Column('id', sa.Integer))\n"
            f"op.execute('SELECT pg_sleep({sleep})')",
        )
    return project


# --------------------------------------------------------------------------- point 2


@pytest.mark.parametrize("after", [3, 11])
def test_sigkill_keeps_a_history_row_for_every_committed_revision(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy, after: int
) -> None:
    """SIGKILL mid-deploy of 30 one-transaction revisions, env.py with an engine of its own: every
    revision that committed has its own row (the run's actor, commit, checksums and duration,
    written inside the revision's own transaction); the re-run writes no `baseline` row."""
    project = own_engine_project(tmp_path / "migrations", sleep=0.15)
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(project.root)})
    proc = start_deploy(env, github.workspace)
    try:
        wait_for(lambda: version_number(database) >= after, what=f"revision {after}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The server notices the dead client and rolls the open revision back.
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
    assert after <= at < REVISIONS
    rows = database.rows(
        "SELECT revision, kind, actor, sha, checksum, code_checksum, seconds "
        "FROM db_deploy.db_deploy_history ORDER BY id"
    )
    assert [r[0] for r in rows] == [f"r{i:03d}" for i in range(1, at + 1)]
    for revision, kind, actor, sha, checksum, code, seconds in rows:
        assert kind == "upgrade", revision
        assert actor == "octocat" and sha == env["GITHUB_SHA"], revision
        assert len(checksum) == 64 and code, revision
        assert seconds is not None and seconds > 0, revision

    github.env["GITHUB_ACTOR"] = "someone-else"
    run = deploy(project)
    assert run.returncode == 0, run.output
    kinds = database.rows("SELECT revision, kind, actor FROM db_deploy.db_deploy_history")
    assert not [k for k in kinds if k[1] == "baseline"]
    assert sorted(r[0] for r in kinds) == [f"r{i:03d}" for i in range(1, REVISIONS + 1)]
    assert {r[2] for r in kinds if int(r[0][1:]) <= at} == {"octocat"}
    assert {r[2] for r in kinds if int(r[0][1:]) > at} == {"someone-else"}


def test_a_role_that_cannot_write_the_history_from_env_py_still_gets_its_rows(
    tmp_path: Path, database: Database, github: GitHubRunner, deploy
) -> None:
    """env.py's own connection is another role, without the right to write the history: the
    revisions still apply (the row's insert is in a savepoint) and their rows are written
    after the migrate step on the deployer's connection."""
    project = write_alembic_project(tmp_path / "migrations")
    role = f"envpy_{database.name}"[:60]
    database.execute(f'CREATE ROLE "{role}" LOGIN')
    database.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    database.execute(f'GRANT CREATE ON DATABASE "{database.name}" TO "{role}"')
    (project.root / "env.py").write_text(
        OWN_ENGINE_ENV.replace(
            'prefix="sqlalchemy.", poolclass=pool.NullPool)',
            f'prefix="sqlalchemy.", poolclass=pool.NullPool, connect_args={{"user": "{role}"}})',
        )
    )
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    try:
        run = deploy(project)
        assert run.returncode == 0, run.output
        rows = database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history ORDER BY id")
        assert rows == [("0001_a", "upgrade"), ("0002_b", "upgrade")]
    finally:
        database.execute("DROP SCHEMA IF EXISTS db_deploy CASCADE")
        database.execute("DROP TABLE IF EXISTS a, b, alembic_version")
        database.execute(f'REVOKE ALL ON SCHEMA public FROM "{role}"')
        database.execute(f'REVOKE ALL ON DATABASE "{database.name}" FROM "{role}"')
        database.execute(f'DROP ROLE "{role}"')


# --------------------------------------------------------------------------- point 3


@pytest.fixture(scope="module")
def stoppable() -> Iterator[PgCluster]:
    """A TCP cluster of this module's own: its tests stop it under a deploy."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def pg_ctl_stop(cluster: PgCluster, mode: str) -> None:
    cluster._run("pg_ctl", "-D", str(cluster.data), "-m", mode, "-w", "stop", timeout=30)


def cluster_version(cluster: PgCluster, name: str) -> int:
    v = cluster.version(name)
    return int(next(iter(v))[1:]) if v else 0


def history_rows(cluster: PgCluster, name: str) -> list[str]:
    rows = cluster.query("SELECT revision FROM db_deploy.db_deploy_history ORDER BY id", name)
    return [r[0] for r in rows]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_stopped_under_a_deploy_the_report_never_guesses(
    tmp_path: Path, stoppable: PgCluster, github: GitHubRunner, mode: str
) -> None:
    """The server stops 2 s into a 30-revision deploy and stays down: the deployer tries to
    reconnect (bounded), then says the revision is unknown, with the reason, in the error, the
    summary and the report; the `current-revision` output is empty. After the restart the
    database is where the history says."""
    name = stoppable.create_database()
    project = write_alembic_project(tmp_path / "migrations")
    for i in range(1, REVISIONS + 1):
        project.add(f"r{i:03d}", f"op.create_table('t{i:03d}', sa.Column('id', sa.Integer))\n"
                    "op.execute('SELECT pg_sleep(0.2)')")  # fmt: skip
    env = github.with_inputs(
        **{
            "database-url": stoppable.url(name),
            "migrations-path": str(project.root),
            "connect-retries": "2",
            "connect-timeout": "1s",
        }
    )
    proc = start(github, env)
    try:
        wait_for(lambda: cluster_version(stoppable, name) >= 3, what="revision 3")
        pg_ctl_stop(stoppable, mode)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not (stoppable.data / "postmaster.pid").exists():
            stoppable.start()
    assert proc.returncode == 1, out
    outputs = github.outputs()
    assert outputs["current-revision"] == ""
    assert outputs["status"] == "failed"
    assert "unknown (connection lost" in outputs["error"]
    assert "database left at base" not in out and "→ `base`" not in github.summary()
    assert "unknown (connection lost)" in github.summary()
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["revisions"]["current"] == "unknown (connection lost)"
    assert report["revisions"]["current_unknown"]
    # After the restart: the history has a row for each revision the database has.
    at = cluster_version(stoppable, name)
    assert at >= 3
    assert history_rows(stoppable, name) == [f"r{i:03d}" for i in range(1, at + 1)]
    # Everything the report calls applied did commit.
    applied = [a["revision"] for a in json.loads(outputs["applied"])]
    assert applied == [f"r{i:03d}" for i in range(1, len(applied) + 1)]
    assert len(applied) <= at
    stoppable.drop_database(name)


def test_server_back_while_reconnecting_the_report_reads_the_real_revision(
    tmp_path: Path, stoppable: PgCluster, github: GitHubRunner
) -> None:
    """`pg_ctl stop -m immediate` under a deploy and the server back a few seconds later, while
    the deployer reconnects: the report names the revision the database is really at."""
    name = stoppable.create_database()
    project = write_alembic_project(tmp_path / "migrations")
    for i in range(1, REVISIONS + 1):
        project.add(f"r{i:03d}", f"op.create_table('t{i:03d}', sa.Column('id', sa.Integer))\n"
                    "op.execute('SELECT pg_sleep(0.2)')")  # fmt: skip
    env = github.with_inputs(
        **{
            "database-url": stoppable.url(name),
            "migrations-path": str(project.root),
            "connect-retries": "8",
            "connect-timeout": "2s",
        }
    )
    proc = start(github, env)
    try:
        wait_for(lambda: cluster_version(stoppable, name) >= 3, what="revision 3")
        pg_ctl_stop(stoppable, "immediate")
        time.sleep(1.0)
        stoppable.start()
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not (stoppable.data / "postmaster.pid").exists():
            stoppable.start()
    assert proc.returncode == 1, out
    at = cluster_version(stoppable, name)
    outputs = github.outputs()
    assert outputs["current-revision"] == f"r{at:03d}", out
    assert f"database left at r{at:03d}" in outputs["error"]
    assert history_rows(stoppable, name) == [f"r{i:03d}" for i in range(1, at + 1)]
    applied = [a["revision"] for a in json.loads(outputs["applied"])]
    assert applied == [f"r{i:03d}" for i in range(1, at + 1)]
    stoppable.drop_database(name)


# --------------------------------------------------------------------------- point 6


def test_a_plain_alembic_upgrade_at_the_same_time_is_a_lock_wait(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """A plain `alembic upgrade` holds the version table's creation open: db-deploy waits on it
    inside env.py, names the blocker, retries (lock-retries) and exits 1 — not 2 "env.py failed
    before migrating" — and creates no history schema."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    other = write_alembic_project(project.root.parent / "other")
    other.add("0001_x", "op.execute('SELECT pg_sleep(20)')")

    def upgrade() -> None:
        try:
            alembic_upgrade(other.root, database)
        except Exception:  # noqa: BLE001 - terminated at the end of the test
            pass

    plain = threading.Thread(target=upgrade, daemon=True)
    plain.start()
    wait_for(
        lambda: database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE '%pg_sleep(20)%' AND state = 'active' AND pid <> pg_backend_pid()"
        ),
        what="the plain alembic upgrade",
    )
    run = deploy(
        project, **{"lock-timeout": "500ms", "lock-timeout-ladder": "500ms", "lock-retries": "1"}
    )
    assert run.returncode == 1, run.output
    outputs = github.outputs()
    assert outputs["error-class"] == "lock-timeout", outputs
    assert "blocked by pid" in outputs["error"], outputs["error"]
    assert "env.py failed before migrating" not in run.output
    assert "retry 1 of 1" in run.output
    assert "db_deploy" not in {r[0] for r in database.rows("SELECT nspname FROM pg_namespace")}
    database.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "datname = current_database() AND pid <> pg_backend_pid()"
    )
    plain.join(timeout=30)


def test_no_op_and_refused_deploys_create_no_history(
    project: AlembicProject, database: Database, deploy
) -> None:
    """A database deployed with plain Alembic and already at head: a no-op deploy creates no
    history schema; a refused one (exit 2) neither."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    alembic_upgrade(project.root, database)
    run = deploy(project)
    assert run.returncode == 0, run.output
    run = deploy(project, target="0009_nope")
    assert run.returncode == 2, run.output
    assert "db_deploy" not in {r[0] for r in database.rows("SELECT nspname FROM pg_namespace")}
