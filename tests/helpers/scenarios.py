"""Scenarios that more than one test module plays, against a real PostgreSQL and real processes:

- a deploy cancelled by a signal in the middle of a revision (`cancel_mid_revision`, checked by
  `assert_cancelled`), with the revision busy on the server (`cancel_during_sleep`) or in Python
  (`cancel_during_python`): tests/test_cancel.py, tests/test_env_styles.py and
  tests/test_env_connection.py;
- a run as root in a workspace owned by the runner's user (uid 1001): the `owned_runner`
  fixture, `as_owner` (a shell script run as that user, `setpriv` of util-linux) and
  `assert_owned`: tests/test_hardening_files.py and tests/fleet/test_fleet_entry.py.

The fixture is used by importing it under its own name (an explicit re-export, so linters keep
it):

    from tests.helpers.scenarios import owned_runner_fixture as owned_runner_fixture
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.helpers.postgres import Database
from tests.helpers.projects import AlembicProject
from tests.helpers.runner import GitHubRunner, new_runner, wait_for

# --------------------------------------------------------------------------- a cancelled deploy

DEADLINE = 5.0  # seconds from the signal to the process's end, report written
SLEEP = "op.execute('SELECT pg_sleep(60)')"  # a revision busy on the server


def start(github: GitHubRunner, env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m deployer` in the workspace, its output (stdout and stderr) on one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "deployer"],
        env=env,
        cwd=github.workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def sessions(database: Database, like: str = "%") -> int:
    """The deployer's active sessions on the database whose query is LIKE `like`."""
    return int(
        database.scalar(  # type: ignore[arg-type]
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'db-deploy' AND query LIKE :q AND state = 'active'",
            q=like,
        )
    )


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def cancel_mid_revision(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    sig: signal.Signals,
    *,
    busy: str,
    running: Callable[[], object],
    **inputs: str,
) -> tuple[subprocess.Popen[str], str, float]:
    """Deploy 0001 (quick) then 0002 (`busy`), send `sig` to the process once `running` (a
    predicate on the database) holds; returns the process, its output and the seconds from
    the signal to its end."""
    project.add("0001_a", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("0002_slow", f"op.add_column('a', sa.Column('x', sa.Integer))\n{busy}")
    env = github.with_inputs(
        **{"database-url": database.url, "migrations-path": str(project.root), **inputs}
    )
    proc = start(github, env)
    try:
        wait_for(running, what="the slow revision")
        sent = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, out, took


def assert_cancelled(
    proc: subprocess.Popen[str],
    out: str,
    took: float,
    database: Database,
    github: GitHubRunner,
    sig: signal.Signals,
) -> None:
    """What a cancel_mid_revision() run leaves: exit 128+sig in time, one error line, outputs,
    summary and report saying `cancelled`, 0001 applied, 0002 rolled back, nothing left on the
    server."""
    assert proc.returncode == 128 + sig, out
    assert took < DEADLINE, f"{took:.1f}s"
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("::error")]
    assert len(errors) == 1, out
    assert f"cancelled by {sig.name}" in errors[0]
    outputs = github.outputs()
    assert outputs["status"] == "cancelled"
    assert outputs["error-class"] == "cancelled"
    assert outputs["current-revision"] == "0001_a"
    assert "cancelled" in github.summary()
    rep = report(github)
    assert rep["status"] == "cancelled" and rep["exit_code"] == 128 + sig
    assert [a["revision"] for a in rep["migrate"]["applied"]] == ["0001_a"]
    # The open revision rolled back, nothing of ours left on the server, the lock released.
    assert database.version() == {"0001_a"}
    cols = database.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'a'"
    )
    assert [c[0] for c in cols] == ["id"]
    assert sessions(database) == 0
    assert database.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    kinds = database.rows("SELECT revision, kind FROM db_deploy.db_deploy_history")
    assert kinds == [("0001_a", "upgrade")]


def cancel_during_sleep(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    sig: signal.Signals,
    **inputs: str,
) -> None:
    """`sig` while the revision's statement runs on the server (pg_sleep): cancelled."""
    proc, out, took = cancel_mid_revision(
        project,
        database,
        github,
        sig,
        busy=SLEEP,
        running=lambda: sessions(database, "%pg_sleep(60)%") > 0,
        **inputs,
    )
    assert_cancelled(proc, out, took, database, github, sig)


def cancel_during_python(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    marker: Path,
    **inputs: str,
) -> None:
    """SIGINT while the revision is busy in Python (time.sleep, once it created `marker`), not
    on the server: cancelled all the same."""
    proc, out, took = cancel_mid_revision(
        project,
        database,
        github,
        signal.SIGINT,
        busy=f"open({str(marker)!r}, 'w').close()\nimport time\ntime.sleep(60)",
        running=marker.exists,
        **inputs,
    )
    assert_cancelled(proc, out, took, database, github, signal.SIGINT)


# --------------------------------------------------------------------------- a workspace of uid 1001

OWNER = 1001  # the runner's user on the host, owner of the workspace a container action sees

needs_root_and_setpriv = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux)",
)


@pytest.fixture(name="owned_runner")
def owned_runner_fixture() -> Iterator[GitHubRunner]:
    """A runner whose workspace folder belongs to uid/gid 1001, in a folder 1001 can reach."""
    base = Path(tempfile.mkdtemp(prefix="dbd-owner-", dir="/tmp"))
    base.chmod(0o755)
    runner = new_runner(base)
    os.chown(runner.workspace, OWNER, OWNER)
    runner.workspace.chmod(0o755)
    yield runner
    shutil.rmtree(base, ignore_errors=True)


def as_owner(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sh -ec script` as uid/gid 1001 (no other group), in `cwd`."""
    return subprocess.run(
        ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups", "sh", "-ec", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_owned(paths: Iterable[Path]) -> None:
    """Every path (not followed if a link) belongs to uid/gid 1001."""
    for p in paths:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (OWNER, OWNER), f"{p} is {st.st_uid}:{st.st_gid}"
