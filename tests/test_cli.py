"""The command line: exit codes of the spec, one clear line on bad input, no traceback."""

from __future__ import annotations

import gc
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import AlembicProject, Database, GitHubRunner, Run, clean_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith("::error")]


def test_help_and_version(run_cli: Callable[..., Run]) -> None:
    run = run_cli("--help")
    assert run.returncode == 0
    for flag in (
        "--database-url",
        "--run-seed",
        "--no-run-seed",
        "--embedded",
        "--smoke-expect",
        "--summary-file",
        "--output-file",
        "--report-file",
        "deploy",
    ):
        assert flag in run.stdout
    assert run_cli("--version").stdout.startswith("db-deploy ")


def test_unknown_flag_is_exit_2(run_cli: Callable[..., Run]) -> None:
    run = run_cli("deploy", "--no-such-flag")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unrecognized arguments" in run.stderr


def test_missing_database_url(run_cli: Callable[..., Run], github: GitHubRunner) -> None:
    run = run_cli(env=github.env, cwd=github.workspace)
    assert run.returncode == 2
    [line] = error_lines(run)
    assert "no database" in line and "database-url" in line


def test_bad_input_is_one_annotation_without_secret(
    run_cli: Callable[..., Run], github: GitHubRunner
) -> None:
    env = github.with_inputs(
        **{"database-url": "postgresql://app:Sup3rS3cret@db.internal/shop", "run-seed": "perhaps"}
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2
    [line] = error_lines(run)
    assert "invalid run-seed" in line and "perhaps" in line
    assert "Sup3rS3cret" not in run.visible
    assert "::add-mask::Sup3rS3cret" in run.stdout  # masked before anything else
    assert run.stdout.startswith("::add-mask::")
    assert "Traceback" not in run.output


def test_malformed_url_masked_even_though_it_does_not_parse(
    run_cli: Callable[..., Run], github: GitHubRunner
) -> None:
    env = github.with_inputs(**{"database-url": "postgresql://app:Sup3rS3cret@db:port/shop"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2
    assert "malformed connection URL" in run.stdout
    assert "Sup3rS3cret" not in run.visible


def test_unreachable_host_retries_then_exit_3(
    run_cli: Callable[..., Run], github: GitHubRunner, project: AlembicProject
) -> None:
    project.add("0001", "pass")
    port = free_port()
    env = github.with_inputs(
        **{
            "database-url": f"postgresql://app:Pw-n0t-shown@127.0.0.1:{port}/shop",
            "connect-retries": "3",
            "connect-timeout": "1s",
            "migrations-path": str(project.root),
        }
    )
    started = time.monotonic()
    run = run_cli(env=env, cwd=github.workspace)
    elapsed = time.monotonic() - started
    assert run.returncode == 3
    assert f"cannot connect to 127.0.0.1:{port}/shop after 3 attempts" in run.stdout
    assert run.stdout.count("retrying in") == 2
    assert elapsed < 15  # within the retry budget: 2 waits of at most 0.5s and 1s, plus start-up
    assert "Pw-n0t-shown" not in run.visible
    assert github.outputs()["failed-step"] == "preflight"


def test_missing_database_is_exit_3_without_retry(
    run_cli: Callable[..., Run], database: Database, project: AlembicProject
) -> None:
    project.add("0001", "pass")
    url = database.url.replace(database.name, "no_such_db")
    run = run_cli("--database-url", url, "--migrations-path", str(project.root))
    assert run.returncode == 3
    assert 'database "no_such_db" does not exist' in run.stderr
    assert "retrying" not in run.stderr


@pytest.mark.parametrize(
    "layout,message",
    [
        ("missing", "migrations-path 'nowhere' does not exist"),
        ("empty", "holds no alembic.ini and no env.py"),
        ("broken_env", "env.py failed before migrating: ZeroDivisionError"),
        ("syntax", "syntax error in 0002_broken.py line"),
    ],
)
def test_broken_projects_are_exit_2(
    layout: str,
    message: str,
    run_cli: Callable[..., Run],
    database: Database,
    github: GitHubRunner,
    make_project: Callable[..., AlembicProject],
) -> None:
    path = "nowhere"
    if layout == "empty":
        (github.workspace / "empty").mkdir()
        path = "empty"
    elif layout in {"broken_env", "syntax"}:
        p = make_project(str(github.workspace / "migrations"))
        p.add("0001_ok", "op.create_table('t', sa.Column('id', sa.Integer))")
        if layout == "broken_env":
            env_py = p.root / "env.py"
            env_py.write_text("x = 1 / 0\n" + env_py.read_text())
        else:
            (p.versions / "0002_broken.py").write_text("revision = '0002'\ndown_revision = (\n")
        path = "migrations"
    env = github.with_inputs(**{"database-url": database.url, "migrations-path": path})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2, run.output
    [line] = error_lines(run)
    assert message in line
    assert database.tables() == set()
    assert "Traceback" not in run.output


@pytest.fixture
def pgdir() -> Path:
    """A folder the embedded server's user can reach (as root it runs as 'pgserver', and
    pytest's own tmp folders are private)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="dbd-t-", dir="/tmp"))
    path.chmod(0o755)
    yield path / "pg"
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_deploy(
    run_cli: Callable[..., Run], project: AlembicProject, tmp_path: Path, pgdir: Path
) -> None:
    project.add(
        "0001_t",
        "op.execute('CREATE EXTENSION IF NOT EXISTS vector')\n"
        "op.execute('CREATE TABLE t (id int, v vector(3))')",
    )
    env = clean_env()
    run = run_cli(
        "deploy",
        "--embedded",
        str(pgdir),
        "--migrations-path",
        str(project.root),
        "--required-extensions",
        "vector>=0.8",
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "✅ extension vector >= 0.8: 0.8" in run.stdout
    assert (pgdir / "PG_VERSION").exists()  # a named folder keeps its data


def test_embedded_failure_is_one_line(
    run_cli: Callable[..., Run], project: AlembicProject, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = run_cli(
        "--embedded", str(blocker / "pg"), "--migrations-path", str(project.root), cwd=tmp_path
    )
    assert run.returncode == 2
    assert "Traceback" not in run.output
    assert "cannot create the embedded server folder" in run.stderr
    assert "Not a directory" in run.stderr


def test_embedded_with_a_url_flag_is_refused(
    run_cli: Callable[..., Run], project: AlembicProject, database: Database, tmp_path: Path
) -> None:
    """--embedded and --database-url contradict (issue 16): refused, nothing started or
    changed (tests/test_first_hour.py: every URL flag and variable)."""
    project.add("0001_t", "op.execute('CREATE TABLE t (id int)')")
    run = run_cli(
        "--embedded",
        str(tmp_path / "pg"),
        "--database-url",
        database.url,
        "--migrations-path",
        str(project.root),
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.output
    assert "--embedded and --database-url contradict" in run.stderr
    assert database.tables() == set()
    assert not (tmp_path / "pg").exists()


def test_entrypoint_shim_runs_the_same_main(tmp_path: Path, run_cli: Callable[..., Run]) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(repo / "entrypoint.py"), "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("db-deploy ")
    assert proc.stdout.strip() == run_cli("--version").stdout.strip()


def test_process_entry_point_collects_garbage_as_alembic_does(
    run_cli: Callable[..., Run], database: Database, project: AlembicProject, tmp_path: Path
) -> None:
    """`db-deploy` (console_main) starts with the collector off and the start-up heap then
    frozen; env.py and the revisions run with it on, as under bare Alembic, and what they leave
    in reference cycles is still finalized at exit (a file they left open is flushed)."""
    probe = (
        "assert gc.isenabled(), 'collector off in user code'\n"
        "assert gc.get_freeze_count() > 10000, 'start-up heap not frozen'\n"
        "op.create_table('a', sa.Column('id', sa.Integer))"
    )
    marker = tmp_path / "finalized.txt"
    left_open = (
        "class _Held:\n"
        "    def __init__(self):\n"
        "        self.me = self  # a reference cycle: only the collector frees it\n"
        f"        self.file = open({str(marker)!r}, 'w')\n"
        "        self.file.write('flushed at exit')\n"
        "_HELD = _Held()\n"
    )
    project.add("0001_a", probe, imports=f"import gc\n{left_open}")
    report = tmp_path / "report.json"
    run = run_cli(
        "--database-url",
        database.url,
        "--migrations-path",
        str(project.root),
        "--report-file",
        str(report),
    )
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    assert json.loads(report.read_text())["status"] == "success"
    assert marker.read_text() == "flushed at exit"


def test_main_called_in_process_leaves_the_collector_alone(
    clean_environ: pytest.MonkeyPatch, database: Database, tmp_path: Path
) -> None:
    """A whole run through the pipeline (where the process entry point freezes the heap)."""
    from deployer.cli import main

    clean_environ.chdir(tmp_path)
    frozen = gc.get_freeze_count()
    assert main(["smoke", "--database-url", database.url, "--report-file", "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "success"
    assert gc.isenabled() and gc.get_freeze_count() == frozen


@pytest.mark.parametrize(
    "query,message",
    [
        ("foo=bar", 'invalid connection option "foo"'),
        ("sslmode=bogus", "invalid sslmode value"),
    ],
)
def test_bad_connection_options_are_exit_2(
    query: str,
    message: str,
    database: Database,
    project: AlembicProject,
    run_cli: Callable[..., Run],
    github: GitHubRunner,
) -> None:
    project.add("0001", "pass")
    env = github.with_inputs(
        **{"database-url": f"{database.url}&{query}", "migrations-path": str(project.root)}
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2, run.output
    [line] = error_lines(run)
    assert "invalid connection settings" in line and message in line
    assert "sqlalche.me" not in run.output and "internal error" not in run.output


def test_outputs_are_written_even_when_the_settings_are_refused(
    run_cli: Callable[..., Run], github: GitHubRunner
) -> None:
    env = github.with_inputs(**{"run-seed": "perhaps"})
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 2
    out = github.outputs()
    assert out["status"] == "failed" and out["failed-step"] == "config"
    assert "invalid run-seed" in out["error"]
    assert "invalid run-seed" in github.summary()
    assert len(error_lines(run)) == 1


def test_commands_import_only_what_they_use(database: Database, tmp_path: Path) -> None:
    """`smoke` loads no migrations folder, so it does not pay for importing Alembic (~0.1 s);
    `deploy` modes it does not run (backup, restore, drift, rollback) are not imported either.
    Run through the process entry point, which imports ahead what a command will use."""
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "from deployer.cli import console_main\n"
        "code = console_main()\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'deployer'))\n"
        "print(json.dumps({'code': code, 'modules': mods}))\n"
    )

    def loaded(*args: str) -> tuple[int, set[str]]:
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args],
            env=clean_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return data["code"], set(data["modules"])

    code, modules = loaded("smoke", "--database-url", database.url)
    assert code == 0
    assert not {m for m in modules if m.startswith("alembic")}
    assert "deployer.steps.smoke" in modules and "deployer.alembic_project" not in modules

    project = tmp_path / "migrations"
    from tests.helpers import write_alembic_project

    write_alembic_project(project).add(
        "0001_a", "op.create_table('a', sa.Column('id', sa.Integer))"
    )
    code, modules = loaded(
        "deploy", "--database-url", database.url, "--migrations-path", str(project)
    )
    assert code == 0
    assert "alembic" in modules
    unused = {"deployer.steps.backup", "deployer.steps.restore", "deployer.steps.drift"}
    assert not unused & modules, unused & modules
    assert not {"deployer.steps.rollback", "deployer.pgtools"} & modules


# --------------------------------------------------------------------------- parsing


def _parsed(*argv: str) -> dict[str, object]:
    from deployer.cli import build_parser

    return vars(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "argv,command,run_seed",
    [
        (["--run-seed"], None, True),
        (["--run-seed", "true"], None, True),
        (["--run-seed", "false"], None, False),
        (["--run-seed", "NO", "plan"], "plan", False),
        (["--run-seed=yes"], None, True),
        (["--run-seed", "deploy"], "deploy", True),  # bare before a command: the command stays
        (["seed", "--run-seed"], "seed", True),
        (["--no-run-seed"], None, False),
        (["--no-run-seed", "status"], "status", False),
        ([], None, False),
    ],
)
def test_boolean_flags_take_a_value_or_stand_alone(
    clean_environ: pytest.MonkeyPatch, argv: list[str], command: str | None, run_seed: bool
) -> None:
    from deployer.settings import load_settings

    args = _parsed(*argv)
    assert args.pop("command_arg") == command
    assert load_settings(args).run_seed is run_seed


def test_every_setting_has_a_flag_of_its_name() -> None:
    from deployer.cli import build_parser
    from deployer.settings import Settings

    flags = {s for a in build_parser()._actions for s in a.option_strings}
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in flags, name
        if field.annotation is bool:
            assert f"--no-{name.replace('_', '-')}" in flags, name


def test_a_flag_wins_over_the_input_and_the_environment(clean_environ: pytest.MonkeyPatch) -> None:
    from deployer.settings import load_settings

    clean_environ.setenv("INPUT_DRY-RUN", "true")
    clean_environ.setenv("DB_DEPLOY_DRY_RUN", "true")
    args = _parsed("--dry-run", "false", "--lock-timeout", "2s")
    s = load_settings(args)
    assert s.dry_run is False and s.lock_timeout == 2.0
    assert load_settings(_parsed()).dry_run is True


def test_a_bad_boolean_flag_value_is_one_line_exit_2(run_cli: Callable[..., Run]) -> None:
    run = run_cli("--run-seed", "perhaps", "--database-url", "postgresql://u:p@h/db")
    assert run.returncode == 2
    assert "invalid run-seed: expected true/false/1/0/yes/no, got 'perhaps'" in run.output
    assert "Traceback" not in run.output


def test_raw_secret_values_come_from_every_alias_of_the_secret_settings() -> None:
    from deployer.cli import raw_secret_values

    environ = {
        "INPUT_DATABASE-URL": "postgresql://a:pw-one@h/db",
        "INPUT_DIRECT_DATABASE_URL": "postgresql://a:pw-two@h/db",
        "SLACK_WEBHOOK_URL": "https://hooks.example/T/B/pw-three",
        "DB_DEPLOY_SCRATCH_DATABASE_URL": "postgresql://a:pw-four@h/db",
        "INPUT_TARGET": "not-a-secret",
    }
    found = raw_secret_values(environ)
    for secret in ("pw-one", "pw-two", "https://hooks.example/T/B/pw-three", "pw-four"):
        assert secret in found
    assert "not-a-secret" not in found
