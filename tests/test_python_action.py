"""The composite action `python/action.yml`: the same `db-deploy` in the job's own Python.

It must be interchangeable with the container action (`action.yml`): the same inputs and outputs
(compared here), every input reaching the deployer under a name it reads, and a real deploy that
writes the outputs. A small harness runs the composite's `run:` steps the way the runner runs a
composite action, read from actions/runner @258d6c8:

- `src/Runner.Worker/Handlers/CompositeActionHandler.cs`: the steps run in order with the
  `inputs` context (the `with:` value, else the evaluated `default:`), the `steps` context of the
  composite's own steps, and `github.action_path` set to the action's folder (also exported as
  GITHUB_ACTION_PATH); the calling step's `env:` reaches every inner step; inputs are NOT exported
  as INPUT_* variables (only container and JavaScript actions get those, Handler.cs
  AddInputsToEnvironment); after the steps, failed or not, the `outputs.*.value` expressions are
  evaluated (ProcessOutputs), so the outputs of a failed deploy still reach the workflow.
- `src/Runner.Worker/FileCommandManager.cs`: each step gets its own GITHUB_OUTPUT/ENV/PATH/STATE/
  STEP_SUMMARY files, parsed after the step (tests/conftest.py `parse_env_file`).
- `src/Runner.Worker/Handlers/ScriptHandlerHelpers.cs`: `shell: bash` runs
  `bash --noprofile --norc -e -o pipefail {0}` on the script written to a file in RUNNER_TEMP, in
  the workspace.
- `src/Runner.Worker/Handlers/StepHost.cs` (ContainerStepHost): in a job with `container:`, env
  values are translated from host to container paths, `run:` text is not. That is why the action
  reads `${{ github.action_path }}` and `${{ runner.temp }}` through `env:` only (actions/runner
  issues 716 and 2185: `github.action_path` inside `run:` is the host's path in container jobs).

The harness evaluates only what the action uses (`inputs.*`, `toJSON(inputs)`,
`github.action_path`, `runner.temp`, `steps.<id>.outputs.<name>`) and only in `env:` values;
anything else (`uses:` steps, `if:`, an expression inside `run:`) is refused, never silently
ignored.

The "job's Python" is real: a standalone copy of the interpreter the tests run on (what
actions/setup-python puts on PATH: a plain CPython, not a virtual environment), or a virtual
environment (what uv or poetry leave behind), each holding an application installed from a wheel
that the deployed project's env.py and seed import.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, Database, GitHubRunner, parse_env_file
from tests.helpers.action import (
    DEPLOY_INPUTS,
    assert_deployed,
    checkout_composite,
    workflow_commands,
    write_project,
)

PYTHON_ACTION = REPO / "python" / "action.yml"
CONTAINER_ACTION = REPO / "action.yml"
EXAMPLE_WORKFLOW = REPO / ".github" / "workflows" / "db-deploy-python.yml"
BIN = Path(sys.executable).parent
PY_VERSION = ".".join(str(p) for p in sys.version_info[:3])


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def composite_step(step_id: str) -> dict[str, Any]:
    return next(s for s in load(PYTHON_ACTION)["runs"]["steps"] if s.get("id") == step_id)


# --------------------------------------------------------------------------- (a) same interface


def test_same_inputs_as_the_container_action():
    """Names, descriptions, `required` and defaults, in the same order: the two actions are
    interchangeable in a workflow, and actionlint checks `with:` against either file."""
    container, composite = load(CONTAINER_ACTION), load(PYTHON_ACTION)
    assert composite["inputs"] == container["inputs"]
    assert list(composite["inputs"]) == list(container["inputs"])


def test_same_outputs_as_the_container_action():
    container, composite = load(CONTAINER_ACTION), load(PYTHON_ACTION)
    assert list(composite["outputs"]) == list(container["outputs"])
    for name, spec in composite["outputs"].items():
        assert {k: v for k, v in spec.items() if k != "value"} == container["outputs"][name]
        # A composite's outputs are expressions over its steps (D metadata-syntax
        # outputs.<id>.value): each is what db-deploy wrote in the deploy step.
        assert spec["value"] == f"${{{{ steps.deploy.outputs.{name} }}}}", name


def test_the_composite_is_a_composite_of_bash_steps_that_call_python():
    """The logic is in deployer/bootstrap.py: each step's script ends by handing over to it
    (finding the job's `python` is the only thing bash does)."""
    composite = load(PYTHON_ACTION)
    assert composite["runs"]["using"] == "composite"
    steps = composite["runs"]["steps"]
    assert [s["id"] for s in steps] == ["install", "deploy"]
    for step in steps:
        assert step["shell"] == "bash", "a composite's run step must name its shell"
        assert "${{" not in step["run"], f"{step['id']}: expressions go through env:, not run:"
    last = [s["run"].strip().splitlines()[-1] for s in steps]
    assert last == [
        'exec "$python" -I "$DB_DEPLOY_ACTION_ROOT/deployer/bootstrap.py" install',
        'exec "$DB_DEPLOY_ACTION_PYTHON" -I -m deployer.bootstrap run',
    ]


# --------------------------------------------------------------------------- (b) inputs reach it


def test_every_input_reaches_db_deploy_under_a_name_the_deployer_reads():
    """Composite inputs are not exported as INPUT_* (R CompositeActionHandler.cs): the deploy step
    hands them over at once, `DB_DEPLOY_ACTION_INPUTS: ${{ toJSON(inputs) }}`, and
    deployer/bootstrap.py sets each as the runner does for a container action
    (`INPUT_DATABASE-URL`): the first spelling the deployer reads for that setting, and one no
    other setting reads."""
    from deployer.bootstrap import INPUTS_VARIABLE, input_variable
    from deployer.settings import Settings, env_names, input_fields

    assert composite_step("deploy")["env"][INPUTS_VARIABLE] == "${{ toJSON(inputs) }}"
    inputs = load(CONTAINER_ACTION)["inputs"]
    fields = input_fields()
    assert set(fields) == set(inputs)
    readers: dict[str, set[str]] = {}
    for name in Settings.model_fields:
        for variable in env_names(name):
            readers.setdefault(variable, set()).add(name)
    for name in inputs:
        variable = input_variable(name)
        assert variable == "INPUT_" + name.upper(), "the runner keeps the hyphens"
        assert env_names(fields[name])[0] == variable, name
        assert readers[variable] == {fields[name]}, name


def test_inputs_appear_only_in_the_deploy_steps_env():
    """Secrets and user text reach the scripts as environment variables only: never interpolated
    into a script (template injection) nor onto a command line (visible in `ps`)."""
    text = PYTHON_ACTION.read_text(encoding="utf-8")
    runs_text = text[text.index("\nruns:") :]
    composite = load(PYTHON_ACTION)
    for step in composite["runs"]["steps"]:
        assert "inputs" not in step["run"]
        if step["id"] != "deploy":
            assert "inputs" not in json.dumps(step.get("env", {})), step["id"]
    mentions = re.findall(r"\$\{\{[^}]*\binputs\b[^}]*\}\}", runs_text)
    assert mentions == ["${{ toJSON(inputs) }}"], "all inputs once, in the deploy step's env"


def test_the_actions_own_variables_are_not_deployer_settings():
    """The steps' helper variables must not be read by the deployer as settings (and
    bootstrap.run drops them before db-deploy starts)."""
    from deployer.settings import Settings, env_names

    settings_env = {variable for name in Settings.model_fields for variable in env_names(name)}
    for step in load(PYTHON_ACTION)["runs"]["steps"]:
        for key in step.get("env", {}):
            assert key.startswith("DB_DEPLOY_ACTION_"), key
            assert key not in settings_env, key


# --------------------------------------------------------------------------- the harness

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_INPUT = re.compile(r"inputs\.([A-Za-z_][\w-]*)")
_STEP_OUTPUT = re.compile(r"steps\.([A-Za-z_][\w-]*)\.outputs\.([A-Za-z_][\w-]*)")
_STEP_KEYS = {"name", "id", "shell", "env", "run"}
_FILE_COMMANDS = {
    "GITHUB_OUTPUT": "set_output_",
    "GITHUB_ENV": "set_env_",
    "GITHUB_PATH": "add_path_",
    "GITHUB_STATE": "save_state_",
    "GITHUB_STEP_SUMMARY": "step_summary_",
}


@dataclass
class Contexts:
    inputs: dict[str, str]
    action_path: str
    runner_temp: str
    steps: dict[str, dict[str, str]] = field(default_factory=dict)


def evaluate(template: str, ctx: Contexts) -> str:
    """The expressions the action uses. An undeclared input is a bug here (the runner would give
    ""); a step that did not run has no outputs (""); anything else is not modelled."""

    def substitute(m: re.Match[str]) -> str:
        expr = m.group(1)
        if match := _INPUT.fullmatch(expr):
            lowered = {k.lower(): v for k, v in ctx.inputs.items()}
            return lowered[match.group(1).lower()]
        if expr == "toJSON(inputs)":  # the runner's toJSON: indented JSON of the context
            return json.dumps(ctx.inputs, indent=2)
        if expr == "github.action_path":
            return ctx.action_path
        if expr == "runner.temp":
            return ctx.runner_temp
        if match := _STEP_OUTPUT.fullmatch(expr):
            return ctx.steps.get(match.group(1), {}).get(match.group(2), "")
        raise NotImplementedError(f"the harness does not evaluate {m.group(0)!r}")

    return _EXPRESSION.sub(substitute, template)


@dataclass
class StepRun:
    id: str
    returncode: int
    stdout: str
    stderr: str
    env: dict[str, str]
    outputs: dict[str, str]
    summary: str

    @property
    def log(self) -> str:
        return f"[{self.id}] exit {self.returncode}\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class CompositeRun:
    returncode: int
    steps: list[StepRun]
    outputs: dict[str, str]

    def step(self, step_id: str) -> StepRun:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def log(self) -> str:
        return "\n".join(s.log for s in self.steps)

    @property
    def text(self) -> str:
        return "\n".join(s.stdout + "\n" + s.stderr for s in self.steps)


def run_composite(
    github: GitHubRunner,
    *,
    with_: Mapping[str, str],
    job_python: Path,
    runner_temp: Path,
    step_env: Mapping[str, str] | None = None,
    action_file: Path = PYTHON_ACTION,
    timeout: float = 600,
) -> CompositeRun:
    """`- uses: <owner>/db-deploy-action/python@v1` with `with_` and the step's `env:`, in a job
    whose PATH starts with the folder of `job_python` (what actions/setup-python does)."""
    action = load(action_file)
    unknown = set(with_) - set(action["inputs"])
    assert not unknown, f"inputs the action does not declare: {unknown}"
    inputs = {
        name: str(with_[name]) if name in with_ else str((spec or {}).get("default", ""))
        for name, spec in action["inputs"].items()
    }
    action_path = str(action_file.parent)
    ctx = Contexts(inputs=inputs, action_path=action_path, runner_temp=str(runner_temp))
    runner_temp.mkdir(parents=True, exist_ok=True)

    base = {k: v for k, v in github.env.items() if k not in _FILE_COMMANDS}
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        base.pop(var, None)
    base["PATH"] = f"{job_python.parent}{os.pathsep}{base.get('PATH', os.defpath)}"
    base["RUNNER_TEMP"] = str(runner_temp)
    base["GITHUB_ACTION_PATH"] = action_path
    base.update(step_env or {})

    runs: list[StepRun] = []
    failed = 0
    for step in action["runs"]["steps"]:
        extra = set(step) - _STEP_KEYS
        if extra or "run" not in step:
            raise NotImplementedError(f"step keys not modelled by the harness: {extra or 'uses'}")
        assert step["shell"] == "bash"
        assert "${{" not in step["run"], "the runner would interpolate into the script"
        if failed:
            continue  # no `if:` in the action: a failed step skips the rest
        guid = uuid.uuid4()
        files = {var: github.files / f"{prefix}{guid}" for var, prefix in _FILE_COMMANDS.items()}
        for path in files.values():
            path.touch()
        env = {**base, **{var: str(path) for var, path in files.items()}}
        env.update({k: evaluate(str(v), ctx) for k, v in (step.get("env") or {}).items()})
        script = runner_temp / f"{guid}.sh"
        script.write_text(step["run"], encoding="utf-8")
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(script)],
            cwd=github.workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        outputs = parse_env_file(files["GITHUB_OUTPUT"].read_text(encoding="utf-8"))
        ctx.steps[step["id"]] = outputs
        summary = files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8")
        runs.append(
            StepRun(step["id"], proc.returncode, proc.stdout, proc.stderr, env, outputs, summary)
        )
        failed = failed or proc.returncode
    outputs = {name: evaluate(spec["value"], ctx) for name, spec in action["outputs"].items()}
    return CompositeRun(failed, runs, outputs)


