"""A user's first hour (issue 16): the demo and `--embedded` never touch a database they were
not asked to; `plan` on a pull request checks what it can; `status` shows what is pending; and
the smaller things a first run shows: a rollback reads "reverted", one error line on a
terminal, a refusal headed "refused", no report file left behind on a terminal, Alembic's lines
once (none for `plan`), paths relative to the workspace, the embedded server named so, the
security table after the migrations, the tool's own tables outside the smoke count, no raw
Python warning, a missing migrations path that says where it looked.

Every test drives the `db-deploy` command (a subprocess) or the runner's environment as a user
would; the databases are real (the embedded test server, with pgvector)."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deployer.settings import env_names
from tests.helpers import (
    REPO,
    AlembicProject,
    Database,
    GitHubRunner,
    Run,
    clean_env,
    parse_env_file,
    run_cli,
)

USERS = (
    "op.create_table('users', sa.Column('id', sa.Integer, primary_key=True))\n"
    "op.execute('INSERT INTO users (id) VALUES (1), (2)')",
    "op.drop_table('users')",
)
VECTOR = (
    "op.execute('CREATE EXTENSION IF NOT EXISTS vector')",
    "op.execute('DROP EXTENSION vector')",
)
URL_SETTINGS = ("database_url", "direct_database_url", "scratch_database_url")
# Every place the environment can hold a database URL (the settings' own aliases).
URL_VARIABLES = [e for name in URL_SETTINGS for e in env_names(name)]


def untouched(database: Database) -> bool:
    """Nothing of a deploy in `database`: no table, no extension, no schema of the tool."""
    schemas = database.rows(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
        "AND nspname NOT IN ('public', 'information_schema')"
    )
    extensions = database.rows("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'")
    return not database.tables() and not schemas and not extensions


def two_revisions(project: AlembicProject) -> AlembicProject:
    project.add("0001_users", *USERS, message="users")
    project.add("0002_vector", *VECTOR, message="vector")
    return project


def on_a_terminal(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`db-deploy ARGS` with stdout and stderr on one pseudo-terminal, as a user at a shell
    sees it: the exit code and everything shown."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        cwd=cwd,
        env=clean_env() if env is None else env,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    code = proc.wait(timeout=120)
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


# --------------------------------------------------------------------------- 1. --embedded


def test_every_url_variable_is_covered() -> None:
    """The variables tested below are every spelling the settings read (a new alias is tested
    as soon as it exists)."""
    assert set(URL_VARIABLES) == {
        "DATABASE_URL",
        "DIRECT_DATABASE_URL",
        "DB_DEPLOY_SCRATCH_DATABASE_URL",
        "INPUT_DATABASE-URL",
        "INPUT_DATABASE_URL",
        "INPUT_DIRECT-DATABASE-URL",
        "INPUT_DIRECT_DATABASE_URL",
        "INPUT_SCRATCH-DATABASE-URL",
        "INPUT_SCRATCH_DATABASE_URL",
    }


@pytest.mark.parametrize("variable", URL_VARIABLES)
def test_embedded_wins_over_a_url_from_the_environment(
    variable: str, project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    two_revisions(project)
    env = {**clean_env(), variable: database.url}
    run = run_cli(
        "deploy",
        "--embedded",
        "--migrations-path",
        str(project.root),
        "--smoke-expect",
        "users>=2",
        "--required-extensions",
        "vector",
        "--summary-file",
        "summary.md",
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert f"--embedded: ignoring {variable} from the environment" in run.stderr
    assert untouched(database), database.tables()
    summary = (tmp_path / "summary.md").read_text()
    # The embedded server is named so, not by its temporary socket folder.
    assert "(embedded)" in summary.splitlines()[0], summary.splitlines()[0]
    assert "/tmp/dbd-" not in summary and "database   embedded" in run.stdout
    # The security table speaks of the database after the migrations.
    assert "was installed by this deploy" in summary and "not installed yet" not in summary
    assert database.url not in run.output


@pytest.mark.parametrize(
    "flag", ["--database-url", "--direct-database-url", "--scratch-database-url"]
)
def test_embedded_with_a_url_flag_is_refused(
    flag: str, project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    two_revisions(project)
    run = run_cli(
        "deploy",
        "--embedded",
        flag,
        database.url,
        "--migrations-path",
        str(project.root),
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.output
    assert f"--embedded and {flag} contradict: give one" in run.stdout
    assert "refused" in run.stdout and "embedded PostgreSQL" not in run.stderr
    assert "Traceback" not in run.output
    assert untouched(database)


def demo_command() -> tuple[list[str], str]:
    """`make demo`'s recipe as the Makefile has it: the variables it unsets, and the
    db-deploy command line itself (the rest of the recipe is the `env -u …` prefix)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    db_vars = re.search(r"^DB_VARS\s*=(.*)$", text, re.M)
    assert db_vars, "Makefile: DB_VARS"
    recipe = re.search(r"^demo:.*\n\t(.*)$", text, re.M)
    assert recipe, "Makefile: the demo recipe"
    line = recipe.group(1)
    command = line[line.index("$(BIN)/db-deploy") :]
    return db_vars.group(1).split(), command


