"""A failure points at the line and has a class (issue 16, points 3 and 5): each failure driven
through the CLI in the runner's environment (or on a terminal), read back from the outputs, the
annotation, the summary, the JSON report and the terminal report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer import db
from deployer.errors import ERROR_CLASSES
from deployer.interface import descriptions
from tests.helpers import (
    AlembicProject,
    Database,
    GitHubRunner,
    Run,
    alembic_upgrade,
    clean_env,
    write_alembic_project,
)
from tests.helpers.pgcluster import ClusterDatabase, closed_port

TABLE_T = "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), sa.Column('v', sa.Integer))"


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def errors(run: Run) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith("::error")]


@pytest.fixture
def ws_project(github: GitHubRunner) -> AlembicProject:
    """A project inside the workspace (the repository's checkout), as on GitHub."""
    return write_alembic_project(github.workspace / "migrations")


@pytest.fixture
def session(database: Database) -> Iterator[sa.Connection]:
    engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("SET application_name = 'other-session'"))
        yield conn


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --------------------------------------------------------------------------- a Python error


def test_python_error_points_at_the_revision_line(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    ws_project.add("0001_t", TABLE_T)
    path = ws_project.add(
        "0002_typo",
        """
        op.execute("UPDATE t SET v = 1")
        op.add_colum('t', sa.Column('w', sa.Integer))
        """,
    )
    run = deploy(ws_project, **{"migrations-path": "migrations"})
    assert run.returncode == 1, run.output
    line = line_of(path, "add_colum")
    exception = "AttributeError: module 'alembic.op' has no attribute 'add_colum'"
    out = github.outputs()
    assert out["error-class"] == "python-error"
    assert out["failed-step"] == "migrate"
    # The annotation sits on the line of the file (relative to the repository).
    [annotation] = errors(run)
    assert f"file=migrations/versions/0002_typo.py,line={line}::" in annotation
    rep = report(github)
    assert rep["error_class"] == "python-error"
    failure = rep["failure"]
    assert failure["revision"] == "0002_typo"
    assert failure["file"] == "migrations/versions/0002_typo.py"
    assert failure["line"] == line
    assert failure["exception"] == exception
    assert failure["statement"] == "" and failure["sqlstate"] == ""
    assert failure["traceback"] == ""  # only with --debug
    assert "failure" not in rep["migrate"]  # the run's `failure` holds it
    summary = github.summary()
    assert "### Failure" in summary and "`python-error`" in summary
    link = (
        "https://github.com/acme/shop/blob/0123456789abcdef0123456789abcdef01234567/"
        f"migrations/versions/0002_typo.py#L{line}"
    )
    assert link in summary
    assert exception in summary
    # The terminal report (in its log group on GitHub) says it too.
    assert f"at         migrations/versions/0002_typo.py:{line} (revision 0002_typo)" in run.stdout
    assert f"exception  {exception}" in run.stdout
    assert "Traceback" not in run.output
    assert database.version() == {"0001_t"}


def test_debug_adds_the_traceback_on_a_terminal(
    ws_project: AlembicProject,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    database: Database,
) -> None:
    ws_project.add("0001_typo", "op.add_colum('t', sa.Column('w', sa.Integer))")
    args = ["deploy", "--database-url", database.url, "--workspace", str(github.workspace)]
    plain = run_cli(*args, env=clean_env(), cwd=github.workspace)
    assert plain.returncode == 1, plain.output
    assert "at         migrations/versions/0001_typo.py:" in plain.stdout
    assert "class      python-error" in plain.stdout
    assert "Traceback" not in plain.output
    debug = run_cli(*args, "--debug", env=clean_env(), cwd=github.workspace)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "0001_typo.py" in debug.stderr and "add_colum" in debug.stderr


# --------------------------------------------------------------------------- a server error


def test_server_error_names_the_statement_and_the_server_words(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    ws_project.add("0001_t", TABLE_T)
    path = ws_project.add(
        "0002_ratio",
        '''
        op.execute("INSERT INTO t VALUES (1, 1)")
        op.execute("""
            UPDATE t
               SET v = v / 0
             WHERE id = 1
        """)
        op.execute("INSERT INTO t VALUES (2, 2)")
        ''',
    )
    run = deploy(ws_project)
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "sql-error"
    failure = report(github)["failure"]
    assert failure["file"] == "migrations/versions/0002_ratio.py"
    assert failure["line"] == line_of(path, 'op.execute("""')
    assert failure["statement"] == "UPDATE t\n   SET v = v / 0\n WHERE id = 1"
    assert failure["message"] == "division by zero"
    assert failure["sqlstate"] == "22012"
    assert failure["exception"] == ""
    [annotation] = errors(run)
    assert f"file=migrations/versions/0002_ratio.py,line={failure['line']}::" in annotation
    summary = github.summary()
    assert "```sql\nUPDATE t\n   SET v = v / 0\n WHERE id = 1\n```" in summary
    assert "division by zero (SQLSTATE `22012`)" in summary
    assert "statement  │ UPDATE t" in run.stdout
    assert "server     division by zero (SQLSTATE 22012)" in run.stdout
    assert database.version() == {"0001_t"} and database.scalar("SELECT count(*) FROM t") == 0


def test_server_position_detail_hint_and_context(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    ws_project.add("0001_t", TABLE_T)
    ws_project.add("0002_typo", "op.execute('SELECT id,\\n       vv FROM t')")
    run = deploy(ws_project)
    assert run.returncode == 1, run.output
    failure = report(github)["failure"]
    assert failure["sqlstate"] == "42703"  # undefined_column
    assert failure["position"] == len("SELECT id,\n       ") + 1
    assert (failure["statement_line"], failure["statement_column"]) == (2, 8)
    # The caret sits under the column on the terminal.
    lines = run.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if "│        vv FROM t" in line)
    assert lines[i + 1].endswith(f"│        ^ position {failure['position']}")
    assert "line 2, column 8 of the statement" in github.summary()

    ws_project.revisions.pop()
    (ws_project.versions / "0002_typo.py").unlink()
    ws_project.add(
        "0002_raise",
        """
        op.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'audit table missing' "
            "USING DETAIL = 'audit.events is gone', HINT = 'run 0001 first'; END $$"
        )
        """,
    )
    run = deploy(ws_project)
    assert run.returncode == 1, run.output
    failure = report(github)["failure"]
    assert failure["message"] == "audit table missing"
    assert failure["detail"] == "audit.events is gone"
    assert failure["hint"] == "run 0001 first"
    assert "PL/pgSQL function inline_code_block" in failure["context"]
    assert failure["sqlstate"] == "P0001"
    summary = github.summary()
    assert "| Detail | audit.events is gone |" in summary
    assert "| Hint | run 0001 first |" in summary
    assert "hint       run 0001 first" in run.stdout


def test_statement_is_masked_before_it_is_cut(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    secret = "Zq8-very-secret-token-4711"
    url = f"{database.url}&password={secret}"  # trust auth: accepted, and a secret of the run
    prefix = "SELECT 1/0 WHERE '"
    pad = "x" * (230 - len(prefix))  # the secret straddles the line's cut at 240 characters
    ws_project.add(
        "0001_leak",
        f"""op.execute("{prefix}{pad}{secret}{"y" * 1500}' <> ''")""",
    )
    run = deploy(ws_project, **{"database-url": url})
    assert run.returncode == 1, run.output
    artefacts = run.visible + github.summary() + github.output_file.read_text()
    artefacts += (github.workspace / "db-deploy-report.json").read_text()
    for i in range(len(secret) - 7):
        assert secret[i : i + 8] not in artefacts
    failure = report(github)["failure"]
    assert failure["sqlstate"] == "22012"
    assert "***" in failure["statement"] and len(failure["statement"]) <= 242


def test_password_literal_is_masked(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    ws_project.add(
        "0001_role",
        "op.execute(\"CREATE ROLE r_x PASSWORD 'hunter2-literal' NOSUCHOPTION\")",
    )
    run = deploy(ws_project)
    assert run.returncode == 1, run.output
    failure = report(github)["failure"]
    assert failure["sqlstate"] == "42601"  # syntax error
    assert "PASSWORD '***'" in failure["statement"]
    everything = run.visible + github.summary() + json.dumps(report(github))
    assert "hunter2" not in everything


# --------------------------------------------------------------------------- all or nothing


def test_all_or_nothing_never_says_applied_and_lists_what_was_rolled_back(
    github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    project = write_alembic_project(github.workspace / "migrations", per_migration=False)
    project.add("0001_t", TABLE_T)
    project.add("0002_v", "op.execute('INSERT INTO t VALUES (1, 1)')")
    project.add("0003_bad", "op.execute('UPDATE t SET v = v / 0')")
    run = deploy(project)
    assert run.returncode == 1, run.output
    log = run.stdout
    assert "ran 0001_t" in log and "ran 0002_v" in log
    assert "applied 0001_t" not in log and "applied 0002_v" not in log
    rep = report(github)
    assert rep["migrate"]["rolled_back"] == ["0001_t", "0002_v"]
    assert rep["migrate"]["applied"] == []
    assert rep["failure"]["revision"] == "0003_bad"
    assert github.outputs()["applied-count"] == "0"
    assert "↩ rolled back with it: 0001_t, 0002_v" in log
    summary = github.summary()
    assert "| `0001_t` |  |  | ↩️ rolled back |" in summary
    assert "Rolled back with the failure" in summary
    assert database.version() == set() and "t" not in database.tables()


def test_all_or_nothing_success_says_applied_at_the_end(
    github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    project = write_alembic_project(github.workspace / "migrations", per_migration=False)
    project.add("0001_t", TABLE_T)
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert "ran 0001_t" in run.stdout and "applied 0001_t" not in run.stdout
    rep = report(github)
    assert [a["revision"] for a in rep["applied"]] if "applied" in rep else True
    assert [a["revision"] for a in rep["migrate"]["applied"]] == ["0001_t"]
    assert rep["migrate"]["rolled_back"] == [] and rep["error_class"] == ""
    assert github.outputs()["error-class"] == ""


# --------------------------------------------------------------------------- the classes


def test_error_classes_are_the_specs_and_documented() -> None:
    spec = [
        "config", "unreachable", "auth", "lock-busy", "lock-timeout", "sql-error",
        "python-error", "checksum-mismatch", "seed-error", "smoke-failed", "risk-gate",
        "cancelled",
    ]  # fmt: skip
    assert ERROR_CLASSES[: len(spec)] == tuple(spec)
    description = descriptions()["error-class"]
    for name in ERROR_CLASSES:
        assert f"`{name}`" in description


def test_config_class_on_bad_input(github: GitHubRunner, deploy: Callable[..., Run]) -> None:
    run = deploy(Path("/nonexistent/migrations"))
    assert run.returncode == 2, run.output
    assert github.outputs()["error-class"] == "config"
    assert report(github)["error_class"] == "config"


def test_unreachable_class(github: GitHubRunner, deploy: Callable[..., Run], ws_project) -> None:
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/x"
    run = deploy(ws_project, **{"database-url": url, "connect-retries": "1"})
    assert run.returncode == 3, run.output
    assert github.outputs()["error-class"] == "unreachable"


def test_lock_busy_class_names_the_holder(
    ws_project: AlembicProject,
    github: GitHubRunner,
    deploy: Callable[..., Run],
    database: Database,
    session: sa.Connection,
) -> None:
    ws_project.add("0001_t", TABLE_T)
    key = db.lock_key(database.name, ".alembic_version")
    assert session.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    run = deploy(ws_project, **{"deploy-lock-wait": "1s"})
    assert run.returncode == 3, run.output
    assert github.outputs()["error-class"] == "lock-busy"
    assert report(github)["failure"]["object"].startswith(f"pid {pid} (other-session")
    assert f"object     pid {pid}" in run.stdout


def test_lock_timeout_class_names_the_blocker(
    ws_project: AlembicProject,
    github: GitHubRunner,
    deploy: Callable[..., Run],
    database: Database,
    session: sa.Connection,
) -> None:
    ws_project.add("0001_t", TABLE_T)
    alembic_upgrade(ws_project.root, database)
    ws_project.add("0002_w", "op.add_column('t', sa.Column('w', sa.Integer))")
    session.execute(sa.text("BEGIN"))
    session.execute(sa.text("LOCK TABLE t IN ACCESS SHARE MODE"))
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    try:
        run = deploy(ws_project, **{"lock-timeout": "500ms", "lock-wait-budget": "1s"})
    finally:
        session.execute(sa.text("ROLLBACK"))
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "lock-timeout"
    failure = report(github)["failure"]
    assert failure["sqlstate"] == "55P03"
    assert failure["object"].startswith(f"pid {pid}")
    assert failure["file"] == "migrations/versions/0002_w.py"


def test_checksum_mismatch_class(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    path = ws_project.add("0001_t", TABLE_T)
    assert deploy(ws_project).returncode == 0
    path.write_text(path.read_text().replace("'v', sa.Integer", "'v', sa.BigInteger"))
    run = deploy(ws_project)
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "checksum-mismatch"
    assert report(github)["failure"]["object"] == "0001_t"


def test_seed_error_class(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    ws_project.add("0001_t", TABLE_T)
    (ws_project.root / "seed.py").write_text(
        "def seed(connection):\n    raise RuntimeError('catalog source unavailable')\n"
    )
    run = deploy(ws_project, **{"run-seed": "true"})
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "seed-error"
    assert report(github)["failure"]["object"].endswith("seed.py")


def test_smoke_failed_class(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    ws_project.add("0001_t", TABLE_T)
    run = deploy(ws_project, **{"smoke-expect": "t>=1"})
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "smoke-failed"
    assert report(github)["failure"]["object"] == "t"


def test_auth_class(
    cluster_db: ClusterDatabase, github: GitHubRunner, deploy: Callable[..., Run], ws_project
) -> None:
    url = cluster_db.url(password="certainly-wrong-password")
    run = deploy(ws_project, **{"database-url": url, "connect-retries": "1"})
    assert run.returncode == 3, run.output
    assert github.outputs()["error-class"] == "auth"
    assert report(github)["error_class"] == "auth"


def test_failing_downgrade_points_at_its_line(
    ws_project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run], database: Database
) -> None:
    ws_project.add("0001_t", TABLE_T, "op.drop_table('t')")
    path = ws_project.add("0002_w", "pass", "op.execute('DROP TABLE no_such_table')")
    alembic_upgrade(ws_project.root, database)
    run = deploy(ws_project, command="rollback", target="base")
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "sql-error"
    failure = report(github)["failure"]
    assert failure["revision"] == "0002_w"
    assert (failure["file"], failure["line"]) == (
        "migrations/versions/0002_w.py",
        line_of(path, "no_such_table"),
    )
    assert failure["sqlstate"] == "42P01" and failure["statement"] == "DROP TABLE no_such_table"
    assert database.version() == {"0002_w"}
