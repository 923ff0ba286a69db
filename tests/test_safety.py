"""Safety: one deploy at a time, bounded lock waits, the deploy history, production guards and a
crash that loses nothing — each on a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from deployer import db
from tests.helpers import AlembicProject, Database, GitHubRunner, alembic_upgrade
from tests.helpers.scenarios import start

TABLE_A = "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))"


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


@pytest.fixture
def session(database: Database) -> Iterator[sa.Connection]:
    """Another session on the same database (another deploy, an application, a DBA)."""
    engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("SET application_name = 'other-session'"))
        yield conn


# --------------------------------------------------------------------------- one deploy at a time


def test_second_deploy_waits_then_exits_3_naming_the_holder(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    session: sa.Connection,
) -> None:
    project.add("0001_a", TABLE_A)
    key = db.lock_key(database.name, ".alembic_version")
    assert session.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    started = time.monotonic()
    run = deploy(project, **{"deploy-lock-wait": "1s"})
    assert run.returncode == 3, run.output
    assert time.monotonic() - started < 20
    [error] = [line for line in run.stdout.splitlines() if line.startswith("::error")]
    assert f"held by pid {pid} (other-session" in error
    assert "deploy-lock-wait" in error
    assert github.outputs()["failed-step"] == "lock"
    assert database.version() == set() and "a" not in database.tables()  # nothing changed


def test_two_deploys_started_together_both_succeed(
    project: AlembicProject, database: Database, github: GitHubRunner, tmp_path
) -> None:
    project.add("0001_a", TABLE_A)
    project.add("0002_slow", "op.execute('SELECT pg_sleep(1)')")
    project.add("0003_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    procs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        out.touch()
        env = github.with_inputs(
            **{"database-url": database.url, "migrations-path": str(project.root)}
        )
        env["GITHUB_OUTPUT"] = str(out)
        env["GITHUB_STEP_SUMMARY"] = str(tmp_path / f"summary{i}")
        env["INPUT_REPORT-FILE"] = str(tmp_path / f"report{i}.json")
        procs.append(
            (
                out,
                start(github, env),
            )
        )
    from tests.helpers import parse_env_file

    results = []
    for out, proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        results.append(parse_env_file(out.read_text()))
    assert sorted(r["status"] for r in results) == ["noop", "success"]
    assert sorted(r["applied-count"] for r in results) == ["0", "3"]
    assert database.version() == {"0003_b"}
    assert (
        database.scalar("SELECT count(*) FROM db_deploy.db_deploy_history WHERE kind = 'upgrade'")
        == 3
    )


# --------------------------------------------------------------------------- bounded waits


def hold_lock_on_a(session: sa.Connection) -> int:
    """An open transaction holding a lock on table `a` (the DDL of a migration must wait for
    it); returns the session's pid. The caller rolls back to release it."""
    session.execute(sa.text("BEGIN"))
    session.execute(sa.text("LOCK TABLE a IN ACCESS SHARE MODE"))
    return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_blocked_migration_fails_after_lock_timeout_naming_the_blocker(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    session: sa.Connection,
) -> None:
    project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    project.add("0002_alter", "op.add_column('a', sa.Column('x', sa.Integer))")
    pid = hold_lock_on_a(session)
    try:
        started = time.monotonic()
        run = deploy(project, **{"lock-timeout": "1s", "lock-wait-budget": "1s"})
        elapsed = time.monotonic() - started
    finally:
        session.execute(sa.text("ROLLBACK"))
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "migrate"
    assert "lock timeout" in out["error"]
    assert f"blocked by pid {pid} (other-session" in out["error"]
    assert "idle in transaction" in out["error"]
    assert elapsed < 30
    assert database.version() == {"0001_a"}
    assert report(github)["migrate"]["blocked_by"].startswith(f"pid {pid}")


def test_lock_retries_wait_for_the_blocker_to_go(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    session: sa.Connection,
) -> None:
    project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    project.add("0002_alter", "op.add_column('a', sa.Column('x', sa.Integer))")
    hold_lock_on_a(session)
    watcher = database.engine.execution_options(isolation_level="AUTOCOMMIT")

    def release_once_blocked() -> None:
        # Release only after the deploy has waited on our lock (and so hit lock_timeout once).
        with watcher.connect() as conn:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'db-deploy' "
                        "AND wait_event_type = 'Lock'"
                    )
                ).scalar()
                if waiting:
                    break
                time.sleep(0.05)
        time.sleep(1.0)
        session.execute(sa.text("ROLLBACK"))

    release = threading.Thread(target=release_once_blocked)
    release.start()
    try:
        run = deploy(project, **{"lock-timeout": "500ms", "lock-retries": "3"})
    finally:
        release.join()
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_alter"}
    assert "hit lock_timeout" in github.summary()
    assert [a["revision"] for a in json.loads(github.outputs()["applied"])] == ["0002_alter"]


