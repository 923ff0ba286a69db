"""The deploy pipeline end to end: the CLI as a subprocess against a real PostgreSQL, with real
GITHUB_OUTPUT / GITHUB_STEP_SUMMARY files parsed by the runner's rules."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.helpers import AlembicProject, Database, GitHubRunner

TABLE_A = "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))"
TABLE_B = (
    "op.create_table('b', sa.Column('id', sa.Integer, primary_key=True), "
    "sa.Column('name', sa.Text))"
)


def linear(project: AlembicProject) -> AlembicProject:
    project.add("0001_a", TABLE_A, "op.drop_table('a')", message="create a")
    project.add("0002_b", TABLE_B, "op.drop_table('b')", message="create b")
    project.add(
        "0003_rows",
        "op.execute(\"INSERT INTO b (id, name) VALUES (1, 'x'), (2, 'y')\")",
        "op.execute('DELETE FROM b')",
        message="rows in b",
    )
    return project


def test_linear_chain_deploys_and_reports(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    linear(project)
    run = deploy(project, **{"smoke-expect": "b>=2", "environment": "staging"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_rows"}
    out = github.outputs()
    assert out["status"] == "success"
    assert out["failed-step"] == ""
    assert out["previous-revision"] == ""
    assert out["current-revision"] == "0003_rows"
    assert out["head-revision"] == "0003_rows"
    assert out["applied-count"] == "3"
    applied = json.loads(out["applied"])
    assert [a["revision"] for a in applied] == ["0001_a", "0002_b", "0003_rows"]
    assert applied[1]["description"] == "create b"
    assert all(a["seconds"] >= 0 for a in applied)
    assert out["pending-count"] == "0"
    assert out["seeded"] == "false"
    assert out["smoke-tables"] == "2"  # a, b (the version table is the tool's own)
    assert out["smoke-failed"] == "0"
    assert out["smoke-rows"] == "2"  # b's two rows (not the version table's)
    assert float(out["duration-seconds"]) > 0
    assert out["report-path"] == "db-deploy-report.json"

    summary = github.summary()
    assert "3 revision(s) applied" in summary
    for fact in (
        "octocat",
        "acme/shop",
        "refs/heads/main",
        "0123456789ab",
        "staging",
        "https://github.com/acme/shop/actions/runs/4242",
        "`0003_rows`",
        "create b",
        "`b >= 2`",
    ):
        assert fact in summary, fact

    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["schema_version"] == 1
    assert report["status"] == "success"
    assert [a["revision"] for a in report["migrate"]["applied"]] == [
        "0001_a",
        "0002_b",
        "0003_rows",
    ]
    assert report["telemetry"]["run_url"].endswith("/runs/4242")
    assert report["smoke"]["summary"]["rows"] == 2

    # Workflow commands: a group per step, on stdout where the runner reads them.
    for step in ("preflight", "migrate", "status", "smoke"):
        assert f"::group::{step}" in run.stdout
    assert "Traceback" not in run.output


def test_second_deploy_is_a_noop(project: AlembicProject, github: GitHubRunner, deploy) -> None:
    linear(project)
    assert deploy(project).returncode == 0
    run = deploy(project)
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["status"] == "noop"
    assert out["applied-count"] == "0"
    assert out["previous-revision"] == out["current-revision"] == "0003_rows"
    assert "::notice" in run.stdout


def test_partial_then_rest(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    linear(project)
    assert deploy(project, target="0001_a").returncode == 0
    assert database.version() == {"0001_a"}
    assert github.outputs()["pending-count"] == "2"  # still pending towards the head
    assert deploy(project).returncode == 0
    out = github.outputs()
    assert out["previous-revision"] == "0001_a"
    assert [a["revision"] for a in json.loads(out["applied"])] == ["0002_b", "0003_rows"]


def test_branch_and_merge(project: AlembicProject, database: Database, deploy) -> None:
    project.add("0001_base", TABLE_A, "op.drop_table('a')")
    project.add("0002_left", "op.add_column('a', sa.Column('l', sa.Integer))", down="0001_base")
    project.add("0002_right", "op.add_column('a', sa.Column('r', sa.Integer))", down="0001_base")
    project.add("0003_merge", "pass", down=("0002_left", "0002_right"))
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_merge"}
    cols = {
        r[0]
        for r in database.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
        )
    }
    assert cols == {"id", "l", "r"}


def test_several_heads_are_refused(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add("0001_base", TABLE_A)
    project.add("0002_left", "op.add_column('a', sa.Column('l', sa.Integer))", down="0001_base")
    project.add("0002_right", "op.add_column('a', sa.Column('r', sa.Integer))", down="0001_base")
    run = deploy(project)
    assert run.returncode == 2  # a configuration error: nothing was changed
    assert "0002_left" in run.stdout and "0002_right" in run.stdout
    assert "::error" in run.stdout
    assert github.outputs()["failed-step"] == "status"
    assert database.tables() == set()  # nothing changed


def failing_chain(project: AlembicProject) -> AlembicProject:
    project.add("0001_a", TABLE_A, "op.drop_table('a')")
    project.add("0002_b", TABLE_B, "op.drop_table('b')")
    project.add("0003_bad", "op.execute('ALTER TABLE missing_table ADD COLUMN x int')")
    project.add("0004_never", "op.create_table('never', sa.Column('id', sa.Integer))")
    return project


def test_failing_revision_per_revision_transactions(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    failing_chain(project)
    run = deploy(project)
    assert run.returncode == 1, run.output
    # The database is at the last committed revision.
    assert database.version() == {"0002_b"}
    assert {"a", "b"} <= database.tables() and "never" not in database.tables()
    out = github.outputs()
    assert out["status"] == "failed"
    assert out["failed-step"] == "migrate"
    assert out["current-revision"] == "0002_b"
    assert [a["revision"] for a in json.loads(out["applied"])] == ["0001_a", "0002_b"]
    assert "0003_bad" in out["error"] and "missing_table" in out["error"]
    summary = github.summary()
    assert "0003_bad" in summary and "does not exist" in summary and "❌ failed" in summary
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["migrate"]["failed_revision"] == "0003_bad"
    assert "missing_table" in report["migrate"]["error"]
    assert any(
        line.startswith("::error") and "0003_bad" in line for line in run.stdout.splitlines()
    )
    assert "Traceback" not in run.output


def test_failing_revision_all_or_nothing(
    make_project: Callable[..., AlembicProject], database: Database, github: GitHubRunner, deploy
) -> None:
    project = failing_chain(make_project("single", per_migration=False))
    run = deploy(project)
    assert run.returncode == 1, run.output
    assert database.version() == set()  # one transaction: everything rolled back
    assert "a" not in database.tables()
    out = github.outputs()
    assert out["current-revision"] == ""
    assert out["applied-count"] == "0"
    assert "0003_bad" in out["error"]


def test_failure_after_partial_deploy_keeps_earlier_revision(
    project: AlembicProject, database: Database, deploy
) -> None:
    failing_chain(project)
    assert deploy(project, target="0001_a").returncode == 0
    assert deploy(project).returncode == 1
    assert database.version() == {"0002_b"}


def test_data_migration(project: AlembicProject, database: Database, deploy) -> None:
    project.add(
        "0001_people",
        "op.create_table('people', sa.Column('id', sa.Integer, "
        "primary_key=True), sa.Column('full_name', sa.Text))\n"
        "op.execute(\"INSERT INTO people VALUES (1, 'Ada Lovelace'), (2, 'Alan Turing')\")",
    )
    project.add(
        "0002_split",
        """
        op.add_column('people', sa.Column('first', sa.Text))
        conn = op.get_bind()
        rows = conn.execute(sa.text('SELECT id, full_name FROM people')).all()
        for id_, full in rows:
            conn.execute(sa.text('UPDATE people SET first = :f WHERE id = :i'),
                         {'f': full.split()[0], 'i': id_})
        op.alter_column('people', 'first', nullable=False)
    """,
    )
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert [r[0] for r in database.rows("SELECT first FROM people ORDER BY id")] == ["Ada", "Alan"]


def test_create_index_concurrently_in_autocommit_block(
    project: AlembicProject, database: Database, deploy
) -> None:
    project.add(
        "0001_t",
        "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('v', sa.Integer))\nop.execute('INSERT INTO t SELECT g, g FROM "
        "generate_series(1, 1000) g')",
    )
    project.add(
        "0002_idx",
        """
        with op.get_context().autocommit_block():
            op.create_index('t_v_idx', 't', ['v'], postgresql_concurrently=True)
    """,
    )
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_idx"}
    valid = database.scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_v_idx'::regclass"
    )
    assert valid is True


def test_target_below_current_is_refused(
    project: AlembicProject, database: Database, deploy
) -> None:
    linear(project)
    assert deploy(project).returncode == 0
    run = deploy(project, target="0001_a")
    assert run.returncode == 2
    assert "below the current revision" in run.stdout
    assert database.version() == {"0003_rows"}
    assert database.scalar("SELECT count(*) FROM b") == 2


def test_unknown_target(project: AlembicProject, database: Database, deploy) -> None:
    linear(project)
    run = deploy(project, target="9999_nope")
    assert run.returncode == 2
    assert "unknown target revision '9999_nope'" in run.stdout
    assert database.tables() == set()


def test_session_settings_on_the_migration_connection(
    project: AlembicProject, database: Database, deploy
) -> None:
    project.add(
        "0001_settings",
        """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
                   "current_setting('statement_timeout') AS statement_timeout, "
                   "current_setting('application_name') AS app")
    """,
    )
    run = deploy(project, **{"lock-timeout": "3s", "statement-timeout": "2m"})
    assert run.returncode == 0, run.output
    # lock_timeout: the lock ladder's first rung (under lock-timeout, its cap).
    assert tuple(database.rows("SELECT * FROM seen")[0]) == ("100ms", "2min", "db-deploy")


def test_session_options_of_the_url_are_kept_beside_ours(
    project: AlembicProject, database: Database, deploy
) -> None:
    """A URL's own `options` and the deployer's timeouts both reach the migration session."""
    project.add(
        "0001_settings",
        """
        op.execute("CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
                   "current_setting('work_mem') AS work_mem")
    """,
    )
    url = database.url + "&options=-c%20work_mem%3D12345kB"
    run = deploy(project, **{"database-url": url, "lock-timeout": "3s"})
    assert run.returncode == 0, run.output
    assert tuple(database.rows("SELECT * FROM seen")[0]) == ("100ms", "12345kB")


def test_noop_deploy_runs_env_py_once(
    project: AlembicProject, github: GitHubRunner, database: Database, deploy
) -> None:
    """With nothing pending env.py runs once, as for `alembic upgrade head`: once to learn
    its version table and current revision, and not again to apply nothing."""
    log = project.root / "runs.log"
    env_py = project.root / "env.py"
    env_py.write_text(f"open({str(log)!r}, 'a').write('run\\n')\n" + env_py.read_text())
    linear(project)
    assert deploy(project).returncode == 0
    assert log.read_text().count("run") == 2  # learn the version table, then migrate
    log.write_text("")
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert log.read_text().count("run") == 1
    out = github.outputs()
    assert out["status"] == "noop"
    assert out["previous-revision"] == out["current-revision"] == "0003_rows"
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["migrate"]["pending"] == [] and report["migrate"]["current"] == ["0003_rows"]
    assert report["status_check"]["up_to_date"] is True
    # what env.py configures is still reported, though it did not run a second time
    assert report["migrate"]["transaction_per_migration"] is True
    assert "one transaction per revision" in github.summary()


def test_a_version_table_holding_a_revision_and_its_ancestor_is_refused(
    project: AlembicProject, database: Database, deploy
) -> None:
    """Not a no-op: Alembic cannot plan from overlapping heads; nothing is changed (exit 2)."""
    linear(project)
    assert deploy(project).returncode == 0
    database.execute("INSERT INTO alembic_version VALUES ('0001_a')")
    run = deploy(project)
    assert run.returncode == 2, run.output
    assert "cannot plan the upgrade" in run.stdout and "internal error" not in run.stdout
    assert database.version() == {"0001_a", "0003_rows"}


def test_dry_run_changes_nothing_and_shows_sql(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    linear(project)
    run = deploy(project, **{"dry-run": "true"})
    assert run.returncode == 0, run.output
    assert database.tables() == set()
    out = github.outputs()
    assert out["applied-count"] == "0"
    assert out["pending-count"] == "3"
    summary = github.summary()
    assert "3 revision(s) would be applied" in summary
    assert "CREATE TABLE a" in summary and "INSERT INTO b" in summary


def test_plan_command_is_a_dry_run(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    linear(project)
    run = deploy(project, command="plan")
    assert run.returncode == 0, run.output
    assert database.tables() == set()
    assert "CREATE TABLE b" in github.summary()


def test_sessions_without_timeouts_share_one_engine(
    project: AlembicProject, database: Database, clean_environ, tmp_path
) -> None:
    """In a deploy, the application, deploy-lock and blocker-watch sessions share one engine
    (SQLAlchemy initialises its dialect once for them); the migration session, whose timeouts
    are in its engine's connect arguments, has the other. In-process, to see the engines."""
    import io

    from deployer.commands import deploy
    from deployer.commands.context import Context
    from deployer.render.terminal import TerminalConsole
    from deployer.settings import load_settings

    linear(project)
    clean_environ.chdir(tmp_path)
    settings = load_settings(
        {"database_url": database.url, "migrations_path": str(project.root), "lock_timeout": "3s"}
    )
    with Context(settings, TerminalConsole(io.StringIO())) as run:
        deploy.run(run)
    assert run.result.migrate is not None and len(run.result.migrate.applied) == 3
    options = sorted(key[3] for key in run.engines)
    assert len(run.engines) == 2, run.engines.keys()
    assert options[0] == ""  # application, lock, watch
    assert "lock_timeout=3000" in options[1]  # migration


def test_every_command_has_its_module() -> None:
    """The registry runs every command the settings accept, each from a module of its own that
    returns the run's record."""
    from deployer.commands import COMMANDS, command
    from deployer.settings import COMMANDS as ACCEPTED

    assert set(COMMANDS) == set(ACCEPTED)
    for name in ACCEPTED:
        run = command(name)
        module = "deploy" if name == "plan" else name.replace("-", "_")  # fleet-report
        assert run.__module__ == f"deployer.commands.{module}"
        assert run.__annotations__["return"] == "RunResult"
