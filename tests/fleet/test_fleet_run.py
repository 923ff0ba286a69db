"""`db-deploy fleet` against real databases on the embedded server: waves, fail-fast, a broken
and an unreachable target, re-runs, cancellation."""

from __future__ import annotations

import json

from tests.helpers import EmbeddedServer


def fleet_file(server: EmbeddedServer, targets: list[str], extra: str = "") -> str:
    lines = [
        "defaults:",
        f"  database-url: postgresql://postgres@/{{name}}?host={server.dir}",
        "  migrations-path: migrations",
        "  connect-retries: 1",
        "  connect-timeout: 10s",
        "targets:",
    ]
    lines += targets
    return "\n".join(lines) + "\n" + extra


def test_two_waves_broken_and_unreachable(pg_server, databases, fleet_project, run_fleet) -> None:
    canary, a, broken, c = databases(4)
    broken.execute("CREATE TABLE u (id int)")  # 0002_u cannot create it: that revision fails
    text = fleet_file(
        pg_server,
        [
            f"  - name: {canary.name}",
            "    wave: 0",
            f"  - name: {a.name}",
            "    wave: 1",
            f"  - name: {broken.name}",
            "    wave: 1",
            "  - name: gone",
            "    wave: 1",
            "    database-url: postgresql://postgres@/gone?host=/nonexistent/socket/dir",
            f"  - {{name: {c.name}, wave: 1}}",
        ],
    )
    out = run_fleet(text, **{"max-parallel": "2"})
    assert out.run.returncode == 1, out.run.stderr
    assert out.outputs["status"] == "partial"
    assert out.outputs["targets-total"] == "5"
    assert out.outputs["targets-succeeded"] == "3"
    assert out.outputs["targets-failed"] == "2"
    assert sorted(json.loads(out.outputs["failed-targets"])) == sorted([broken.name, "gone"])
    for db in (canary, a, c):
        assert out.status(db.name) == "success"
        assert db.tables() >= {"t", "u"}
    assert out.status(broken.name) == "failed"
    assert out.record(broken.name)["failed_step"] == "migrate"
    assert "already exists" in out.record(broken.name)["error"]
    assert out.status("gone") == "failed"
    # One summary, failures first.
    assert out.summary.count("### Targets") == 1
    first_rows = [line for line in out.summary.splitlines() if line.startswith("| ❌")]
    assert len(first_rows) == 2
    assert out.summary.index("| ❌") < out.summary.index("| ✅")
    assert len(out.report["extra"]["fleet"]["targets"]) == 5

    # Re-run: the deployed targets are no-ops; only the broken ones fail again.
    again = run_fleet(text, **{"max-parallel": "2"})
    assert again.outputs["targets-noop"] == "3", [again.record(d.name) for d in (canary, a, c)]
    assert again.outputs["targets-failed"] == "2"
    assert again.outputs["status"] == "partial"


def test_failed_canary_stops_later_waves(pg_server, databases, fleet_project, run_fleet) -> None:
    canary, a, b = databases(3)
    canary.execute("CREATE TABLE t (id int)")  # 0001_t fails on the canary
    text = fleet_file(
        pg_server,
        [f"  - {{name: {canary.name}, wave: 0}}", f"  - {{name: {a.name}, wave: 1}}"]
        + [f"  - {{name: {b.name}, wave: 2}}"],
    )
    out = run_fleet(text)
    assert out.run.returncode == 1
    assert out.outputs["status"] == "failed"
    assert out.status(canary.name) == "failed"
    assert out.status(a.name) == "not-reached"
    assert out.status(b.name) == "not-reached"
    assert "u" not in a.tables() and "t" not in a.tables()
    assert "not reached" in out.outputs["error"]


def test_fail_fast_stops_the_wave(pg_server, databases, fleet_project, run_fleet) -> None:
    first, second, third = databases(3)
    first.execute("CREATE TABLE t (id int)")
    text = fleet_file(pg_server, [f"  - {db.name}" for db in (first, second, third)])
    out = run_fleet(text, **{"max-parallel": "1", "fail-fast": "true"})
    assert out.outputs["status"] == "failed"
    assert [out.status(db.name) for db in (first, second, third)] == [
        "failed",
        "not-reached",
        "not-reached",
    ]
    # Without fail-fast the others still deploy.
    out = run_fleet(text, **{"max-parallel": "1"})
    records = [out.record(db.name) for db in (first, second, third)]
    assert [r["status"] for r in records] == [
        "failed",
        "success",
        "success",
    ], records