def test_harness_refuses_what_it_does_not_model(tmp_path: Path, github: GitHubRunner):
    ctx = Contexts(inputs={"Database-URL": "u"}, action_path="/a", runner_temp="/t")
    assert evaluate("${{ inputs.database-url }}|${{ runner.temp }}/x", ctx) == "u|/t/x"
    assert evaluate("${{ steps.nope.outputs.x }}", ctx) == ""
    assert json.loads(evaluate("${{ toJSON(inputs) }}", ctx)) == {"Database-URL": "u"}
    with pytest.raises(NotImplementedError):
        evaluate("${{ github.token }}", ctx)
    action = load(PYTHON_ACTION)
    action["runs"]["steps"][0]["if"] = "always()"
    odd = tmp_path / "python" / "action.yml"
    odd.parent.mkdir()
    odd.write_text(yaml.safe_dump(action), encoding="utf-8")
    with pytest.raises(NotImplementedError):
        run_composite(
            github, with_={}, job_python=Path(sys.executable), runner_temp=tmp_path / "t",
            action_file=odd,
        )  # fmt: skip


# --------------------------------------------------------------------------- the job's Python


def build_app_wheel(folder: Path) -> Path:
    """The user's application as a wheel (`pip install` of it is what a job does): `shopapp`,
    with a catalog the deployed project's env.py and seed import."""
    name, version = "shopapp", "1.0.0"
    dist = f"{name}-{version}.dist-info"
    files = {
        "shopapp/__init__.py": '"""A stand-in for the application a job installs."""\n',
        "shopapp/catalog.py": 'CONNECTORS = ("gmail", "slack", "sms")\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def pip_install(python: Path, wheel: Path) -> None:
    """`pip install <wheel>` into `python` (pip's --python: the target needs no pip of its own)."""
    argv = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    proc = subprocess.run([*argv, "--no-index", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def probe(python: Path, code: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=clean)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def copy_interpreter(dest: Path) -> Path:
    """A plain CPython in `dest`, like the one actions/setup-python puts on PATH: the tests' base
    interpreter and its standard library, with an empty site-packages of its own."""
    base = Path(sys.base_prefix)
    xy = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = base / "lib" / xy
    assert (stdlib / "os.py").is_file(), f"unexpected layout of {base}"
    skip = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in skip] if Path(folder) == stdlib else []

    shutil.copytree(stdlib, dest / "lib" / xy, ignore=ignore, symlinks=True)
    (dest / "lib" / xy / "site-packages").mkdir()
    for lib in (base / "lib").glob("libpython*"):
        shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=False)
    (dest / "bin").mkdir()
    shutil.copy2(
        Path(getattr(sys, "_base_executable", sys.executable)).resolve(), dest / "bin" / xy
    )
    for alias in ("python3", "python"):
        (dest / "bin" / alias).symlink_to(xy)
    python = dest / "bin" / "python"
    prefix, base_prefix = probe(
        python, "import sys; print(sys.prefix); print(sys.base_prefix)"
    ).split("\n")
    assert Path(prefix) == Path(base_prefix) == dest, "the copy must be a plain interpreter"
    return python


@pytest.fixture(scope="module")
def action_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runner's checkout of `uses: <owner>/db-deploy-action/python@v1` (a snapshot, so the
    action under test cannot change between two calls of one test): its python/action.yml."""
    return checkout_composite(tmp_path_factory.mktemp("_actions"))


@pytest.fixture(scope="module")
def app_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_app_wheel(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="module")
def job_python(tmp_path_factory: pytest.TempPathFactory, app_wheel: Path) -> Path:
    """actions/setup-python, then the user's `pip install` of the application."""
    python = copy_interpreter(tmp_path_factory.mktemp("toolcache") / "x64")
    pip_install(python, app_wheel)
    where = probe(python, "import shopapp; print(shopapp.__file__)")
    assert Path(where).is_relative_to(python.parent.parent)
    return python