def test_make_demo_never_touches_the_database_url(database: Database, tmp_path: Path) -> None:
    """`make demo`'s own command, run with DATABASE_URL pointing at a real database with
    pgvector available (the test database), without the recipe's `env -u`: --embedded alone
    keeps it untouched. The recipe unsets every database variable besides."""
    db_vars, command = demo_command()
    assert set(URL_VARIABLES) <= set(db_vars), db_vars
    assert {"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE"} <= set(db_vars)
    shutil.copytree(
        REPO / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    bindir = Path(sys.executable).parent
    assert (bindir / "db-deploy").exists()
    shell = command.replace("$(BIN)", shlex.quote(str(bindir))).replace("$$", "$")
    env = {**clean_env(), "DATABASE_URL": database.url}
    proc = subprocess.run(
        ["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--embedded: ignoring DATABASE_URL from the environment" in proc.stderr
    assert untouched(database), database.tables()
    report = json.loads((tmp_path / ".cache/demo/report.json").read_text())
    assert report["status"] == "success" and report["preflight"]["target"] == "embedded"
    # Paths relative to the workspace; the tool's own tables outside the smoke count.
    assert report["migrate"]["script_location"] == "migrations"
    assert {p["path"] for p in report["migrate"]["pending"]} >= {"migrations/versions/0001_core.py"}
    assert report["seed"]["path"] == "migrations/seed.py"
    names = {t["name"] for t in report["smoke"]["tables"]}
    assert "alembic_version" not in names and "organizations" in names
    summary = (tmp_path / ".cache/demo/summary.md").read_text()
    assert "Script folder `migrations`" in summary and str(tmp_path) not in summary
    assert re.search(r"extension vector [\d.]+ was installed by this deploy", summary), summary


def test_make_demo_installs_the_runtime_only() -> None:
    """The demo's prerequisite is the runtime stage (the package with its embedded extra), not
    the dev tools."""
    text = (REPO / "Makefile").read_text()
    prereq = re.search(r"^demo:(.*)$", text, re.M)
    assert prereq and prereq.group(1).split() == ["$(RUNTIME)"]
    runtime = re.search(r"^\$\(RUNTIME\):.*\n((?:\t.*\n)+)", text, re.M)
    assert runtime and "-e '.[embedded]'" in runtime.group(1) and "dev" not in runtime.group(1)


# --------------------------------------------------------------------------- 2. plan


@pytest.fixture
def pull_request(deploy: Callable[..., Run], github: GitHubRunner) -> Callable[..., Run]:
    github.env.update(GITHUB_EVENT_NAME="pull_request", GITHUB_REF="refs/pull/7/merge")
    return deploy


def test_plan_on_a_pull_request_with_new_tables_in_smoke_expect(
    project: AlembicProject, database: Database, github: GitHubRunner, pull_request
) -> None:
    """The deploy job's inputs (smoke-expect on a table the pull request adds, an extension it
    creates) in the plan job: exit 0, the expectations shown as checked after the deploy; the
    deploy with the same inputs then checks them."""
    two_revisions(project)
    inputs = {"smoke-expect": "users>=2", "required-extensions": "vector"}
    run = pull_request(project, command="plan", **inputs)
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "success"
    assert untouched(database)
    summary = github.summary()
    assert "| `users >= 2` | no such table | ⏳ checked after the deploy |" in summary
    assert "| vector | any | not installed | ⏳ checked after the deploy |" in summary
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["smoke"]["expectations"][0]["deferred"] is True
    assert report["smoke"]["summary"]["problems"] == []

    github.env["GITHUB_EVENT_NAME"] = "push"
    run = pull_request(project, **inputs)
    assert run.returncode == 0, run.output
    summary = github.summary()
    assert "| `users >= 2` | 2 | ✅ |" in summary and "⏳" not in summary


def test_dry_run_on_a_terminal_shows_what_the_smoke_will_check(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    two_revisions(project)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    args += ["--smoke-expect", "users>=2", "--required-extensions", "vector"]
    run = run_cli("deploy", "--dry-run", *args, cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert "⏳ expect users >= 2: no such table now, checked after the deploy" in run.stdout
    assert "⏳ extension vector: not installed now, checked after the deploy" in run.stdout
    assert untouched(database)


def test_plan_with_nothing_pending_still_fails_on_a_missing_table(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    """Nothing pending, no seed: the deploy would fail the same smoke, so the plan does."""
    project.add("0001_users", *USERS)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    assert run_cli("deploy", *args, cwd=tmp_path).returncode == 0
    run = run_cli("plan", *args, "--smoke-expect", "orders>=1", cwd=tmp_path)
    assert run.returncode == 1, run.output
    assert "expected orders >= 1 rows, no such table" in run.stdout


# --------------------------------------------------------------------------- 6. status


def test_status_on_a_terminal_shows_what_is_pending(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    two_revisions(project)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    run = run_cli("status", *args, "--output-file", "out.txt", cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert "⏳ db-deploy status: 2 pending" in run.stdout
    assert "pending    2 revision(s)" in run.stdout
    assert re.search(r"· 0001_users +users", run.stdout) and re.search(r"· 0002_vector", run.stdout)
    assert ": success" not in run.stdout
    # the output keeps its values
    assert parse_env_file((tmp_path / "out.txt").read_text())["status"] == "success"

    assert run_cli("deploy", *args, cwd=tmp_path).returncode == 0
    run = run_cli(
        "status", *args, "--output-file", "out.txt", "--summary-file", "s.md", cwd=tmp_path
    )
    assert run.returncode == 0, run.output
    assert "✅ db-deploy status: up to date" in run.stdout and "pending" not in run.stdout
    assert parse_env_file((tmp_path / "out.txt").read_text())["status"] == "noop"
    assert "db-deploy status: up to date" in (tmp_path / "s.md").read_text().splitlines()[0]


# --------------------------------------------------------------------------- 7. the smaller points


def test_a_rollback_reads_reverted(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    two_revisions(project)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    assert run_cli("deploy", *args, cwd=tmp_path).returncode == 0
    run = run_cli(
        "rollback", *args, "--target", "0001_users", "--summary-file", "s.md", cwd=tmp_path
    )
    assert run.returncode == 0, run.output
    assert "↩ db-deploy rollback: 1 revision(s) reverted" in run.stdout
    assert "reverted   1 revision(s)" in run.stdout and "↩ 0002_vector" in run.stdout
    assert "applied" not in run.stdout
    summary = (tmp_path / "s.md").read_text()
    assert "db-deploy rollback: 1 revision(s) reverted" in summary.splitlines()[0]
    assert "✅ applied" not in summary and "↩️ reverted" in summary


def test_one_error_line_on_a_terminal_and_a_refusal_is_headed_refused(tmp_path: Path) -> None:
    code, shown = on_a_terminal("status", "--migrations-path", "nowhere", "--database-url",
                                "postgresql://app@127.0.0.1:9/app", cwd=tmp_path)  # fmt: skip
    assert code == 2, shown
    errors = [line for line in shown.splitlines() if "does not exist" in line]
    assert len(errors) == 1, shown
    assert "⛔ db-deploy status: refused (config): nothing was changed" in shown
    assert "failed" not in shown
    assert not (tmp_path / "db-deploy-report.json").exists()


def test_a_failure_on_a_terminal_is_said_once(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    project.add("0001_bad", "op.execute('SELECT 1/0')")
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    code, shown = on_a_terminal("deploy", *args, cwd=tmp_path)
    assert code == 1, shown
    assert len([line for line in shown.splitlines() if line.startswith("error:")]) == 1, shown
    assert "❌ db-deploy deploy: failed" in shown


def test_no_report_file_on_a_terminal_unless_asked(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    project.add("0001_users", *USERS)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    for command in ("plan", "status", "deploy", "smoke"):
        run = run_cli(command, *args, cwd=tmp_path)
        assert run.returncode == 0, run.output
        assert "   report " not in run.stdout
    # also on a configuration error, and run from inside the migrations folder
    assert run_cli("status", "--lock-timeout", "soon", *args, cwd=tmp_path).returncode == 2
    assert run_cli("status", *args, cwd=project.root).returncode == 0
    assert not list(tmp_path.rglob("db-deploy-report.json"))
    # asked for: the flag, or the variable
    run = run_cli("status", *args, "--report-file", "r.json", cwd=tmp_path)
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "noop"
    assert "report r.json" in run.stdout
    env = {**clean_env(), "DB_DEPLOY_REPORT_FILE": "v.json"}
    assert run_cli("status", *args, env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "v.json").is_file()


@pytest.fixture
def fresh_project(tmp_path: Path) -> Path:
    """`alembic init migrations` (its env.py configures logging from alembic.ini, so Alembic's
    INFO lines print) and two revisions."""
    from alembic import command
    from alembic.config import Config

    root = tmp_path / "app"
    root.mkdir()
    cfg = Config(str(root / "alembic.ini"))
    command.init(cfg, str(root / "migrations"))
    (root / "migrations" / "versions").mkdir(exist_ok=True)
    for rev, down, body in (("0001", None, USERS[0]), ("0002", "0001", VECTOR[0])):
        (root / "migrations" / "versions" / f"{rev}.py").write_text(
            f'"""r{rev}"""\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
            f"revision = {rev!r}\ndown_revision = {down!r}\n\n\n"
            "def upgrade():\n" + "".join(f"    {x}\n" for x in body.splitlines()) + "\n\n"
            "def downgrade():\n    pass\n"
        )
    return root


def test_alembic_lines_once_a_run_and_none_for_plan(
    fresh_project: Path, database: Database
) -> None:
    args = ["--database-url", database.url]
    plan = run_cli("plan", *args, cwd=fresh_project)
    assert plan.returncode == 0, plan.output
    assert "INFO  [alembic" not in plan.output and "Running upgrade" not in plan.output
    deploy = run_cli("deploy", *args, cwd=fresh_project)
    assert deploy.returncode == 0, deploy.output
    assert deploy.stderr.count("Context impl PostgresqlImpl.") == 1, deploy.stderr
    assert deploy.stderr.count("Will assume transactional DDL.") == 1, deploy.stderr
    assert deploy.stderr.count("Running upgrade") == 2  # Alembic's progress, as it prints it
    status = run_cli("status", *args, cwd=fresh_project)
    assert status.stderr.count("Context impl") <= 1, status.stderr


def test_a_down_revision_typo_is_one_clear_line(fresh_project: Path, database: Database) -> None:
    second = fresh_project / "migrations" / "versions" / "0002.py"
    second.write_text(
        second.read_text().replace("down_revision = '0001'", "down_revision = '0001x'")
    )
    run = run_cli("status", "--database-url", database.url, cwd=fresh_project)
    assert run.returncode == 2, run.output
    assert "UserWarning" not in run.output and "site-packages" not in run.output
    assert "Revision 0001x referenced from 0001x -> 0002 (head), r0002 is not present" in run.stdout
    assert "KeyError" not in run.output


def test_a_missing_migrations_path_says_where_it_looked(
    fresh_project: Path, database: Database
) -> None:
    sub = fresh_project / "migrations" / "versions"
    run = run_cli("status", "--database-url", database.url, cwd=sub)
    assert run.returncode == 2, run.output
    assert f"looked for {sub / 'migrations'}" in run.stdout
    assert "--workspace" in run.stdout
    run = run_cli(
        "status", "--database-url", database.url, "--workspace", str(fresh_project), cwd=sub
    )
    assert run.returncode == 0, run.output


def test_several_heads_are_refused_with_exit_2(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    project.add("0001_users", *USERS)
    project.add("0002_a", "pass", down="0001_users")
    project.add("0002_b", "pass", down="0001_users")
    run = run_cli(
        "deploy",
        "--database-url",
        database.url,
        "--migrations-path",
        str(project.root),
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.output
    assert "refused" in run.stdout and "2 heads (0002_a, 0002_b)" in run.stdout
    assert untouched(database)


def test_restore_shows_verify_once(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    project.add("0001_users", *USERS)
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    assert run_cli("deploy", *args, cwd=tmp_path).returncode == 0
    backup = run_cli("backup", *args, "--backup-path", "b.dump", cwd=tmp_path)
    assert backup.returncode == 0, backup.output
    run = run_cli("restore", *args, "--backup-path", "b.dump", "--confirm-restore", database.name,
                  cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.output
    assert run.stderr.count("▶ verify") == 1, run.stderr


def test_paths_in_the_summary_and_report_are_relative_to_the_workspace(
    deploy: Callable[..., Run], github: GitHubRunner, make_project: Callable[..., AlembicProject]
) -> None:
    project = make_project("workspace/db")  # inside the workspace
    project.add("0001_users", *USERS)
    (project.root / "seed.py").write_text("def seed(connection):\n    pass\n")
    run = deploy(
        project, **{"migrations-path": "db", "run-seed": "true", "smoke-expect": "users>=2"}
    )
    assert run.returncode == 0, run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["migrate"]["script_location"] == "db"
    assert report["migrate"]["pending"][0]["path"] == "db/versions/0001_users.py"
    assert report["seed"]["path"] == "db/seed.py"
    assert [t["name"] for t in report["smoke"]["tables"]] == ["users"]  # not alembic_version
    summary = github.summary()
    assert "Script folder `db`" in summary and str(github.workspace) not in summary
    assert "1 tables checked" in summary


def test_a_python_warning_is_one_clean_line(
    project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    """A warning from the user's code (or a library) during the run: one line with its category
    and message, not Python's file path and source line."""
    project.add("0001_users", "warnings.warn('users.name will be dropped')\n" + USERS[0],
                imports="import warnings")  # fmt: skip
    args = ["--database-url", database.url, "--migrations-path", str(project.root)]
    run = run_cli("deploy", *args, cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert "warning: UserWarning: users.name will be dropped" in run.stderr
    assert "0001_users.py:" not in run.output and "warnings.warn(" not in run.output