def test_command_inputs_win_dry_run_holds(pg_server, databases, fleet_project, run_fleet) -> None:
    (db,) = databases(1)
    text = fleet_file(pg_server, [f"  - name: {db.name}", "    dry-run: false"])
    out = run_fleet(text, "--dry-run")
    assert out.run.returncode == 0, out.run.stderr
    assert "t" not in db.tables()
    child = json.loads((out.folder / f"{db.name}.json").read_text())
    assert child["dry_run"] is True
    assert out.record(db.name)["pending_count"] == 2 or child["migrate"]["dry_run"]


def test_bad_entry_is_exit_2_before_anything_runs(
    pg_server, databases, fleet_project, run_fleet, github
) -> None:
    (db,) = databases(1)
    out = run_fleet(fleet_file(pg_server, [f"  - {db.name}", "  - 'x?host=evil'"]))
    assert out.run.returncode == 2
    assert "targets[1]" in out.outputs["error"] and "[A-Za-z0-9_-]" in out.outputs["error"]
    assert not (github.workspace / "db-deploy-fleet").exists()
    assert "Traceback" not in out.run.output
    out = run_fleet(fleet_file(pg_server, [f"  - name: {db.name}", "    lock-timeout: banana"]))
    assert out.run.returncode == 2
    assert f"target {db.name}: invalid lock-timeout" in out.outputs["error"]
    assert "t" not in db.tables()


def test_sigterm_reaches_every_child(
    pg_server, databases, fleet_project, github, admin_engine
) -> None:
    import signal
    import subprocess
    import sys
    import time

    import sqlalchemy as sa

    fleet_project.add("0003_slow", "op.execute('SELECT pg_sleep(60)')")
    dbs = databases(2)
    (github.workspace / "fleet.yml").write_text(
        fleet_file(pg_server, [f"  - {d.name}" for d in dbs])
    )
    env = github.with_inputs(command="fleet", **{"fleet-file": "fleet.yml", "max-parallel": "2"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer"],
        env=env,
        cwd=github.workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def sleeping() -> set[str]:
        with admin_engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT datname FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")
            )
            return {r[0] for r in rows}

    deadline = time.monotonic() + 90
    while sleeping() != {d.name for d in dbs} and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert sleeping() == {d.name for d in dbs}
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:  # the children's sessions are gone
        time.sleep(0.2)
    assert not sleeping()
    folder = github.workspace / "db-deploy-fleet"
    for d in dbs:
        record = json.loads((folder / f"{d.name}.target.json").read_text())
        assert record["status"] == "cancelled"
    outputs = github.output_file.read_text()
    assert "cancelled" in outputs
    assert "0003_slow" not in {r[0] for r in dbs[0].rows("SELECT version_num FROM alembic_version")}


def test_template_secret_is_masked_everywhere(
    pg_server, databases, fleet_project, run_fleet, github
) -> None:
    (db,) = databases(1)
    password = "Sup3r:s3cr3t@pw/x"
    text = (
        "defaults:\n"
        f"  database-url: postgresql://postgres:${{FLEET_PASSWORD}}@/{{name}}?host={pg_server.dir}\n"
        f"targets:\n  - {db.name}\n  - name: gone\n"
        "    database-url: postgresql://postgres:${FLEET_PASSWORD}@/gone?host=/nonexistent/dir\n"
        "    connect-retries: 1\n"
    )
    out = run_fleet(text, env={"FLEET_PASSWORD": password})
    assert out.status(db.name) == "success", out.record(db.name)
    assert out.status("gone") == "failed"
    logs = "\n".join(
        line for line in out.run.output.splitlines() if not line.startswith("::add-mask::")
    )
    assert "::add-mask::" in out.run.output  # the runner is told first
    seen = [logs, out.summary, json.dumps(out.outputs), json.dumps(out.report)]
    seen += [p.read_text() for p in out.folder.iterdir()]
    encoded = "Sup3r%3As3cr3t%40pw%2Fx"
    for text in seen:
        assert password not in text and encoded not in text and "s3cr3t" not in text
