"""The other ways into a fleet: `deploy` (and `plan`) with `fleet-file` run the fleet as `fleet`
does (issue 20, point 2); no child ever re-reads the fleet file (a `DB_DEPLOY_FLEET_FILE` in the
environment would otherwise make every target deploy the whole fleet again); and what the fleet
writes in the workspace belongs to the workspace's owner when it runs as root, as a container
action does (issue 15, point 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fleet.test_fleet_run import fleet_file
from tests.helpers import GitHubRunner, parse_env_file, write_alembic_project
from tests.helpers.scenarios import as_owner, assert_owned, needs_root_and_setpriv
from tests.helpers.scenarios import owned_runner_fixture as owned_runner_fixture


def test_deploy_with_a_fleet_file_deploys_the_fleet(
    pg_server, databases, fleet_project, run_fleet
) -> None:
    canary, other = databases(2)
    text = fleet_file(pg_server, [f"  - {{name: {canary.name}, wave: 0}}", f"  - {other.name}"])
    text = text.replace(f"{other.name}\n", f"{{name: {other.name}, wave: 1}}\n")
    out = run_fleet(text, command="deploy")
    assert out.run.returncode == 0, out.run.output
    assert out.outputs["status"] == "success"
    assert out.outputs["targets-total"] == "2" and out.outputs["targets-succeeded"] == "2"
    assert out.summary.count("### Targets") == 1
    for db in (canary, other):
        assert out.status(db.name) == "success"
        assert db.tables() >= {"t", "u"}
    assert out.record(other.name)["wave"] == 1
    # Again: every target is a no-op.
    again = run_fleet(text, command="deploy")
    assert again.outputs["targets-noop"] == "2", again.run.output


def test_plan_with_a_fleet_file_plans_every_target(
    pg_server, databases, fleet_project, run_fleet
) -> None:
    (db,) = databases(1)
    out = run_fleet(fleet_file(pg_server, [f"  - {db.name}"]), command="plan")
    assert out.run.returncode == 0, out.run.output
    assert "t" not in db.tables()
    child = json.loads((out.folder / f"{db.name}.json").read_text())
    assert child["command"] == "plan" and child["dry_run"] is True
    assert out.record(db.name)["pending_count"] == 2


def test_the_fleet_file_from_the_environment_reaches_no_child(
    pg_server, databases, fleet_project, run_fleet
) -> None:
    """`DB_DEPLOY_FLEET_FILE` with `deploy`: the parent runs the fleet; a child that inherited
    the variable would run the fleet again from every target (each child's log says what it
    deployed: one database)."""
    dbs = databases(2)
    text = fleet_file(pg_server, [f"  - {d.name}" for d in dbs])
    out = run_fleet(
        text,
        command="deploy",
        env={"DB_DEPLOY_FLEET_FILE": "fleet.yml", "DB_DEPLOY_MAX_PARALLEL": "2"},
        **{"fleet-file": ""},
    )
    assert out.run.returncode == 0, out.run.output
    assert out.outputs["targets-total"] == "2"
    for d in dbs:
        child = json.loads((out.folder / f"{d.name}.json").read_text())
        assert "fleet" not in child.get("extra", {}), child
        assert child["command"] == "deploy"
    assert sorted(p.name for p in out.folder.iterdir() if p.suffix == ".log") == sorted(
        f"{d.name}.log" for d in dbs
    )


@needs_root_and_setpriv
def test_the_reports_folder_is_the_workspace_owners(
    pg_server, databases, owned_runner: GitHubRunner, run_cli
) -> None:
    ok, broken = databases(2)
    broken.execute("CREATE TABLE t (id int)")  # its deploy fails: a report, a log, a record
    ws = owned_runner.workspace
    project = write_alembic_project(ws / "migrations")
    project.add("0001_t", "op.create_table('t', sa.Column('id', sa.Integer))")
    (ws / "fleet.yml").write_text(fleet_file(pg_server, [f"  - {ok.name}", f"  - {broken.name}"]))
    env = owned_runner.with_inputs(
        command="fleet", **{"fleet-file": "fleet.yml", "report-file": "fleet-report.json"}
    )
    run = run_cli(env=env, cwd=ws, timeout=300)
    assert run.returncode == 1, run.output
    outputs = parse_env_file(owned_runner.output_file.read_text())
    assert outputs["targets-failed"] == "1"
    folder = ws / "db-deploy-fleet"
    written = [folder, *sorted(folder.iterdir()), ws / "fleet-report.json"]
    names = {p.name for p in written}
    for target in (ok.name, broken.name):
        assert {f"{target}.json", f"{target}.log", f"{target}.target.json"} <= names
    assert_owned(written)
    # As the workspace's owner: everything reads, and the folder goes.
    check = as_owner(
        "cat db-deploy-fleet/* fleet-report.json > /dev/null; rm -rf db-deploy-fleet", ws
    )
    assert check.returncode == 0, check.stderr
    assert not folder.exists()


def test_the_fleets_own_settings_reach_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a child is given: the command's inputs but the fleet's own (fleet file, parallelism,
    the report, Slack, the GitHub token: one summary, one message, no comment per target), and
    an environment without their plain variables."""
    from deployer.commands.fleet import command_inputs, fleet_environ
    from deployer.fleet.runner import FleetRunner
    from deployer.fleet.spec import Fleet, Target
    from deployer.settings import Settings

    environ = {
        "INPUT_COMMAND": "deploy",
        "INPUT_FLEET-FILE": "fleet.yml",
        "INPUT_MAX-PARALLEL": "3",
        "INPUT_GITHUB-TOKEN": "ghs_notForChildren",
        "INPUT_LOCK-TIMEOUT": "7s",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    given = command_inputs(Settings(), environ)
    assert given == {"lock-timeout": "7s"}
    runner = FleetRunner(
        fleet=Fleet("fleet.yml", [Target(name="a", inputs={"database-url": "postgresql:///a"})]),
        reports_dir=Path("unused"),
        workspace=Path("unused"),
        inputs=given,
        environ={
            **environ,
            "DB_DEPLOY_FLEET_FILE": "fleet.yml",
            "DB_DEPLOY_GITHUB_TOKEN": "ghs_notForChildren",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
            "PATH": "/usr/bin",
        },
        stripped=fleet_environ(),
    )
    env = runner.child_env(runner.fleet.targets[0])
    assert env == {
        "PATH": "/usr/bin",
        "INPUT_DATABASE-URL": "postgresql:///a",
        "INPUT_LOCK-TIMEOUT": "7s",
    }
