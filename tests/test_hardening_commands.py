"""Issue 15, point 5: no workflow command from data (against a real PostgreSQL).

Table names, a revision's docstring, a server's error and notice, and env.py's output that hold
`::error`, `::add-mask::`, `::stop-commands::`, `::set-output` (and the legacy `##[`) on a line
of their own: the deployer's stdout, read as the runner reads it (TryParseV2 on every line,
tests.helpers.action.workflow_commands), holds only the deployer's own commands.
"""

from __future__ import annotations

import json

from tests.helpers import AlembicProject, GitHubRunner
from tests.helpers.action import workflow_commands

HOSTILE = [
    "::error title=HIJACK::fake annotation",
    "::add-mask::hijacked-mask",
    "::stop-commands::pwned",
    "::set-output name=status::success",
    "  ::warning::indented",
    "##[error]legacy command",
]
HOSTILE_TEXT = "\\n".join(HOSTILE)  # as a Python string literal's body


def _ours(stdout: str, *, failed: bool) -> None:
    found = workflow_commands(stdout)
    names = {c.name for c in found}
    assert names <= {"add-mask", "group", "endgroup", "error", "warning", "notice"}, names
    assert "stop-commands" not in names and "set-output" not in names
    assert all("HIJACK" not in (c.properties.get("title") or "") for c in found)
    assert all(c.data != "hijacked-mask" for c in found if c.name == "add-mask")
    assert all(c.data != "indented" for c in found)
    errors = [c for c in found if c.name == "error"]
    assert len(errors) == (1 if failed else 0), errors
    for line in stdout.splitlines():
        assert "##[" not in line, line


ENV_PY_PRINTS = f"""
import sys as _sys
print("env.py says:\\n{HOSTILE_TEXT}")
_sys.stdout.write(":")
_sys.stdout.flush()
_sys.stdout.write(":error title=HIJACK::split across writes\\n")
_sys.stderr.write("{HOSTILE_TEXT}\\n")
"""


def test_names_docstrings_notices_and_env_output_cannot_start_a_command(
    project: AlembicProject, github: GitHubRunner, deploy
) -> None:
    env_py = project.root / "env.py"
    env_py.write_text(ENV_PY_PRINTS + env_py.read_text())
    project.add(
        "0001_tables",
        "\n".join(
            f"op.create_table({('t' + str(i) + chr(10) + h)!r}, sa.Column('id', sa.Integer))"
            for i, h in enumerate(HOSTILE)
        )
        + "\nop.execute(\"DO $$ BEGIN RAISE NOTICE E'note\\\\n::error title=HIJACK::notice'; END $$\")",
        message="Add tables\n" + "\n".join(HOSTILE),
    )
    run = deploy(project)
    assert run.returncode == 0, run.output
    _ours(run.stdout, failed=False)
    _ours(run.stderr, failed=False)
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    names = json.dumps(report)
    assert "HIJACK" in names  # the names are reported, as data
    assert "stop-commands" in github.summary() or "HIJACK" in github.summary()


def test_a_server_error_cannot_start_a_command(
    project: AlembicProject, github: GitHubRunner, deploy
) -> None:
    project.add(
        "0001_boom",
        "op.execute(\"DO $$ BEGIN RAISE EXCEPTION E'boom\\\\n"
        + HOSTILE_TEXT.replace("\\n", "\\\\n")
        + "'; END $$\")",
    )
    run = deploy(project)
    assert run.returncode == 1, run.output
    assert "boom" in run.output
    _ours(run.stdout, failed=True)
    _ours(run.stderr, failed=False)
