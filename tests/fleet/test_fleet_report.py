"""fleet-report on records on disk (as the workflow's last job downloads them), the shard
planner for 10,000 targets, and the summary's cut under GitHub's 1 MiB limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deployer.fleet import shards
from deployer.fleet.reports import write_record
from deployer.fleet.spec import Fleet, Target
from deployer.render import fleet as render
from deployer.results import FleetResult, RunResult, TargetResult, Telemetry
from tests.helpers import GitHubRunner, parse_env_file

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def record(name: str, status: str, wave: int = 0, minutes: int = 0, **kw: object) -> TargetResult:
    return TargetResult(
        name=name,
        wave=wave,
        status=status,
        previous_revision="0001",
        current_revision="0002" if status == "success" else "0001",
        applied_count=1 if status == "success" else 0,
        seconds=kw.pop("seconds", 1.5),  # type: ignore[arg-type]
        finished_at=(NOW + timedelta(minutes=minutes)).isoformat(),
        **kw,  # type: ignore[arg-type]
    )


def test_fleet_report_from_artifacts(github: GitHubRunner, run_cli) -> None:
    folder = github.workspace / "db-deploy-fleet"
    canary, early = folder / "fleet-canary-1", folder / "fleet-early-1"
    canary.mkdir(parents=True)
    early.mkdir(parents=True)
    write_record(canary, record("c1", "success", seconds=9.0))
    write_record(early, record("e1", "noop", wave=1))
    write_record(early, record("e2", "failed", wave=1, failed_step="migrate", error="boom"))
    # A re-run's artifact beside the first run's: the latest record of a name wins.
    retry = folder / "fleet-early-1-attempt-2"
    retry.mkdir()
    write_record(retry, record("e3", "success", wave=1, minutes=5))
    write_record(early, record("e3", "failed", wave=1, error="first attempt"))
    (github.workspace / "fleet.yml").write_text(
        "targets: [c1, {name: e1, wave: 1}, {name: e2, wave: 1}, {name: e3, wave: 1},"
        " {name: r1, wave: 2}]\n"
    )
    github.output_file.write_text("")
    run = run_cli(
        env=github.with_inputs(command="fleet-report", **{"fleet-file": "fleet.yml"}),
        cwd=github.workspace,
    )
    assert run.returncode == 1, run.stderr
    out = parse_env_file(github.output_file.read_text())
    assert out["status"] == "partial"
    assert (out["targets-total"], out["targets-succeeded"], out["targets-noop"]) == ("5", "2", "1")
    assert out["targets-failed"] == "1"
    assert json.loads(out["failed-targets"]) == ["e2"]
    summary = github.summary_file.read_text()
    assert summary.count("### Targets") == 1
    lines = [line for line in summary.splitlines() if line.startswith("| ") and "`" in line]
    rows = [line for line in lines if "| `" in line and line.count("|") == 8]
    assert "e2" in rows[0] and "r1" in rows[1]  # failed first, then not reached
    assert "### Slowest targets" in summary and "`c1` | 9.0" in summary
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert len(report["extra"]["fleet"]["targets"]) == 5


def test_fleet_report_without_records_is_bad_input(github: GitHubRunner, run_cli) -> None:
    run = run_cli(env=github.with_inputs(command="fleet-report"), cwd=github.workspace)
    assert run.returncode == 2
    assert "db-deploy-fleet" in run.output and "Traceback" not in run.output


def test_shard_planner_for_10000_targets(tmp_path: Path) -> None:
    names = [f"tenant_{i:05d}_" + "x" * 50 for i in range(10_000)]  # 63 characters each
    assert all(len(n) == 63 for n in names)
    waves = [0] * 5 + [1] * 95 + [2] * 9_900
    fleet = Fleet("f", [Target(name=n, wave=w) for n, w in zip(names, waves, strict=True)])
    values = shards.outputs(fleet, 256)
    size = sum(len(k) + len(v.encode()) for k, v in values.items())
    assert size < shards.MAX_OUTPUTS_BYTES
    seen: list[str] = []
    for job, count in (("canary", 5), ("early", 95), ("rest", 9_900)):
        include = json.loads(values[f"{job}-matrix"])["include"]
        assert len(include) <= 256
        assert values[f"{job}-count"] == str(count)
        members = [n for shard in include for n in shard["targets"].split(",")]
        assert len(members) == count
        sizes = {len(shard["targets"].split(",")) for shard in include}
        assert max(sizes) - min(sizes) <= 1
        seen += members
    assert sorted(seen) == sorted(names)
    # The plan job's command line, as the workflow runs it (stdlib only).
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps({"targets": [{"name": n, "wave": w} for n, w in zip(names, waves, strict=True)]})
    )
    out = tmp_path / "out"
    assert (
        shards.main(["--fleet-file", str(path), "--shards", "8", "--github-output", str(out)]) == 0
    )
    planned = parse_env_file(out.read_text())
    assert len(json.loads(planned["rest-matrix"])["include"]) == 8
    assert json.loads(planned["canary-matrix"])["include"][0]["shard"] == "canary-1"


def test_a_rest_of_several_waves_is_one_shard_run_in_order(tmp_path: Path, capsys) -> None:
    """Shards of one job cannot wait for each other: waves 2..5 in `rest` run in one job, in
    order, so that no wave starts before every target of the waves before it succeeded."""
    names = [f"tenant_{i:05d}_" + "x" * 50 for i in range(10_000)]
    waves = [0] * 5 + [1] * 95 + [2 + i % 4 for i in range(9_900)]
    fleet = Fleet("f", [Target(name=n, wave=w) for n, w in zip(names, waves, strict=True)])
    planned = shards.plan(fleet, 8)
    assert planned["rest"]["waves"] == [2, 3, 4, 5]
    rest = planned["rest"]["matrix"]["include"]  # type: ignore[index]
    assert len(rest) == 1 and len(rest[0]["targets"].split(",")) == 9_900
    assert len(planned["early"]["matrix"]["include"]) == 8  # type: ignore[index]
    values = shards.outputs(fleet, 256)
    assert sum(len(k) + len(v.encode()) for k, v in values.items()) < shards.MAX_OUTPUTS_BYTES
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps(
            {"targets": [{"name": n, "wave": w} for n, w in zip(names, waves, strict=True)][:200]}
        )
    )
    assert (
        shards.main(
            ["--fleet-file", str(path), "--shards", "4", "--github-output", str(tmp_path / "o")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "rest: 100 target(s) in 1 shard(s), waves 2, 3, 4, 5 in order inside one job" in out
    assert "::notice title=Fleet plan::rest holds waves 2, 3, 4, 5" in out


def test_planner_refuses_a_bad_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fleet.yml"
    path.write_text("targets:\n  - name: 'bad name'\n")
    assert shards.main(["--fleet-file", str(path)]) == 2
    assert "targets[0]" in capsys.readouterr().err


def test_summary_is_cut_cleanly_for_thousands_of_targets() -> None:
    targets = [
        record(f"tenant_{i:05d}", "failed" if i % 3 == 0 else "success", error="e" * 250)
        for i in range(20_000)
    ]
    fleet = FleetResult(targets=targets, max_parallel=4, waves=[0])
    result = RunResult(command="fleet", telemetry=Telemetry(), status=fleet.status)
    result.extra["fleet"] = fleet
    result.report_path = "db-deploy-report.json"
    text = render.markdown(result, fleet)
    assert len(text.encode()) < 1024 * 1024 - 16 * 1024
    assert "more target(s) not shown" in text
    assert text.rstrip().endswith("(every target)</sub>")
    rows = [
        line for line in text.splitlines() if line.startswith("| ❌") or line.startswith("| ✅")
    ]
    assert rows and all(r.startswith("| ❌") for r in rows[: len(rows) // 2])
    assert all(r.endswith("|") for r in rows)  # whole rows only
    message = render.slack(result, fleet)
    assert len(json.dumps(message)) < 40_000
    assert "and 6652 more" in json.dumps(message)


def test_one_slack_message_for_the_fleet(github: GitHubRunner, run_cli, httpserver) -> None:
    folder = github.workspace / "db-deploy-fleet"
    folder.mkdir()
    for i in range(30):
        write_record(folder, record(f"t{i}", "failed" if i < 3 else "success", error="boom"))
    httpserver.expect_request("/services/T0/B0/fleetSecretToken").respond_with_data("ok")
    url = httpserver.url_for("/services/T0/B0/fleetSecretToken")
    run = run_cli(
        env=github.with_inputs(command="fleet-report", **{"slack-webhook-url": url}),
        cwd=github.workspace,
    )
    assert run.returncode == 1, run.stderr
    assert len(httpserver.log) == 1
    message = json.loads(httpserver.log[0][0].get_data())
    text = json.dumps(message)
    assert "27/30 targets ok" in text and "`t0`" in text


def test_planner_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """As the plan job runs it: the runner's python3, nothing installed (-S: no site-packages)."""
    import subprocess
    import sys

    from tests.helpers import REPO

    (tmp_path / "fleet.yml").write_text("targets:\n  - a\n  - {name: b, wave: 1}\n  - c\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-m",
            "deployer.fleet.shards",
            "--fleet-file",
            "fleet.yml",
            "--shards",
            "2",
            "--github-output",
            str(out),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    planned = parse_env_file(out.read_text())
    assert json.loads(planned["canary-matrix"])["include"] == [
        {"shard": "canary-1", "targets": "a"},
        {"shard": "canary-2", "targets": "c"},
    ]
    assert planned["early-count"] == "1" and planned["rest-count"] == "0"
    assert json.loads(planned["rest-matrix"]) == {"include": []}
