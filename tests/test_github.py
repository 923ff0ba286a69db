"""The GitHub module: workflow commands, outputs and the summary, checked by the runner's rules
(actions/runner src/Runner.Worker/FileCommandManager.cs, src/Runner.Common/ActionCommand.cs)."""

from __future__ import annotations

import json
from pathlib import Path

from deployer import github
from deployer.publish import PublishOptions, publish
from deployer.redact import Redactor
from deployer.results import RunResult, Telemetry
from tests.helpers import parse_env_file


def unescape_data(data: str) -> str:
    # ActionCommand.cs UnescapeValue for data: %0D, %0A, then %25 last.
    return data.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(value: str) -> str:
    return (
        value.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
    )


def test_outputs_round_trip_through_the_runner_parser(tmp_path: Path) -> None:
    path = tmp_path / "set_output_x"
    values = {
        "status": "success",
        "applied": json.dumps([{"revision": "0001", "description": "a\nb = c << d"}]),
        "multi": "line 1\nline 2\n\nline 4",
        "empty": "",
        "tricky": "EOF\nghadelimiter_fake\n=value<<x",
    }
    github.write_outputs(path, values)
    assert parse_env_file(path.read_text()) == values
    assert "\r" not in path.read_text()


def test_every_output_uses_a_fresh_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "out"
    github.write_outputs(path, {"a": "1", "b": "2"})
    headers = [line for line in path.read_text().splitlines() if "<<" in line]
    delims = {h.split("<<", 1)[1] for h in headers}
    assert len(delims) == 2 and all(d.startswith("ghadelimiter_") for d in delims)


def test_command_escaping() -> None:
    line = github.command("error", "100% bad\nsecond line", title="step: migrate, 1")
    name_props, data = line[2:].split("::", 1)
    assert name_props.startswith("error ")
    key, value = name_props[len("error ") :].split("=", 1)
    assert key == "title" and unescape_property(value) == "step: migrate, 1"
    assert unescape_data(data) == "100% bad\nsecond line"
    assert "\n" not in line


def test_summary_is_cut_below_the_runner_limit() -> None:
    rows = "\n".join(f"| public.table_{i} | {i} | ✅ |" for i in range(60_000))
    text = "## headline\n\n| Table | Rows | Result |\n|---|---:|---|\n" + rows + "\n"
    assert len(text.encode()) > github.SUMMARY_LIMIT
    cut = github.fit_summary(text)
    assert len(cut.encode()) <= github.SUMMARY_BUDGET < github.SUMMARY_LIMIT
    assert "Summary truncated" in cut
    body = cut.split("\n\n> **Summary truncated**")[0]
    assert body.endswith("|")  # cut at a row boundary, no half row


def test_summary_cut_closes_code_fences() -> None:
    text = "```sql\n" + "SELECT 1;\n" * 200_000 + "```\n"
    cut = github.fit_summary(text, limit=10_000)
    assert cut.count("```") % 2 == 0


def test_console_masks_and_groups() -> None:
    import io

    out = io.StringIO()
    console = github.GitHubConsole(out)
    console.mask("postgresql://u:pw@h/db", "", "  ")
    with console.step("migrate"):
        console.warning("lists, far: off")
    lines = out.getvalue().splitlines()
    assert lines[0] == "::add-mask::postgresql://u:pw@h/db"
    assert lines[1] == "::group::migrate"
    assert lines[2] == "::warning title=db-deploy::lists, far: off"
    assert lines[3] == "::endgroup::"
    assert len(lines) == 4  # empty secrets are not masked (the runner only warns on them)


# --------------------------------------------------------------------------- publish


def _failed_record(secret: str) -> RunResult:
    result = RunResult(
        command="deploy",
        telemetry=Telemetry(actor="octo"),
        status="failed",
        exit_code=1,
        failed_step="migrate",
        error=f"cannot connect with {secret}",
    )
    result.finished_at = result.started_at
    return result


def test_publish_on_github_writes_outputs_summary_and_an_annotation(tmp_path: Path) -> None:
    import io

    secret = "s3cr3t-password"
    gh = github.GitHubContext(
        output=tmp_path / "output", summary=tmp_path / "summary.md", workspace=tmp_path
    )
    out = io.StringIO()
    options = PublishOptions(workspace=tmp_path, report_file=tmp_path / "reports" / "r.json")
    publish(
        _failed_record(secret),
        options,
        Redactor([secret]),
        gh=gh,
        console=github.GitHubConsole(out),
        stdout=io.StringIO(),
    )
    outputs = parse_env_file((tmp_path / "output").read_text())
    assert outputs["status"] == "failed" and outputs["report-path"] == "reports/r.json"
    assert outputs["error"] == "cannot connect with ***"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("## ❌ db-deploy deploy **failed** at **migrate**")
    report = json.loads((tmp_path / "reports" / "r.json").read_text())
    assert report["error"] == "cannot connect with ***"
    log = out.getvalue()
    assert "::group::report" in log
    assert log.splitlines()[-1] == "::error title=db-deploy migrate::cannot connect with ***"
    everything = log + summary + (tmp_path / "output").read_text() + json.dumps(report)
    assert secret not in everything


def test_publish_outside_github_writes_the_files_asked_for(tmp_path: Path) -> None:
    import io

    from deployer.render.terminal import TerminalConsole

    secret = "s3cr3t-password"
    elsewhere = tmp_path / "elsewhere"
    options = PublishOptions(
        workspace=tmp_path / "ws",
        report_file=elsewhere / "r.json",
        summary_file=tmp_path / "ws" / "summary.md",
        output_file=tmp_path / "ws" / "out" / "outputs",
    )
    stdout, stderr = io.StringIO(), io.StringIO()
    publish(
        _failed_record(secret),
        options,
        Redactor([secret]),
        gh=None,
        console=TerminalConsole(stderr),
        stdout=stdout,
    )
    assert "❌ db-deploy deploy: failed (failed at migrate)" in stdout.getvalue()
    assert f"report {elsewhere / 'r.json'}" in stdout.getvalue()  # outside the workspace
    assert stderr.getvalue() == "error: cannot connect with ***\n"
    assert (tmp_path / "ws" / "summary.md").read_text().startswith("## ❌")
    outputs = parse_env_file((tmp_path / "ws" / "out" / "outputs").read_text())
    assert outputs["failed-step"] == "migrate"
    assert secret not in stdout.getvalue() + json.dumps(outputs)


def test_publish_options_never_show_the_webhook(tmp_path: Path) -> None:
    hook = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"
    options = PublishOptions(workspace=tmp_path, report_file=tmp_path / "r", slack_webhook=hook)
    assert hook not in repr(options)
