"""Publishing a finished run: Slack, the JSON report, GitHub outputs and summary, the terminal.

Every renderer reads the same RunResult; every byte written passes through the Redactor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from deployer import github, notify
from deployer.redact import Redactor, redact_record
from deployer.render import json_report, markdown, outputs, slack, terminal
from deployer.results import RunResult
from deployer.settings import Settings


def report_location(settings: Settings) -> tuple[Path, str]:
    """Where the JSON report goes, and how to name it in outputs: relative to the workspace
    when inside it (a later step on the host sees the workspace at another path)."""
    path = settings.resolve(settings.report_file)
    try:
        shown = str(path.relative_to(settings.workspace_dir))
    except ValueError:
        shown = str(path)
    return path, shown


def publish(
    result: RunResult,
    settings: Settings,
    redactor: Redactor,
    *,
    gh: github.GitHubContext | None,
    console: github.GitHubConsole | terminal.TerminalConsole,
    stdout: TextIO,
) -> None:
    path, shown = report_location(settings)
    result.report_path = shown
    # Redact the record itself first: renderers cut long texts, and a secret cut in half would
    # no longer match in the final pass over each artefact.
    redact_record(result, redactor)

    if settings.webhook:
        payload = redactor.obj(slack.render(result))
        try:
            failure = notify.post_slack(
                settings.webhook,
                payload,  # type: ignore[arg-type]
                timeout=settings.slack_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - Slack never changes the deploy's result
            failure = f"Slack notification failed: {type(exc).__name__}"
        if failure:
            result.warnings.append(redactor(failure))
            console.warning(redactor(failure))

    _write(
        path,
        json_report.render(result),  # the record is redacted; `_write` redacts the text
        redactor,
        what="JSON report",
        result=result,
        console=console,
    )

    summary = redactor(markdown.render(result))
    values = {k: redactor(v) for k, v in outputs.outputs(result).items()}

    if gh is not None:
        if gh.output:
            github.write_outputs(gh.output, values)
        if gh.summary:
            github.append_summary(gh.summary, summary)
        if isinstance(console, github.GitHubConsole):
            with console.step("report"):
                console.info(redactor(terminal.render(result)))
            if result.status == "failed":
                console.error(redactor(result.error), title=f"db-deploy {result.failed_step}")
            elif result.status == "noop":
                console.notice("nothing to migrate: the database is at the target revision")
    else:
        stdout.write(redactor(terminal.render(result)) + "\n")
        stdout.flush()
        if result.status == "failed" and isinstance(console, terminal.TerminalConsole):
            console.error(redactor(result.error))

    if settings.summary_file:
        _write(
            settings.resolve(settings.summary_file),
            github.fit_summary(summary),
            redactor,
            what="summary",
            result=result,
            console=console,
        )
    if settings.output_file:
        target = settings.resolve(settings.output_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        github.write_outputs(target, values)


def _write(
    path: Path,
    text: str,
    redactor: Redactor,
    *,
    what: str,
    result: RunResult,
    console: github.GitHubConsole | terminal.TerminalConsole,
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(redactor(text), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        message = f"cannot write the {what} to {path}: {exc.strerror}"
        result.warnings.append(message)
        console.warning(message)
