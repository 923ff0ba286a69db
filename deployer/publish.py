"""Publishing a finished run: where its record goes.

In order: Slack (when a webhook is set), the JSON report, then on GitHub the job's outputs,
step summary, report group and annotations, elsewhere the terminal report on stdout; and last
the summary and outputs files asked for on the command line. Every renderer reads the same
RunResult; every byte written passes through the Redactor. What the GitHub runner expects
(workflow commands, the outputs file's format, the summary's size) is deployer/github.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from deployer import github, notify
from deployer.files import give_to_owner
from deployer.redact import Redactor, redact_record
from deployer.render import json_report, markdown, outputs, risk, slack, terminal
from deployer.results import RunResult

Console = github.GitHubConsole | terminal.TerminalConsole


@dataclass(frozen=True)
class PublishOptions:
    """Where the results go: absolute paths, built once by the caller from the settings."""

    workspace: Path  # the report's path is shown relative to it when inside it
    report_file: Path | None  # None: no JSON report (a terminal run without report-file)
    summary_file: Path | None = None  # the markdown summary, also outside GitHub
    output_file: Path | None = None  # the job outputs, also outside GitHub
    slack_webhook: str = field(default="", repr=False)  # a secret: never in a repr
    slack_timeout: float = notify.TIMEOUT
    github_token: str = field(default="", repr=False)  # a secret: the plan's PR comment
    comment_marker: str = ""  # one comment per environment


def publish(
    result: RunResult,
    options: PublishOptions,
    redactor: Redactor,
    *,
    gh: github.GitHubContext | None,
    console: Console,
    stdout: TextIO,
) -> None:
    if options.report_file is not None:
        result.report_path = shown_path(options.report_file, options.workspace)
    # Redact the record itself first: renderers cut long texts, and a secret cut in half would
    # no longer match in the final pass over each artefact.
    redact_record(result, redactor)
    if options.slack_webhook:
        _notify_slack(result, options, redactor, console)
    # The record is redacted; `_write` redacts the text as well.
    if options.report_file is not None:
        report = json_report.render(result)
        _write(options.report_file, report, "JSON report", result, redactor, console)

    # The markdown summary only where it goes (the job summary, a summary file, a PR comment).
    wanted = gh is not None or options.summary_file is not None
    summary = redactor(markdown.render(result)) if wanted else ""
    values = {k: redactor(v) for k, v in outputs.outputs(result).items()}
    if gh is not None:
        _to_github(
            result, gh, console, redactor, summary=summary, values=values, where=options.workspace
        )
        _risk_to_github(result, options, console, redactor, summary)
    else:
        _to_terminal(result, console, redactor, stdout)

    if options.summary_file:
        text = github.fit_summary(summary)
        _write(options.summary_file, text, "summary", result, redactor, console)
    if options.output_file:
        options.output_file.parent.mkdir(parents=True, exist_ok=True)
        github.write_outputs(options.output_file, values)
    # Running as root in a container: what we wrote in the workspace is its owner's.
    for path in (options.report_file, options.summary_file, options.output_file):
        if path is not None:
            give_to_owner(path, options.workspace)


def shown_path(path: Path, workspace: Path) -> str:
    """`path` as outputs name it: relative to the workspace when inside it (a later step on
    the host sees the workspace at another path)."""
    try:
        return str(path.relative_to(workspace))
    except ValueError:
        return str(path)


def _notify_slack(
    result: RunResult, options: PublishOptions, redactor: Redactor, console: Console
) -> None:
    """Post the message; a failure only adds a warning (Slack never changes the result)."""
    payload = redactor.obj(slack.render(result))
    try:
        failure = notify.post_slack(options.slack_webhook, payload, timeout=options.slack_timeout)
    except Exception as exc:  # noqa: BLE001 - Slack never changes the deploy's result
        failure = f"Slack notification failed: {type(exc).__name__}"
    if failure:
        result.warnings.append(redactor(failure))
        console.warning(redactor(failure))


def _to_github(
    result: RunResult,
    gh: github.GitHubContext,
    console: Console,
    redactor: Redactor,
    *,
    summary: str,
    values: dict[str, str],
    where: Path | None = None,
) -> None:
    """The job's outputs and step summary, the report in a log group, an annotation (on the
    failing line of the file when known; `where`: the run's workspace)."""
    if gh.output:
        github.write_outputs(gh.output, values)
    if gh.summary:
        github.append_summary(gh.summary, summary)
    if isinstance(console, github.GitHubConsole):
        with console.step("report"):
            console.info(redactor(terminal.render(result)))
        if result.status in ("failed", "cancelled"):
            file, line = github.annotation_place(result.failure, where, gh.workspace)
            title = f"db-deploy {result.failed_step}"
            console.error(redactor(result.error), title=title, file=file, line=line)
        elif result.status == "noop":
            console.notice("nothing to migrate: the database is at the target revision")


def _risk_to_github(
    result: RunResult, options: PublishOptions, console: Console, redactor: Redactor, summary: str
) -> None:
    """The risk findings as annotations on the revision files (highest level first, ten at
    most, the rest in one notice) and, for a plan on a pull request with a token, the plan as
    one comment that later runs update."""
    if result.risk is None or not isinstance(console, github.GitHubConsole):
        return
    for a in risk.annotate(result.risk, str(options.workspace)):
        console.emit(
            github.command(
                a.kind, redactor(a.message), title=a.title, file=a.file, line=a.line or None
            )
        )
    if not (options.github_token and result.command == "plan"):
        return
    from deployer.risk import comment

    number = comment.pull_request_number(os.environ.get("GITHUB_EVENT_PATH"))
    repository = os.environ.get("GITHUB_REPOSITORY", "")
    if number is None or not repository:
        return
    outcome = comment.upsert(
        os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        repository,
        number,
        options.github_token,
        summary,
        mark=comment.marker(options.comment_marker),
    )
    if outcome.action == "read-only":
        console.notice(
            redactor(
                "the plan was not posted on the pull request (a read-only token, as for a "
                f"fork: {outcome.reason}); it is in the job summary"
            )
        )
    elif outcome.action == "failed":
        message = redactor(f"the plan could not be posted on the pull request: {outcome.reason}")
        result.warnings.append(message)
        console.warning(message)


def _to_terminal(result: RunResult, console: Console, redactor: Redactor, stdout: TextIO) -> None:
    """The report on stdout; a failure's one line on the console (stderr) as well when stdout
    is not a terminal (on a terminal the report already shows it: one error line)."""
    stdout.write(redactor(terminal.render(result)) + "\n")
    stdout.flush()
    failed = result.status in ("failed", "cancelled") and isinstance(
        console, terminal.TerminalConsole
    )
    if failed and not _is_terminal(stdout):
        console.error(redactor(result.error))


def _is_terminal(stream: TextIO) -> bool:
    """Whether `stream` (or the stream a RedactingStream wraps) is a terminal."""
    target = getattr(stream, "_target", stream)
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _write(
    path: Path, text: str, what: str, result: RunResult, redactor: Redactor, console: Console
) -> None:
    """Write `text` redacted, atomically; a failure becomes a warning of the run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(redactor(text), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        message = f"cannot write the {what} to {path}: {exc.strerror}"
        result.warnings.append(message)
        console.warning(message)