# --------------------------------------------------------------------------- deploy history


def test_history_records_every_applied_revision(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add("0001_a", TABLE_A)
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    assert deploy(project).returncode == 0
    rows = database.rows(
        "SELECT revision, kind, checksum, seconds, actor, sha, run_url, "
        "tool_version FROM db_deploy.db_deploy_history ORDER BY id"
    )
    assert [(r[0], r[1]) for r in rows] == [("0001_a", "upgrade"), ("0002_b", "upgrade")]
    import hashlib

    from deployer.checksums import code_checksum

    assert rows[0][2] == hashlib.sha256((project.versions / "0001_a.py").read_bytes()).hexdigest()
    code = database.scalar("SELECT code_checksum FROM db_deploy.db_deploy_history ORDER BY id")
    assert code == code_checksum(project.versions / "0001_a.py")
    assert rows[0][3] >= 0 and rows[0][4] == "octocat" and rows[0][5].startswith("0123456789")
    assert rows[0][6].endswith("/actions/runs/4242") and rows[0][7]
    # Not beside the version table: autogenerate would propose dropping it.
    assert "db_deploy_history" not in database.tables("public")
    assert "Deploy history" in github.summary()


def test_edited_migration_fails_before_anything_is_applied(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    path.write_text(path.read_text().replace("primary_key=True", "primary_key=True, comment='x'"))
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    run = deploy(project)
    assert run.returncode == 1, run.output
    error = github.outputs()["error"]
    assert "0001_a" in error and "changed since they ran" in error
    assert "recorded" in error and "now" in error
    assert database.version() == {"0001_a"} and "b" not in database.tables()

    run = deploy(project, **{"allow-edited-migrations": "true"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}
    kinds = [
        r[0]
        for r in database.rows(
            "SELECT kind FROM db_deploy.db_deploy_history WHERE revision = '0001_a' ORDER BY id"
        )
    ]
    assert kinds == ["upgrade", "accepted-edit"]
    assert "edited since it ran; accepted" in github.summary()
    assert deploy(project).returncode == 0  # re-recorded: no longer an error


def test_databases_deployed_before_the_history_are_baselined(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add("0001_a", TABLE_A)
    alembic_upgrade(project.root, database)  # plain Alembic, no history
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    run = deploy(project)
    assert run.returncode == 0, run.output
    kinds = dict(database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history"))
    assert kinds == {"0001_a": "baseline", "0002_b": "upgrade"}
    assert "baselined" in github.summary()


def test_dry_run_creates_no_history(project: AlembicProject, database: Database, deploy) -> None:
    project.add("0001_a", TABLE_A)
    assert deploy(project, **{"dry-run": "true"}).returncode == 0
    assert database.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'db_deploy'") == 0


def test_history_schema_is_configurable(
    project: AlembicProject, database: Database, deploy
) -> None:
    project.add("0001_a", TABLE_A)
    assert deploy(project, **{"history-schema": "ops_audit"}).returncode == 0
    assert database.scalar("SELECT count(*) FROM ops_audit.db_deploy_history") == 1


# --------------------------------------------------------------------------- production guards


def test_tls_guard(database: Database) -> None:
    from deployer.commands.context import Context as PipelineRun
    from deployer.commands.shared import check_tls
    from deployer.render.terminal import TerminalConsole
    from deployer.results import PreflightResult
    from deployer.settings import load_settings

    remote = "postgresql://app:pw@db.example.com:5432/shop"
    facts = PreflightResult(target="db.example.com:5432/shop", tls=False)
    import io

    run = PipelineRun(
        load_settings({"database_url": remote, "security_preflight": "false"}),
        TerminalConsole(io.StringIO()),
    )
    check_tls(run, facts)
    assert any("not encrypted" in w for w in run.result.warnings)
    # With the security preflight on, its TLS finding (for both URLs) is the one warning.
    quiet = PipelineRun(load_settings({"database_url": remote}), TerminalConsole(io.StringIO()))
    check_tls(quiet, facts)
    assert quiet.result.warnings == []

    strict = PipelineRun(
        load_settings({"database_url": remote, "require_tls": "true"}),
        TerminalConsole(io.StringIO()),
    )
    from deployer.errors import ConfigError

    with pytest.raises(ConfigError, match="require-tls"):
        check_tls(strict, facts)
    check_tls(strict, PreflightResult(target="db.example.com:5432/shop", tls=True))  # fine
    local = PipelineRun(
        load_settings({"database_url": database.url, "require_tls": "true"}),
        TerminalConsole(io.StringIO()),
    )
    check_tls(local, PreflightResult(target="socket", tls=False))  # a local socket is fine


# --------------------------------------------------------------------------- a crash loses nothing


def test_sigkill_mid_migration_loses_nothing(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add("0001_a", TABLE_A)
    # Slow only while the marker table exists, so the retry after the crash is quick.
    project.add(
        "0002_slow",
        """
        op.add_column('a', sa.Column('x', sa.Integer))
        op.execute("SELECT pg_sleep(CASE WHEN to_regclass('public.slow_marker') IS NULL "
                   "THEN 0 ELSE 60 END)")
    """,
    )
    project.add("0003_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    database.execute("CREATE TABLE slow_marker ()")
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": str(project.root)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer"],
        env=env,
        cwd=github.workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sleeping = database.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'db-deploy' AND query LIKE '%pg_sleep%' "
                "AND state = 'active'"
            )
            if sleeping:
                break
            assert proc.poll() is None, "the deploy ended before reaching the slow revision"
            time.sleep(0.1)
        else:
            pytest.fail("the slow revision never started")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()

    # client_connection_check_interval: the server notices the dead client within seconds.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE "
            "datname = current_database() AND application_name = 'db-deploy'"
        )
        if left == 0:
            break
        time.sleep(0.2)
    assert left == 0, "the killed deploy's sessions are still there"
    assert database.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert database.version() == {"0001_a"}  # the last committed revision
    cols = {
        r[0]
        for r in database.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
        )
    }
    assert cols == {"id"}  # 0002's half-done work was rolled back

    database.execute("DROP TABLE slow_marker")
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_b"}
    assert [a["revision"] for a in json.loads(github.outputs()["applied"])] == [
        "0002_slow",
        "0003_b",
    ]


# --------------------------------------------------------------------------- refusals write nothing


def test_refused_deploy_writes_no_history(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """Exit 2 means nothing changed: a target below the current revision is refused before the
    history is created, even on a database that plain Alembic deployed."""
    project.add("0001_a", TABLE_A)
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    alembic_upgrade(project.root, database)
    run = deploy(project, target="0001_a")
    assert run.returncode == 2, run.output
    assert "below the current revision" in github.outputs()["error"]
    assert database.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'db_deploy'") == 0


def test_database_ahead_of_the_folder_is_one_answer_everywhere(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
) -> None:
    """An older checkout re-run against a newer database: deploy, plan and status all refuse
    with exit 2 and the same message, and nothing is written."""
    project.add("0001_a", TABLE_A)
    newer = project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    assert deploy(project).returncode == 0
    newer.unlink()
    history_rows = database.scalar("SELECT count(*) FROM db_deploy.db_deploy_history")
    for command in ("deploy", "plan", "status"):
        run = deploy(project, command=command)
        assert run.returncode == 2, (command, run.output)
        error = github.outputs()["error"]
        assert "the database is at 0002_b, which the migrations folder does not contain" in error
        assert "Traceback" not in run.output and "internal error" not in run.output
    assert database.version() == {"0002_b"}
    assert database.scalar("SELECT count(*) FROM db_deploy.db_deploy_history") == history_rows


def test_plan_fails_on_an_edited_migration_like_deploy_would(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    path.write_text(path.read_text().replace("primary_key=True", "primary_key=True, comment='x'"))
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    rows = database.scalar("SELECT count(*) FROM db_deploy.db_deploy_history")
    run = deploy(project, command="plan")
    assert run.returncode == 1, run.output
    assert "changed since they ran" in github.outputs()["error"]
    assert database.scalar("SELECT count(*) FROM db_deploy.db_deploy_history") == rows
    assert database.version() == {"0001_a"}


CUSTOM_VERSION_ENV = """
from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, version_table="schema_revision",
                  transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
"""


def test_seed_command_takes_deploys_lock_with_a_custom_version_table(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    session: sa.Connection,
) -> None:
    (project.root / "env.py").write_text(CUSTOM_VERSION_ENV)
    project.add("0001_a", TABLE_A)
    (project.root / "seed.py").write_text(
        "import sqlalchemy as sa\n\ndef seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO a VALUES (1)'))\n"
    )
    assert deploy(project).returncode == 0
    assert database.version("schema_revision") == {"0001_a"}
    key = db.lock_key(database.name, ".schema_revision")  # what deploy holds
    assert session.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    run = deploy(project, command="seed", **{"deploy-lock-wait": "1s"})
    assert run.returncode == 3, run.output
    assert database.scalar("SELECT count(*) FROM a") == 0


def test_plan_and_status_with_a_role_that_cannot_read_the_history(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    database.execute("CREATE ROLE reviewer LOGIN")
    try:
        database.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reviewer")
        url = database.url.replace("postgres@", "reviewer@")
        for command in ("plan", "status"):
            run = deploy(
                project, command=command, **{"database-url": url, "security-preflight": "false"}
            )
            assert run.returncode == 0, (command, run.output)
            assert "internal error" not in run.output
            assert github.outputs()["pending-count"] == "1"
    finally:
        database.execute("DROP OWNED BY reviewer")
        database.execute("DROP ROLE reviewer")
