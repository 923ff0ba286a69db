"""The reusable workflow's own commands, end to end, as its jobs run them (issue 20, "How it is
checked"): the plan job's `python3 -m deployer.fleet.shards`, each shard job's `command: fleet`
on its targets (`DB_DEPLOY_FLEET_TARGETS`) in a workspace of its own, the artifacts laid out as
`download-artifact` leaves them, and the report job's `fleet-report`; on a fleet of our own
databases with a broken and an unreachable member. The jobs' `if:` is followed: a wave job runs
only when every shard of the one before succeeded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fleet.test_fleet_run import fleet_file
from tests.helpers import REPO, GitHubRunner, parse_env_file, write_alembic_project
from tests.helpers.runner import new_runner


def _workspace(base: Path, name: str, fleet: str) -> GitHubRunner:
    """A job's runner: the calling repository checked out (the fleet file, the migrations)."""
    (base / name).mkdir()
    runner = new_runner(base / name)
    project = write_alembic_project(runner.workspace / "migrations")
    project.add("0001_t", "op.create_table('t', sa.Column('id', sa.Integer))")
    project.add("0002_u", "op.create_table('u', sa.Column('id', sa.Integer))")
    (runner.workspace / "fleet.yml").write_text(fleet)
    return runner


def test_the_workflows_commands_on_a_fleet_with_broken_and_unreachable_members(
    pg_server, databases, run_cli, tmp_path: Path
) -> None:
    canary, early_ok, broken, rest_a, rest_b = databases(5)
    broken.execute("CREATE TABLE u (id int)")  # its 0002_u fails
    fleet = fleet_file(
        pg_server,
        [
            f"  - {{name: {canary.name}, wave: 0}}",
            f"  - {{name: {early_ok.name}, wave: 1}}",
            f"  - {{name: {broken.name}, wave: 1}}",
            "  - name: gone",
            "    wave: 1",
            "    database-url: postgresql://postgres@/gone?host=/nonexistent/socket/dir",
            f"  - {{name: {rest_a.name}, wave: 2}}",
            f"  - {{name: {rest_b.name}, wave: 3}}",
        ],
    )

    # plan: the runner's python3, the standard library only.
    plan = _workspace(tmp_path, "plan", fleet)
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "deployer.fleet.shards", "--fleet-file", "fleet.yml"]
        + ["--shards", "2", "--github-output", str(plan.output_file)],
        cwd=plan.workspace,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    planned = parse_env_file(plan.output_file.read_text())
    matrices = {
        job: json.loads(planned[f"{job}-matrix"])["include"] for job in ("canary", "early", "rest")
    }
    assert [s["targets"] for s in matrices["canary"]] == [canary.name]
    assert [s["targets"] for s in matrices["early"]] == [f"{early_ok.name},{broken.name}", "gone"]
    assert [s["targets"] for s in matrices["rest"]] == [f"{rest_a.name},{rest_b.name}"]

    # canary, early, rest: each shard a job of its own; a wave job runs only when the one before
    # succeeded (`needs.<job>.result == 'success'`).
    report = _workspace(tmp_path, "report", fleet)
    downloads = report.workspace / "db-deploy-fleet"
    ran: dict[str, int] = {}
    for job in ("canary", "early", "rest"):
        if any(code != 0 for code in ran.values()):
            break
        for shard in matrices[job]:
            runner = _workspace(tmp_path, shard["shard"], fleet)
            env = runner.with_inputs(
                command="fleet", **{"fleet-file": "fleet.yml", "max-parallel": "2"}
            )
            env["DB_DEPLOY_FLEET_TARGETS"] = shard["targets"]
            run = run_cli(env=env, cwd=runner.workspace, timeout=300)
            ran[shard["shard"]] = run.returncode
            outputs = parse_env_file(runner.output_file.read_text())
            assert outputs["targets-total"] == str(len(shard["targets"].split(","))), run.output
            # upload-artifact, then download-artifact with a pattern: one folder per artifact.
            shutil.copytree(
                runner.workspace / "db-deploy-fleet",
                downloads / f"db-deploy-fleet-{shard['shard']}-attempt-1",
            )
    assert ran == {"canary-1": 0, "early-1": 1, "early-2": 1}  # rest never ran
    for db in (canary, early_ok):
        assert db.tables() >= {"t", "u"}
    assert "t" not in rest_a.tables() and "t" not in rest_b.tables()

    # report: one summary, one set of outputs for the whole fleet.
    run = run_cli(
        env=report.with_inputs(command="fleet-report", **{"fleet-file": "fleet.yml"}),
        cwd=report.workspace,
    )
    assert run.returncode == 1, run.output
    out = parse_env_file(report.output_file.read_text())
    assert out["status"] == "partial"
    assert out["targets-total"] == "6"
    assert out["targets-succeeded"] == "2"
    assert out["targets-failed"] == "2"
    assert sorted(json.loads(out["failed-targets"])) == sorted([broken.name, "gone"])
    assert "2 not reached" in out["error"]
    summary = report.summary_file.read_text()
    assert summary.count("### Targets") == 1
    for name in (canary.name, early_ok.name, broken.name, "gone", rest_a.name, rest_b.name):
        assert f"`{name}`" in summary
    assert summary.index("| ❌") < summary.index("| ⏸️") < summary.index("| ✅")
    assert "already exists" in summary  # the broken target's error line
