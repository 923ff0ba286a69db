"""The container action's harness: action.yml read and run the way the runner runs a container
action, minus Docker (see tests/test_action_contract.py for the sources it follows), and a small
project deployed through it. Shared by tests/test_action_contract.py, tests/test_python_action.py
and tests/image. Also the composite action's checkout (python/action.yml), for
tests/test_python_action.py and tests/apps."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO, AlembicProject, GitHubRunner, parse_env_file, write_alembic_project

ACTION_FILE = REPO / "action.yml"
SUMMARY_LIMIT = 1024 * 1024  # R FileCommandManager.cs AttachmentSizeLimit


def load_action(path: Path = ACTION_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the harness

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_INPUT_REF = re.compile(r"^inputs\.([A-Za-z_][\w-]*)$|^inputs\[\s*'([^']+)'\s*\]$")


def evaluate(template: str, inputs: Mapping[str, str]) -> str:
    """`${{ inputs.x }}` in runs.args / runs.env. Only the `inputs` context exists there
    (R action_yaml.json); property lookup is case-insensitive, a missing input is ""."""
    lowered = {k.lower(): v for k, v in inputs.items()}

    def substitute(m: re.Match[str]) -> str:
        ref = _INPUT_REF.match(m.group(1))
        if not ref:
            raise NotImplementedError(f"the harness evaluates only inputs.<name>: {m.group(0)!r}")
        return lowered.get((ref.group(1) or ref.group(2)).lower(), "")

    return _EXPRESSION.sub(substitute, template)


def input_env_name(name: str) -> str:
    """R Handler.cs AddInputsToEnvironment: only spaces become `_`; hyphens and dots stay."""
    return "INPUT_" + name.replace(" ", "_").upper()


@dataclass
class ActionStep:
    """One `uses:` step of a container action: `with:`, the env context, saved state."""

    action: dict[str, Any]
    with_: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> dict[str, Any]:
        return self.action["runs"]

    def check_supported(self) -> None:
        """What the runner would do with these keys is not modelled: fail loudly, not silently."""
        for key in ("entrypoint", "pre-entrypoint", "post-entrypoint"):
            if key in self.runs:
                raise NotImplementedError(f"runs.{key} is not modelled by the harness")
        if "entrypoint" in self.with_:
            raise NotImplementedError("with.entrypoint is not modelled by the harness")

    def unexpected_inputs(self) -> list[str]:
        """`Unexpected input(s) …` (a warning only; container actions always accept args and
        entryPoint, R ActionRunner.cs)."""
        declared = {k.lower() for k in self.action.get("inputs") or {}}
        return [k for k in self.with_ if k.lower() not in declared | {"args", "entrypoint"}]

    def inputs(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, spec in (self.action.get("inputs") or {}).items():
            if name in self.with_:
                values[name] = str(self.with_[name])
                continue
            default = str((spec or {}).get("default", ""))
            if "${{" in default:
                raise NotImplementedError(f"default expression of input {name!r} not modelled")
            values[name] = default
        for name in self.unexpected_inputs():  # warned about, still passed
            values[name] = str(self.with_[name])
        return values

    def environment(self, runner_vars: Mapping[str, str], home: str) -> dict[str, str]:
        """The `-e` variables of `docker run`, in the runner's order (R ActionRunner.cs,
        ContainerActionHandler.cs, DockerCommandManager.cs)."""
        env = dict(self.env)
        env.update({f"STATE_{k}": v for k, v in self.state.items()})
        inputs = self.inputs()
        env.update({input_env_name(k): v for k, v in inputs.items()})
        for key, value in (self.runs.get("env") or {}).items():
            if key not in env:  # runs.env never overrides
                env[key] = evaluate(str(value), inputs)
        env["HOME"] = home
        env.update(runner_vars)
        env["GITHUB_ACTIONS"] = "true"
        env.setdefault("CI", "true")
        return env

    def args(self) -> list[str]:
        """runs.args (evaluated, each one argument) win over with.args (passed raw)."""
        if "args" in self.runs:
            return [evaluate(str(a), self.inputs()) for a in self.runs["args"] or []]
        return shlex.split(str(self.with_.get("args", "")))


@dataclass(frozen=True)
class WorkflowCommand:
    name: str
    properties: dict[str, str]
    data: str


def _unescape(value: str, *, prop: bool) -> str:
    value = value.replace("%0D", "\r").replace("%0A", "\n")
    if prop:
        value = value.replace("%3A", ":").replace("%2C", ",")
    return value.replace("%25", "%")


def workflow_commands(text: str) -> list[WorkflowCommand]:
    """R Runner.Common/ActionCommand.cs TryParseV2, applied to every line of stdout/stderr."""
    found = []
    for line in text.splitlines():
        s = line.lstrip()
        if not s.startswith("::"):
            continue
        end = s.find("::", 2)
        if end < 0:
            continue
        name, _, props = s[2:end].partition(" ")
        properties = {}
        for item in filter(None, props.split(",")):
            key, _, value = item.partition("=")
            properties[key.lower()] = _unescape(value, prop=True)
        found.append(WorkflowCommand(name, properties, _unescape(s[end + 2 :], prop=False)))
    return found


@dataclass
class StepResult:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]
    env: dict[str, str]
    outputs: dict[str, str]
    exported_env: dict[str, str]
    saved_state: dict[str, str]
    added_paths: list[str]
    summary: str

    @property
    def log(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    @property
    def commands(self) -> list[WorkflowCommand]:
        return workflow_commands(self.stdout) + workflow_commands(self.stderr)


def read_file_commands(env: Mapping[str, str]) -> dict[str, Any]:
    """After the container exits (also after a failure: R ActionRunner.cs `finally`), the runner
    parses the files; a malformed GITHUB_OUTPUT/ENV/STATE fails the step (parse_env_file raises)."""

    def text(var: str) -> str:
        return Path(env[var]).read_text(encoding="utf-8")

    summary = text("GITHUB_STEP_SUMMARY")
    assert len(summary.encode("utf-8")) <= SUMMARY_LIMIT, "step summary over 1 MiB: not uploaded"
    return {
        "outputs": parse_env_file(text("GITHUB_OUTPUT")),
        "exported_env": parse_env_file(text("GITHUB_ENV")),
        "saved_state": parse_env_file(text("GITHUB_STATE")),
        "added_paths": [p for p in text("GITHUB_PATH").split("\n") if p.strip()],
        "summary": summary,
    }


def run_step(
    step: ActionStep,
    github: GitHubRunner,
    *,
    python: str = sys.executable,
    entrypoint: Path = REPO / "entrypoint.py",
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> StepResult:
    """`docker run --workdir /github/workspace -e … IMAGE ARGS` with ENTRYPOINT
    `["python", "/app/entrypoint.py"]`, minus Docker: the entrypoint runs in the workspace with the
    same variables and real file-command files."""
    step.check_supported()
    home = github.files.parent / "github_home"
    home.mkdir(exist_ok=True)
    runner_vars = {k: v for k, v in github.env.items() if k.startswith(("GITHUB_", "RUNNER_"))}
    # The process environment under the `-e` variables: what the image would define (PATH, …).
    base = {k: v for k, v in github.env.items() if k not in runner_vars}
    base.pop("PYTHONPATH", None)
    base.update(extra_env or {})
    env = {**base, **step.environment(runner_vars, str(home))}
    argv = [python, str(entrypoint), *step.args()]
    proc = subprocess.run(
        argv,
        cwd=github.workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    files = read_file_commands(env)
    return StepResult(proc.returncode, proc.stdout, proc.stderr, argv, env, **files)


# --------------------------------------------------------------------------- a small project


def write_project(workspace: Path, *, broken: bool = False) -> AlembicProject:
    """migrations/ in the workspace: pgvector, a table with a vector column, a seed."""
    project = write_alembic_project(workspace / "migrations")
    project.add(
        "0001_vector",
        'op.execute("CREATE EXTENSION IF NOT EXISTS vector")',
        'op.execute("DROP EXTENSION IF EXISTS vector")',
        message="enable pgvector",
    )
    project.add(
        "0002_connectors",
        """
        op.execute(
            "CREATE TABLE connectors (id serial PRIMARY KEY, name text UNIQUE NOT NULL, "
            "embedding vector(3))"
        )
        """,
        'op.execute("DROP TABLE connectors")',
        message="connector catalog",
    )
    if broken:
        project.add("0003_broken", 'op.execute("ALTER TABLE no_such_table ADD COLUMN x int")')
    (project.root / "seed.py").write_text(
        textwrap.dedent(
            """\
            import sqlalchemy as sa


            def seed(connection):
                connection.execute(sa.text(
                    "INSERT INTO connectors (name, embedding) VALUES "
                    "('gmail', '[1,0,0]'), ('slack', '[0,1,0]'), ('sms', '[0,0,1]') "
                    "ON CONFLICT (name) DO NOTHING"
                ))
            """
        )
    )
    return project


DEPLOY_INPUTS = {
    "migrations-path": "migrations",
    "run-seed": "true",
    "smoke-expect": "connectors>=3",
    "required-extensions": "vector",
}


def assert_deployed(outputs: dict[str, str], workspace: Path, *, report_root: Path | None = None):
    """The outputs of a first deploy of write_project(): shared with tests/image."""
    action_outputs = set(load_action()["outputs"])
    assert set(outputs) == action_outputs, "written outputs differ from action.yml's outputs"
    assert outputs["status"] == "success", outputs
    assert outputs["failed-step"] == ""
    assert outputs["error"] == ""
    assert outputs["previous-revision"] == ""
    assert outputs["current-revision"] == "0002_connectors"
    assert outputs["head-revision"] == "0002_connectors"
    assert outputs["applied-count"] == "2"
    applied = json.loads(outputs["applied"])
    assert [a["revision"] for a in applied] == ["0001_vector", "0002_connectors"]
    assert all(a["seconds"] >= 0 and a["description"] for a in applied)
    assert outputs["pending-count"] == "0"
    assert outputs["seeded"] == "true"
    assert int(outputs["smoke-tables"]) >= 1
    assert outputs["smoke-failed"] == "0"
    assert int(outputs["smoke-rows"]) >= 3
    assert float(outputs["duration-seconds"]) > 0
    # report-path: relative to the workspace (a later step sees the workspace at another path).
    report = Path(outputs["report-path"])
    if report.is_absolute() and report_root is not None:
        report = report_root / report.relative_to("/github/workspace")
    report = report if report.is_absolute() else workspace / report
    assert report.is_file(), f"report-path {outputs['report-path']!r} does not exist"
    data = json.loads(report.read_text(encoding="utf-8"))
    assert "schema_version" in data


# --------------------------------------------------------------------------- the composite's checkout

# What `uses: <owner>/db-deploy-action/python@v1` needs of the repository (python/action.yml).
ACTION_FILES = ("python", "deployer", "requirements.lock", "pyproject.toml", "README.md")


def checkout_composite(actions: Path, origin: Path = REPO) -> Path:
    """Where the runner puts `uses: <owner>/db-deploy-action/python@v1`: the repository at that
    ref in `<actions>/<owner>/<repo>/<ref>` (`actions`: a `_actions` folder apart from the
    workspace), as a snapshot of ACTION_FILES taken from `origin`, so the action under test
    cannot change between two of its runs. Returns the snapshot's python/action.yml."""
    root = actions / "acme" / "db-deploy-action" / "v1"
    for name in ACTION_FILES:
        source = origin / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root / "python" / "action.yml"
