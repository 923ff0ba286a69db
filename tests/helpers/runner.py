"""The GitHub runner as a container step sees it, and the `db-deploy` command run as a user runs it.

The runner's file-command parser is reproduced from actions/runner
`src/Runner.Worker/FileCommandManager.cs` (EnvFileKeyValuePairs), see `parse_env_file`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


class FileCommandError(Exception):
    """What the runner raises: the step would fail with `Unable to process file command`."""


def parse_env_file(text: str) -> dict[str, str]:
    """Parse GITHUB_OUTPUT / GITHUB_ENV / GITHUB_STATE as the Linux runner does.

    actions/runner src/Runner.Worker/FileCommandManager.cs, EnvFileKeyValuePairs: lines split on
    LF only (no CRLF handling outside Windows), empty lines skipped; `name=value` when `=` comes
    before `<<`; else a heredoc `name<<DELIM` whose value runs to the first line exactly equal to
    DELIM (the newline before DELIM dropped); an unterminated heredoc or a line with neither
    `=` nor `<<` fails the step. A repeated key: last wins. SetOutput rejects an empty name.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    out: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line == "":
            continue
        eq = line.find("=")
        hd = line.find("<<")
        if eq >= 0 and (hd < 0 or eq < hd):
            name, value = line[:eq], line[eq + 1 :]
        elif hd >= 0:
            name, delim = line[:hd], line[hd + 2 :]
            if not name or not delim:
                raise FileCommandError(f"Invalid format '{line}'. Name/delimiter must not be empty")
            value_lines: list[str] = []
            while True:
                if i >= len(lines):
                    raise FileCommandError(f"Invalid value. Matching delimiter not found '{delim}'")
                if lines[i] == delim:
                    i += 1
                    break
                value_lines.append(lines[i])
                i += 1
            if i > len(lines):
                raise FileCommandError("Invalid value. EOF marker missing new line.")
            value = "\n".join(value_lines)
        else:
            raise FileCommandError(f"Invalid format '{line}'")
        if not name:
            raise FileCommandError("Name must not be empty")
        out[name] = value
    return out


@dataclass
class GitHubRunner:
    """A GitHub Actions runner environment for one step: env vars and file-command files."""

    workspace: Path
    files: Path
    env: dict[str, str]

    @property
    def output_file(self) -> Path:
        return Path(self.env["GITHUB_OUTPUT"])

    @property
    def summary_file(self) -> Path:
        return Path(self.env["GITHUB_STEP_SUMMARY"])

    def outputs(self) -> dict[str, str]:
        return parse_env_file(self.output_file.read_text(encoding="utf-8"))

    def summary(self) -> str:
        return self.summary_file.read_text(encoding="utf-8")

    def with_inputs(self, **inputs: str) -> dict[str, str]:
        """The env a container step gets: INPUT_<NAME> as the runner spells it (R Handler.cs)."""
        env = dict(self.env)
        for name, value in inputs.items():
            env["INPUT_" + name.replace(" ", "_").upper()] = value
        return env


def new_runner(tmp_path: Path) -> GitHubRunner:
    """A runner environment for one step in `tmp_path`: workspace, file-command files, GITHUB_* variables."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    files = tmp_path / "file_commands"
    files.mkdir()
    guid = uuid.uuid4()
    env = clean_env()
    for var, prefix in (
        ("GITHUB_OUTPUT", "set_output_"),
        ("GITHUB_ENV", "set_env_"),
        ("GITHUB_PATH", "add_path_"),
        ("GITHUB_STATE", "save_state_"),
        ("GITHUB_STEP_SUMMARY", "step_summary_"),
    ):
        path = files / f"{prefix}{guid}"
        path.touch()
        env[var] = str(path)
    env.update(
        GITHUB_ACTIONS="true",
        CI="true",
        GITHUB_WORKSPACE=str(workspace),
        GITHUB_ACTOR="octocat",
        GITHUB_REPOSITORY="acme/shop",
        GITHUB_REF="refs/heads/main",
        GITHUB_SHA="0123456789abcdef0123456789abcdef01234567",
        GITHUB_RUN_ID="4242",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_WORKFLOW="DB Deploy",
        GITHUB_JOB="deploy",
        GITHUB_EVENT_NAME="workflow_dispatch",
        RUNNER_TEMP=str(tmp_path / "runner_temp"),
    )
    return GitHubRunner(workspace=workspace, files=files, env=env)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def visible(self) -> str:
        """What a log reader sees: the runner consumes `::add-mask::` lines (the only place a
        secret may be printed, to register it) and shows everything else."""
        return "\n".join(
            line for line in self.output.splitlines() if not line.startswith("::add-mask::")
        )


def is_deployer_setting(key: str) -> bool:
    """Variables that would configure a run: inputs, the runner's, the plain settings."""
    return key.startswith(("INPUT_", "GITHUB_", "DB_DEPLOY_")) or key in {
        "DATABASE_URL",
        "DIRECT_DATABASE_URL",
        "SLACK_WEBHOOK_URL",
        "RUN_SEED",
        "CI",
    }


def clean_env() -> dict[str, str]:
    """The environment outside GitHub: no runner, no inputs, no database settings."""
    return {k: v for k, v in os.environ.items() if not is_deployer_setting(k)}


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Run:
    """Run `db-deploy ARGS` as a subprocess (`python -m deployer`), like a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "") -> None:
    """Poll `predicate` every 50 ms until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def start_deploy(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`python -m deployer` (parent and child) in a process group of its own, for tests that
    kill or signal a deploy under way."""
    return subprocess.Popen(
        [sys.executable, "-m", "deployer"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def version_number(database: Any) -> int:
    """The number of the revision `database` is at, for chains of revisions named r001, r002, …
    (0 before the version table exists)."""
    if not database.scalar("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
        return 0
    v = database.scalar("SELECT max(version_num) FROM alembic_version")
    return int(str(v)[1:]) if v else 0