@pytest.fixture(scope="module")
def job_runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TEMP of one job: shared by the tests that use `job_python`, as by the steps of a
    job, so a second call of the action reuses the deployer's environment."""
    return tmp_path_factory.mktemp("runner_temp")


def write_app_project(workspace: Path, **kw: bool) -> None:
    """write_project(), whose env.py and seed import the application, as real projects do."""
    project = write_project(workspace, **kw)
    env_py = project.root / "env.py"
    env_py.write_text(
        "import shopapp.catalog  # the application (target_metadata, in real projects)\n"
        + env_py.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    (project.root / "seed.py").write_text(
        "import sqlalchemy as sa\n"
        "from shopapp.catalog import CONNECTORS\n\n\n"
        "def seed(connection):\n"
        "    for name in CONNECTORS:\n"
        "        connection.execute(\n"
        "            sa.text('INSERT INTO connectors (name) VALUES (:n) ON CONFLICT DO NOTHING'),\n"
        "            {'n': name},\n"
        "        )\n",
        encoding="utf-8",
    )


def deployer_venv(runner_temp: Path) -> Path:
    return runner_temp / "db-deploy-action" / "venv"


def assert_no_secret_in_logs(run: CompositeRun, secret: str) -> None:
    for line in run.text.splitlines():
        if secret in line:
            assert line.lstrip().startswith("::add-mask::"), f"unmasked secret in: {line!r}"
    assert secret in {c.data for c in workflow_commands(run.step("deploy").stdout)}
    assert all(secret not in v for v in run.outputs.values())


# --------------------------------------------------------------------------- (c) real deploys


@pytest.mark.slow
def test_deploy_in_the_jobs_python(
    github: GitHubRunner,
    database: Database,
    action_checkout: Path,
    job_python: Path,
    job_runner_temp: Path,
    tmp_path: Path,
):
    """The app installed in the job's (plain) Python is importable by env.py and the seed; the
    deploy writes every output; a second call in the same job reuses the environment."""
    password = "pw-Composite-9fQ2"
    url = database.url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    write_app_project(github.workspace)
    run = run_composite(
        github,
        with_={"database-url": url, **DEPLOY_INPUTS},
        job_python=job_python,
        runner_temp=job_runner_temp,
        action_file=action_checkout,
    )
    assert run.returncode == 0, run.log
    install = run.step("install")
    assert f"db-deploy runs on the job's Python {PY_VERSION}: {job_python}\n" in install.stdout
    assert install.env["DB_DEPLOY_ACTION_ROOT"] == f"{action_checkout.parent}/.."
    deploy = run.step("deploy")
    assert set(deploy.outputs) == set(load(CONTAINER_ACTION)["outputs"]), "written = declared"
    assert run.outputs == deploy.outputs
    assert_deployed(run.outputs, github.workspace)
    assert "success" in deploy.summary.lower()
    assert database.scalar("SELECT count(*) FROM connectors") == 3
    assert database.version() == {"0002_connectors"}
    assert_no_secret_in_logs(run, password)
    assert json.loads(deploy.env["DB_DEPLOY_ACTION_INPUTS"])["database-url"] == url
    assert not any(k.startswith("INPUT_") for k in deploy.env), "set by bootstrap.run only"

    # What made the app importable: a venv over the job's Python with its site-packages…
    venv = deployer_venv(job_runner_temp)
    cfg = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    assert re.search(r"^include-system-site-packages = true$", cfg, re.M)
    assert Path(install.outputs["bin"]) == venv / "bin"
    assert Path(install.outputs["python"]) == venv / "bin" / "python"
    assert not list(venv.glob("lib/*/site-packages/_db_deploy_job_python.pth")), "plain Python"
    where = probe(venv / "bin" / "python", "import shopapp, deployer; print(shopapp.__file__)")
    assert Path(where).is_relative_to(job_python.parent.parent)
    # …and what the job's Python lacks (here every locked package) from that venv.
    alembic = probe(venv / "bin" / "python", "import alembic; print(alembic.__file__)")
    assert Path(alembic).is_relative_to(venv)
    # Without the system site-packages the application would not be found (a negative control).
    bare = tmp_path / "bare-venv"
    subprocess.run([str(job_python), "-m", "venv", "--without-pip", str(bare)], check=True)
    check = subprocess.run(
        [str(bare / "bin" / "python"), "-c", "import shopapp"], capture_output=True
    )
    assert check.returncode != 0 and b"No module named 'shopapp'" in check.stderr

    # The same job calls the action again, the URL in the step's env this time: reused, noop.
    again = run_composite(
        github,
        with_=DEPLOY_INPUTS,
        step_env={"DATABASE_URL": database.url},
        job_python=job_python,
        runner_temp=job_runner_temp,
        action_file=action_checkout,
    )
    assert again.returncode == 0, again.log
    assert "Reusing the deployer's environment" in again.step("install").stdout
    assert "Locked runtime dependencies" not in again.step("install").stdout
    assert json.loads(again.step("deploy").env["DB_DEPLOY_ACTION_INPUTS"])["database-url"] == ""
    assert again.outputs["status"] == "noop"
    assert again.outputs["applied-count"] == "0"


@pytest.mark.slow
def test_a_failed_migration_exits_1_and_the_outputs_still_reach_the_workflow(
    github: GitHubRunner,
    database: Database,
    action_checkout: Path,
    job_python: Path,
    job_runner_temp: Path,
):
    """R CompositeActionHandler.cs evaluates the outputs after the steps, a failed one included."""
    write_app_project(github.workspace, broken=True)
    run = run_composite(
        github,
        with_={"database-url": database.url, **DEPLOY_INPUTS},
        job_python=job_python,
        runner_temp=job_runner_temp,
        action_file=action_checkout,
    )
    assert run.returncode == 1, run.log
    assert run.step("deploy").returncode == 1
    assert run.outputs["status"] == "failed"
    assert run.outputs["failed-step"] == "migrate"
    assert "no_such_table" in run.outputs["error"]
    assert any(c.name == "error" for c in workflow_commands(run.step("deploy").stdout))
    assert "0003_broken" not in database.version()


@pytest.mark.slow
def test_a_job_python_that_is_a_virtual_environment(
    github: GitHubRunner, database: Database, action_checkout: Path, app_wheel: Path, tmp_path: Path
):
    """uv, poetry or an activated venv: `python` on PATH is a virtual environment, whose own
    site-packages --system-site-packages does not reach; the action adds them after its own."""
    app_venv = tmp_path / "app-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(app_venv)], check=True)
    python = app_venv / "bin" / "python"
    pip_install(python, app_wheel)
    write_app_project(github.workspace)
    runner_temp = tmp_path / "runner_temp"
    run = run_composite(
        github,
        with_={"database-url": database.url, **DEPLOY_INPUTS},
        step_env={"VIRTUAL_ENV": str(app_venv)},
        job_python=python,
        runner_temp=runner_temp,
        action_file=action_checkout,
    )
    assert run.returncode == 0, run.log
    assert_deployed(run.outputs, github.workspace)
    assert "The job's Python is a virtual environment" in run.step("install").stdout
    venv = deployer_venv(runner_temp)
    (pth,) = venv.glob("lib/*/site-packages/_db_deploy_job_python.pth")
    site_packages = probe(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    assert repr(site_packages) in pth.read_text(encoding="utf-8")
    order = json.loads(
        probe(venv / "bin" / "python", "import sys, json; print(json.dumps(sys.path))")
    )
    own = next(i for i, p in enumerate(order) if Path(p).is_relative_to(venv))
    assert own < order.index(site_packages), "what the action installs comes first"
    # The job's venv holds none of the locked packages; its base interpreter does (other
    # versions of pydantic, certifi…), but the job does not see them: every locked
    # distribution resolves from the deployer's environment at its locked version.
    locked = dict(
        re.findall(
            r"^([A-Za-z0-9._-]+)==(\S+)",
            (action_checkout.parents[1] / "requirements.lock").read_text(),
            re.M,
        )
    )
    code = (
        "import json, sys\nfrom importlib import metadata\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({n: [metadata.version(n), str(metadata.distribution(n).locate_file(''))]"
        " for n in names}))"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, json.dumps(sorted(locked))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for name, (version, location) in json.loads(proc.stdout).items():
        assert version == locked[name], name
        assert Path(location).is_relative_to(venv), f"{name} comes from {location}"


def pinned_job_python(folder: Path, app_wheel: Path, *requirements: str) -> Path:
    """actions/setup-python, then an application that pins its own SQLAlchemy and Alembic
    (`pip install shopapp SQLAlchemy==… alembic==…`, their dependencies included)."""
    python = copy_interpreter(folder)
    pip_install(python, app_wheel)
    argv = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    argv += ["--disable-pip-version-check", "--only-binary=:all:", *requirements]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def write_version_probe(workspace: Path) -> Path:
    """env.py (run for the plan, the migration, the status…) and the seed record the versions
    of SQLAlchemy and Alembic they run with, and where these come from."""
    record = workspace / "versions.jsonl"
    probe_code = (
        "import json as _json, alembic as _alembic, sqlalchemy as _sa\n"
        f"with open({str(record)!r}, 'a', encoding='utf-8') as _out:\n"
        "    _out.write(_json.dumps({'sqlalchemy': [_sa.__version__, _sa.__file__], "
        "'alembic': [_alembic.__version__, _alembic.__file__]}) + '\\n')\n"
    )
    for name in ("env.py", "seed.py"):
        path = workspace / "migrations" / name
        path.write_text(probe_code + path.read_text(encoding="utf-8"), encoding="utf-8")
    return record


def locked_versions() -> dict[str, str]:
    lock = (REPO / "requirements.lock").read_text(encoding="utf-8")
    return {n.lower(): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock, re.M)}


@pytest.mark.slow
def test_the_applications_own_sqlalchemy_and_alembic_win(
    github: GitHubRunner, database: Database, action_checkout: Path, app_wheel: Path, tmp_path: Path
):
    """An application pinning other versions than requirements.lock (the oldest supported
    ones, deployer/compat.py's floors) deploys with its own: the action installs into its
    environment only what the job's Python lacks, so env.py, the revisions and the seed import
    the application's SQLAlchemy and Alembic, and the deployer its psycopg. A package the
    deployer needs newer than the application's (its pydantic-settings needs a newer pydantic)
    comes from the lock after all, found by `pip check`."""
    from deployer.compat import SUPPORTED

    pins = {spec.name.lower(): ".".join(map(str, spec.floor)) + ".0" for spec in SUPPORTED}
    assert pins == {"sqlalchemy": "2.0.0", "alembic": "1.13.0"}
    locked = locked_versions()
    pins["psycopg"] = pins["psycopg-binary"] = "3.2.3"
    assert all(locked[name] != version for name, version in pins.items()), "pins differ"
    old_pydantic = "pydantic==2.6.0"  # pydantic-settings 2.4 and later need 2.7
    python = pinned_job_python(
        tmp_path / "toolcache",
        app_wheel,
        *(f"{n}=={v}" for n, v in pins.items()),
        old_pydantic,
    )
    write_app_project(github.workspace)
    record = write_version_probe(github.workspace)
    runner_temp = tmp_path / "runner_temp"
    run = run_composite(
        github,
        with_={"database-url": database.url, **DEPLOY_INPUTS},
        job_python=python,
        runner_temp=runner_temp,
        action_file=action_checkout,
    )
    assert run.returncode == 0, run.log
    assert_deployed(run.outputs, github.workspace)
    assert database.scalar("SELECT count(*) FROM connectors") == 3

    seen = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert len(seen) >= 2, "env.py and the seed ran"
    for entry in seen:
        for name, (version, module_file) in entry.items():
            assert version == pins[name], entry
            assert Path(module_file).is_relative_to(python.parent.parent), entry
    # The deployer's process imports the application's psycopg too.
    venv = deployer_venv(runner_temp)
    venv_python = venv / "bin" / "python"
    code = (
        "import json, psycopg, psycopg_binary\nfrom importlib.metadata import version\n"
        "print(json.dumps([version('psycopg'), version('psycopg-binary'), psycopg.__file__, "
        "psycopg_binary.__file__]))"
    )
    found = json.loads(probe(venv_python, code))
    versions, files = found[:2], found[2:]
    assert versions == ["3.2.3", "3.2.3"]
    assert all(Path(f).is_relative_to(python.parent.parent) for f in files), files
    # The deployer's environment holds none of them; what the job lacks comes from it.
    (site_packages,) = venv.glob("lib/*/site-packages")
    ours = [p.name for p in site_packages.iterdir()]
    # (psycopg2-binary, for url-driver psycopg2, is the deployer's own when the job lacks it.)
    theirs = re.compile(r"(sqlalchemy|alembic|psycopg|psycopg_binary)([-.]|$)")
    assert not [n for n in ours if theirs.match(n.lower())], ours
    install = run.step("install").stdout
    kept = next(line for line in install.splitlines() if line.startswith("From the job's Python"))
    for name in pins:
        assert name in kept.split(": ")[1].split(", "), kept
    needed = "::group::Needed in another version than the job's: "
    fixed = [n for line in install.splitlines() if line.startswith(needed)
             for n in line.removeprefix(needed).split(", ")]  # fmt: skip
    assert sorted(fixed) == ["pydantic", "pydantic-core"], install
    pydantic = probe(venv_python, "import pydantic; print(pydantic.VERSION)")
    assert pydantic == locked["pydantic"]
    assert probe(python, "import pydantic; print(pydantic.VERSION)") == "2.6.0", "job's intact"


@pytest.mark.slow
def test_an_application_with_an_unsupported_sqlalchemy_stops_with_exit_2(
    github: GitHubRunner, database: Database, action_checkout: Path, app_wheel: Path, tmp_path: Path
):
    """The application's SQLAlchemy is not replaced by the lock's: when it is outside the
    supported range, db-deploy says so in one line and exits 2, before reaching the database."""
    python = pinned_job_python(tmp_path / "toolcache", app_wheel, "SQLAlchemy==1.4.54")
    write_app_project(github.workspace)
    run = run_composite(
        github,
        with_={"database-url": database.url, **DEPLOY_INPUTS},
        job_python=python,
        runner_temp=tmp_path / "runner_temp",
        action_file=action_checkout,
    )
    assert run.returncode == 2, run.log
    assert run.step("install").returncode == 0
    expected = "SQLAlchemy 1.4.54 is not supported: db-deploy needs SQLAlchemy >=2.0,<3"
    assert run.outputs["status"] == "failed"
    assert run.outputs["failed-step"] == "config"
    assert run.outputs["error"].startswith(expected), run.outputs["error"]
    errors = [c for c in workflow_commands(run.step("deploy").stdout) if c.name == "error"]
    assert [e.data.startswith(expected) for e in errors] == [True], run.log
    assert "Traceback" not in run.text
    assert database.tables() == set()


def newest_older_python() -> Path | None:
    """The newest interpreter older than 3.11 on this machine (pyenv, the hosted runners' tool
    cache): 3.10 if there is one, the version a check of `>= (3, 11)` is most likely to get wrong."""
    candidates = [
        *Path.home().glob(".pyenv/versions/*/bin/python3"),
        *Path("/opt/hostedtoolcache/Python").glob("*/x64/bin/python3"),
        *(Path(p) for m in range(6, 11) if (p := shutil.which(f"python3.{m}"))),
    ]
    found: list[tuple[tuple[int, int], Path]] = []
    for python in candidates:
        proc = subprocess.run(
            [str(python), "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            major, minor = map(int, proc.stdout.split())
            if (major, minor) < (3, 11):
                found.append(((major, minor), python))
    return max(found)[1] if found else None


def test_an_older_python_fails_fast_with_a_clear_message(
    github: GitHubRunner, database: Database, action_checkout: Path, tmp_path: Path
):
    old = newest_older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    folder = tmp_path / "old-python"
    folder.mkdir()
    (folder / "python").symlink_to(old)
    write_project(github.workspace)
    runner_temp = tmp_path / "runner_temp"
    run = run_composite(
        github,
        with_={"database-url": database.url, **DEPLOY_INPUTS},
        job_python=folder / "python",
        runner_temp=runner_temp,
        action_file=action_checkout,
    )
    assert run.returncode == 2, run.log
    assert [s.id for s in run.steps] == ["install"], "nothing after the check runs"
    (error,) = [c for c in workflow_commands(run.step("install").stdout) if c.name == "error"]
    version = probe(folder / "python", "import sys; print('%d.%d' % sys.version_info[:2])")
    assert f"The job's Python is {version}" in error.data
    assert "actions/setup-python" in error.data and "3.11" in error.properties["title"]
    assert not (runner_temp / "db-deploy-action").exists()
    assert set(run.outputs.values()) == {""}
    assert database.tables() == set()


# --------------------------------------------------------------------------- (d) validators


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing from the dev environment ({path})"
    return str(path)


def run_tool(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(proc.args)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_the_composite_matches_the_action_schema(tmp_path: Path):
    schema = ["--builtin-schema", "vendor.github-actions"]
    proc = run_tool(tool("check-jsonschema"), *schema, str(PYTHON_ACTION))
    assert proc.returncode == 0, shown(proc)
    # A composite `run:` step without `shell:` is invalid: the schema really is applied.
    broken = tmp_path / "action.yml"
    text = PYTHON_ACTION.read_text(encoding="utf-8")
    broken.write_text(text.replace("      shell: bash\n", "", 1), encoding="utf-8")
    assert run_tool(tool("check-jsonschema"), *schema, str(broken)).returncode != 0


def test_zizmor_finds_nothing_in_the_composite(tmp_path: Path):
    argv = [tool("zizmor"), "--offline", "--no-progress"]
    proc = run_tool(*argv, str(PYTHON_ACTION))
    assert proc.returncode == 0, shown(proc)
    # The negative control: the same file with an input interpolated into a script.
    broken = tmp_path / "python" / "action.yml"
    broken.parent.mkdir()
    text = PYTHON_ACTION.read_text(encoding="utf-8")
    old = "-m deployer.bootstrap run"
    assert old in text
    broken.write_text(
        text.replace(old, f"{old} ${{{{ inputs.target }}}}"),
        encoding="utf-8",
    )
    proc = run_tool(*argv, str(broken), cwd=tmp_path)
    assert proc.returncode != 0 and "template-injection" in proc.stdout + proc.stderr


def test_the_example_workflow_passes_actionlint_and_zizmor():
    """tests/test_validators.py globs .github/workflows/*.yml for the schema, actionlint (which
    checks `uses: ./python` inputs against python/action.yml), zizmor and SHA pinning; this file
    also runs them on the example directly."""
    from tests.test_validators import WORKFLOWS

    assert EXAMPLE_WORKFLOW in WORKFLOWS
    workflow = str(EXAMPLE_WORKFLOW.relative_to(REPO))
    proc = run_tool(tool("actionlint"), "-no-color", workflow)
    assert proc.returncode == 0, shown(proc)
    proc = run_tool(tool("zizmor"), "--offline", "--no-progress", workflow)
    assert proc.returncode == 0, shown(proc)
    schema = ["--builtin-schema", "vendor.github-workflows"]
    proc = run_tool(tool("check-jsonschema"), *schema, workflow)
    assert proc.returncode == 0, shown(proc)


def test_actionlint_checks_the_example_against_the_composites_inputs(tmp_path: Path):
    """The negative control: a misspelled input of `uses: ./python` fails actionlint."""
    (tmp_path / ".git").mkdir()  # actionlint resolves `./python` from the repository root
    (tmp_path / "python").mkdir()
    shutil.copy2(PYTHON_ACTION, tmp_path / "python" / "action.yml")
    target = tmp_path / ".github" / "workflows" / EXAMPLE_WORKFLOW.name
    target.parent.mkdir(parents=True)
    text = EXAMPLE_WORKFLOW.read_text(encoding="utf-8")
    assert "migrations-path:" in text
    target.write_text(text.replace("migrations-path:", "migration-path:", 1), encoding="utf-8")
    proc = run_tool(
        tool("actionlint"), "-no-color", str(target.relative_to(tmp_path)), cwd=tmp_path
    )
    assert proc.returncode != 0 and "migration-path" in proc.stdout, shown(proc)


def test_the_example_workflow_installs_the_app_before_the_composite():
    data = load(EXAMPLE_WORKFLOW)
    steps = data["jobs"]["deploy"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    setup = next(i for i, u in enumerate(uses) if u.startswith("actions/setup-python@"))
    deploy = next(i for i, u in enumerate(uses) if u == "./python")
    install = next(i for i, s in enumerate(steps) if "pip install" in s.get("run", ""))
    assert setup < install < deploy
    python_version = str(steps[setup]["with"]["python-version"])
    assert tuple(int(p) for p in python_version.split(".")[:2]) >= (3, 11)
    deploy_with = steps[deploy]["with"]
    assert deploy_with["database-url"] == "${{ secrets.DATABASE_URL }}"
    assert set(deploy_with) <= set(load(PYTHON_ACTION)["inputs"])
    for step in steps:
        assert "secrets." not in json.dumps(step.get("env", {})), "secrets go in as inputs"
