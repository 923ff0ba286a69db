"""Everything GitHub-specific: workflow commands, masking, job outputs and the step summary.

Formats follow the runner (actions/runner) and @actions/core (actions/toolkit):
- workflow commands `::name k=v,k=v::data`, data escaped `%`→`%25`, CR→`%0D`, LF→`%0A`, property
  values also `:`→`%3A`, `,`→`%2C` (toolkit packages/core/src/command.ts);
- GITHUB_OUTPUT in the heredoc form with a fresh `ghadelimiter_<uuid>` delimiter, LF line ends
  (toolkit file-command.ts; the runner's EnvFileKeyValuePairs splits on LF only on Linux);
- the step summary is uploaded only under 1 MiB (runner FileCommandManager.cs
  AttachmentSizeLimit), so we keep it below that, cut at a line boundary.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from deployer.redact import neutralise

SUMMARY_LIMIT = 1024 * 1024  # bytes, the runner's AttachmentSizeLimit
SUMMARY_BUDGET = SUMMARY_LIMIT - 16 * 1024  # room for what other steps of the job append


def escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", **properties: str | int | None) -> str:
    props = ",".join(
        f"{k}={escape_property(str(v))}" for k, v in properties.items() if v not in (None, "")
    )
    # `##[` in the data too (the legacy parser looks for it anywhere): data, never a command.
    data = escape_data(message)
    if name != "add-mask":  # a secret is registered exactly as it is
        data = data.replace("##[", "##\u200b[")
    return f"::{name}{' ' + props if props else ''}::{data}"


def format_output(name: str, value: str) -> str:
    """One GITHUB_OUTPUT entry in the heredoc form, as @actions/core writes it."""
    while True:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        if delimiter not in name and delimiter not in value:
            break
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def write_outputs(path: Path, outputs: Mapping[str, str]) -> None:
    with path.open("a", encoding="utf-8", newline="\n") as f:
        for name, value in outputs.items():
            f.write(format_output(name, value))


def fit_summary(markdown: str, limit: int = SUMMARY_BUDGET) -> str:
    """Cut the markdown at a line boundary so that its UTF-8 size stays under `limit`."""
    data = markdown.encode("utf-8")
    if len(data) <= limit:
        return markdown
    note = (
        "\n\n> **Summary truncated** to stay under GitHub's 1 MiB step-summary limit; "
        "the JSON report holds everything.\n"
    )
    room = limit - len(note.encode("utf-8"))
    cut = data[:room].decode("utf-8", errors="ignore")
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    # Don't leave a dangling table row or an open code fence behind.
    if cut.count("```") % 2:
        cut += "\n```"
    return cut + note


def append_summary(path: Path, markdown: str) -> None:
    with path.open("a", encoding="utf-8", newline="\n") as f:
        f.write(fit_summary(markdown))


@dataclass(frozen=True)
class GitHubContext:
    """The runner's environment for this step (None outside GitHub Actions)."""

    output: Path | None
    summary: Path | None
    workspace: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GitHubContext | None:
        env = os.environ if environ is None else environ
        if env.get("GITHUB_ACTIONS") != "true":
            return None

        def path(name: str) -> Path | None:
            value = env.get(name, "")
            return Path(value) if value else None

        return cls(
            output=path("GITHUB_OUTPUT"),
            summary=path("GITHUB_STEP_SUMMARY"),
            workspace=path("GITHUB_WORKSPACE"),
        )


def annotation_place(
    failure: object, workspace: Path | None, repository: Path | None
) -> tuple[str, int | None]:
    """`file` and `line` for an annotation on the failing line: `failure.file` (relative to the
    run's `workspace`, or absolute) made relative to the repository (GITHUB_WORKSPACE: inside a
    container action the runner mounts the repository there and maps the path back). ("", None)
    when the file is not in the repository."""
    name = str(getattr(failure, "file", "") or "")
    if not name or repository is None:
        return "", None
    path = Path(name)
    if not path.is_absolute():
        if workspace is None:
            return "", None
        path = workspace / path
    try:
        shown = path.resolve().relative_to(repository.resolve()).as_posix()
    except ValueError:
        return "", None
    line = getattr(failure, "line", None)
    return shown, line if isinstance(line, int) else None


class GitHubConsole:
    """The run's progress as workflow commands: a group per step, annotations for problems."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, line: str, *, redact: bool = True) -> None:
        """Our own workflow command `line`, on a line of its own (through the redacting
        stream's `write_command` when there is one: it redacts but never neutralises it)."""
        write_command = getattr(self.stream, "write_command", None)
        if write_command is not None:
            write_command(line, redact=redact)
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def mask(self, *secrets: str) -> None:
        """`::add-mask::` each secret, before anything else is printed."""
        for secret in secrets:
            if secret and secret.strip():
                self.emit(command("add-mask", secret), redact=False)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.emit(command("group", name))
        try:
            yield
        finally:
            self.emit("::endgroup::")

    def info(self, message: str) -> None:
        """Text, not a command: no line of it (names from the database, a docstring, a server
        message) can start a workflow command (`neutralise`)."""
        self.stream.write(neutralise(message) + "\n")
        self.stream.flush()

    def warning(self, message: str, title: str = "db-deploy") -> None:
        self.emit(command("warning", message, title=title))

    def error(
        self, message: str, title: str = "db-deploy", *, file: str = "", line: int | None = None
    ) -> None:
        """An error annotation; with `file` (relative to the repository) and `line` GitHub
        shows it on that line of the file."""
        self.emit(command("error", message, title=title, file=file or None, line=line))

    def notice(self, message: str, title: str = "db-deploy") -> None:
        self.emit(command("notice", message, title=title))
