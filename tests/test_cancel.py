"""Cancelled runs end cleanly and in time, and no run is green without its report (issue 15,
points 7 and 8), with real signals on real processes and a real PostgreSQL: the runner
cancels a step with SIGINT (then SIGTERM 7.5 s later, then SIGKILL); the running statement is
cancelled on the server at once, the open revision rolls back, the deploy lock is released,
outputs, summary and report (status `cancelled`) are written within 5 s, one line is printed,
exit 130/143. A revision that ends the process (`os._exit(0)`) gives exit 1 with a report."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import AlembicProject, Database, GitHubRunner, wait_for
from tests.helpers.scenarios import (
    DEADLINE,
    SLEEP,
    assert_cancelled,
    cancel_during_python,
    cancel_during_sleep,
    cancel_mid_revision,
    report,
    sessions,
    start,
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_cancels_the_running_statement_on_the_server(
    project: AlembicProject, database: Database, github: GitHubRunner, sig: signal.Signals
) -> None:
    cancel_during_sleep(project, database, github, sig)


@pytest.mark.parametrize("connection", ["shared", "none"])
def test_sigterm_cancels_a_driver_blocked_in_c(
    project: AlembicProject, database: Database, github: GitHubRunner, connection: str
) -> None:
    """psycopg2 waits for the server in C and does not let the main thread take the signal:
    the cancel thread cancels the statement from a session of its own, in time; on the session
    the deployer hands env.py and on an engine env.py builds itself."""
    proc, out, took = cancel_mid_revision(
        project,
        database,
        github,
        signal.SIGTERM,
        busy=f"print('driver:', op.get_bind().dialect.driver)\n{SLEEP}",
        running=lambda: _sleeping(database),
        **{"url-driver": "psycopg2", "env-connection": connection},
    )
    assert "driver: psycopg2" in out, out
    assert_cancelled(proc, out, took, database, github, signal.SIGTERM)
    assert not _sleeping(database)  # env.py's own session (no application_name) too


def _sleeping(database: Database) -> bool:
    """The slow revision runs, on whatever session (env.py's own engine names no
    application_name)."""
    return bool(
        database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()"
        )
    )


def test_sigint_during_python_code_of_a_revision(
    project: AlembicProject, database: Database, github: GitHubRunner, tmp_path: Path
) -> None:
    """The revision is busy in Python (time.sleep), not on the server: cancelled all the same."""
    cancel_during_python(project, database, github, tmp_path / "sleeping")


def test_the_runners_sequence_sigint_then_sigterm(
    project: AlembicProject, database: Database, github: GitHubRunner
) -> None:
    """SIGINT, then SIGTERM while the clean-up runs: the clean-up is not interrupted, the run
    ends as cancelled by the first signal."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_slow", "op.execute('SELECT pg_sleep(60)')")
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(project.root)})
    proc = start(github, env)
    try:
        wait_for(lambda: sessions(database, "%pg_sleep(60)%") > 0, what="the slow revision")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert github.outputs()["status"] == "cancelled"
    assert database.version() == {"0001_a"}


def test_cancelled_while_waiting_for_the_deploy_lock(
    project: AlembicProject, database: Database, github: GitHubRunner
) -> None:
    """Cancelled before anything ran (waiting for another deploy's lock): exit 130, report
    written, nothing changed."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    # Another deploy of this database holds the lock (the same key the deployer computes).
    from deployer.db import lock_key

    keys = [lock_key(database.name, f"{schema}.alembic_version") for schema in ("", "public")]
    with database.engine.connect() as holder:
        for key in keys:
            holder.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
        env = github.with_inputs(
            **{
                "database-url": database.url,
                "migrations-path": str(project.root),
                "deploy-lock-wait": "60s",
            }
        )
        proc = start(github, env)
        try:
            wait_for(lambda: _waiting(database), what="the deploy to wait for the lock")
            time.sleep(0.3)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, out
    assert "another deploy holds the lock" in out
    assert took < DEADLINE
    assert "Traceback" not in out
    assert github.outputs()["status"] == "cancelled"
    assert database.version() == set()
    assert "db_deploy" not in {r[0] for r in database.rows("SELECT nspname FROM pg_namespace")}


def _waiting(database: Database) -> bool:
    """The deployer's lock session exists (it polls pg_try_advisory_lock)."""
    return bool(
        database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'db-deploy' AND query LIKE '%advisory%'"
        )
    )


# --------------------------------------------------------------------------- point 8


@pytest.mark.parametrize("code", [0, 3])
def test_a_revision_ending_the_process_is_never_green(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy, code: int
) -> None:
    """A revision calls os._exit(N): the deployer never wrote its report, so the run fails
    (exit 1) with outputs, summary and report saying so in one line."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_exit", f"import os\nos._exit({code})")
    run = deploy(project)
    assert run.returncode == 1, run.output
    message = f"the deployer ended without finishing (exit {code})"
    errors = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and message in errors[0], run.output
    assert "Traceback" not in run.output
    outputs = github.outputs()
    assert outputs["status"] == "failed" and outputs["error"] == message
    assert message in github.summary()
    assert report(github)["status"] == "failed"


def test_a_killed_deployer_is_reported_by_its_parent(
    project: AlembicProject, database: Database, github: GitHubRunner
) -> None:
    """The deployer process itself dies of SIGKILL (the OOM killer): the parent reports it."""
    project.add("0001_a", "op.execute('SELECT pg_sleep(60)')")
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(project.root)})
    proc = start(github, env)
    try:
        wait_for(lambda: sessions(database, "%pg_sleep(60)%") > 0, what="the slow revision")
        child = int(
            subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
        os.kill(child, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "the deployer ended without finishing (killed by SIGKILL)" in github.outputs()["error"]
    assert report(github)["status"] == "failed"
