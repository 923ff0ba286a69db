"""The `db-deploy` command line (and the container's entrypoint): parse once, run, publish.

    db-deploy [deploy|plan|status|smoke|seed] [--database-url URL] [--run-seed] …

Exit codes: 0 success (or nothing to do), 1 the deploy failed, 2 bad input or configuration,
3 the database could not be reached or the deploy lock not taken in time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from deployer import __version__
from deployer.errors import EXIT_BAD_INPUT, ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"db-deploy: error: {message} (see db-deploy --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_bare_before_command(argv), namespace)


def _bare_before_command(argv: list[str]) -> list[str]:
    """A boolean flag takes a value (`--run-seed true`), so in `--run-seed deploy` the command
    would be read as its value: a bare boolean flag right before a command is given its value
    here (`--run-seed=true deploy`, `--no-run-seed deploy` stays)."""
    from deployer.settings import COMMANDS, Settings

    flags = {
        f"--{n.replace('_', '-')}" for n, f in Settings.model_fields.items() if f.annotation is bool
    }
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        if token == "--":
            break
        if token in flags and out[i + 1] in COMMANDS:
            out[i] = f"{token}=true"
    return out


def build_parser() -> argparse.ArgumentParser:
    """The flags, one per setting (deployer/settings.py): `--database-url URL`, `--run-seed
    [true|false]` and `--no-run-seed`; the values are checked with the rest of the settings."""
    from deployer.settings import COMMANDS, Settings, env_names

    parser = _Parser(
        prog="db-deploy",
        description="Deploy PostgreSQL schema changes with Alembic: preflight, migrate, seed, "
        "status, smoke; report to GitHub, Slack, JSON and the terminal.",
        epilog="A flag wins over the action input of its name (INPUT_<NAME>), which wins over "
        "the environment variable shown as [env NAME]. Exit codes: 0 ok, 1 deploy failed, "
        "2 bad input, 3 unreachable.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "command_arg",
        nargs="?",
        default=None,
        choices=COMMANDS,
        metavar="COMMAND",
        help=f"one of {', '.join(COMMANDS)} (default: deploy)",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if env := env_names(name):
            help_text += f" [env {env[-1]}]"
        if name == "command":  # the positional argument; the flag stays for symmetry
            parser.add_argument(flag, dest=name, metavar="COMMAND", help=argparse.SUPPRESS)
        elif name == "embedded":  # an optional value: the folder
            parser.add_argument(flag, dest=name, nargs="?", const="", metavar="DIR", help=help_text)
        elif field.annotation is bool:
            no = f"--no-{flag[2:]}"
            help_text += f" (bare: true; {no}: false)"
            parser.add_argument(
                flag, dest=name, nargs="?", const=True, metavar="true|false", help=help_text
            )
            parser.add_argument(
                no, dest=name, action="store_const", const=False, help=argparse.SUPPRESS
            )
        else:
            metavar = "DIR" if name == "workspace" else "VALUE"
            parser.add_argument(flag, dest=name, metavar=metavar, help=help_text)
    parser.add_argument(
        "--debug",
        dest="debug",
        action="store_true",
        help="on an internal error, include the traceback in the report",
    )
    parser.add_argument("--version", action="version", version=f"db-deploy {__version__}")
    return parser


def raw_secret_values(environ: Mapping[str, str]) -> list[str]:
    """Every secret setting's value as given, wherever the environment holds it (its validation
    aliases: both INPUT_ spellings and the plain variable), before validation: masked even when
    it fails to parse."""
    from deployer.redact import url_secrets
    from deployer.settings import env_names, secret_fields

    out: list[str] = []
    for name in secret_fields():
        for key in env_names(name):
            value = environ.get(key, "").strip()
            if value:
                out += url_secrets(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (`argv`: sys.argv[1:] by default) in this interpreter as it is: for
    tests and other Python code. The process entry point is `console_main`."""
    return _main(argv, before_run=_nothing)


def console_main() -> int:
    """The entry point of a process of its own: the `db-deploy` script, `python -m deployer`,
    the container's entrypoint.py. It runs main() with the garbage collector off while the
    process starts, so that start-up and exit cost what bare Alembic's do (bench/README.md,
    "Where the time goes"): importing pydantic, SQLAlchemy and the deployer and building the
    settings allocate long-lived objects by the hundred thousand, and every full collection
    walks all of them again. Before the pipeline runs anything of the user's (env.py, the
    revisions, an install, the seed), `_user_code_next` imports the libraries the command uses,
    freezes what exists and turns the collector back on.

    The process's entry point is a small parent (deployer/supervise.py: standard library only)
    that runs this as its child, forwards SIGINT/SIGTERM to it, and has `report_unfinished`
    write the failed outputs, summary and report (exit 1) when the child ended without
    finishing. Here SIGINT/SIGTERM cancel the run (deployer/cancel.py): status `cancelled`,
    exit 130/143."""
    from deployer import cancel

    gc.disable()
    cancellation = cancel.Cancellation()
    cancellation.hooks.append(_cancel_on_server)
    cancellation.install()
    try:
        return _main(None, before_run=_user_code_next)
    finally:
        cancel.finished()


def _cancel_on_server() -> None:
    """From the cancel thread: cancel the statements the run has running (a driver blocked in
    C has not let the main thread take the signal)."""
    from deployer import db

    db.cancel_running()


def report_unfinished(message: str, signum: int = 0) -> int:
    """In the parent, when the deployer ended without finishing (`message` says how): the
    outputs, summary and report written here, status failed, one line, exit 1 (or, when the
    parent forwarded SIGINT/SIGTERM `signum`, status cancelled, exit 130/143)."""

    def run(args: dict[str, Any], inv: _Invocation) -> int:
        from deployer.publish import publish
        from deployer.results import RunResult, Telemetry, utcnow
        from deployer.settings import artefact_paths

        settings = artefact_paths(args)
        cancelled = signum in (2, 15)
        result = RunResult(
            command=settings.command,
            telemetry=Telemetry.from_env(),
            status="cancelled" if cancelled else "failed",
            exit_code=128 + signum if cancelled else 1,
            failed_step=settings.command,
            error=message,
            error_class="cancelled" if cancelled else "internal",
        )
        result.finished_at = utcnow()
        options = _publish_options(settings)
        publish(result, options, inv.redactor, gh=inv.gh, console=inv.console, stdout=sys.stdout)
        return result.exit_code

    return _main(None, before_run=_nothing, run=run)


def _user_code_next(command: str) -> None:
    """What `command` imports on its way is imported now (`pipeline.preload`: Alembic, the
    driver), and what exists (modules, classes, the settings: alive until exit anyway) is
    frozen: kept out of every later collection and out of the one at exit, which would take it
    apart only to hand its memory back to an operating system about to reclaim it. Collection is
    on again, as usual, for the user's code and the rest of the run; what the user's code
    leaves is collected at exit as under bare Alembic, so its finalizers still run (a file it
    left open is flushed, a connection it left in a pool is closed)."""
    from deployer.commands import preload

    preload(command)
    gc.freeze()
    gc.enable()


def _nothing(command: str) -> None:
    pass


def _main(
    argv: Sequence[str] | None,
    *,
    before_run: Callable[[str], None],
    run: Callable[[dict[str, Any], _Invocation], int] | None = None,
) -> int:
    args = vars(build_parser().parse_args(argv))
    debug = bool(args.pop("debug", False))
    positional = args.pop("command_arg", None)
    if positional:
        args["command"] = positional

    from deployer.github import GitHubConsole, GitHubContext
    from deployer.redact import RedactingStream, Redactor, activate, url_secrets
    from deployer.render.terminal import TerminalConsole
    from deployer.settings import secret_fields

    redactor = Redactor(raw_secret_values(os.environ))
    activate(redactor)  # for every place that cuts text: redacted first (redact.cut)
    for key in secret_fields():
        if args.get(key):
            redactor.add(*url_secrets(str(args[key])))
    gh = GitHubContext.from_env()
    real_stdout = sys.stdout
    console: GitHubConsole | TerminalConsole
    console = GitHubConsole(real_stdout) if gh else TerminalConsole(sys.stderr)
    if isinstance(console, GitHubConsole):
        console.mask(*redactor.to_mask)  # before anything else is printed
    sys.stdout = RedactingStream(real_stdout, redactor)
    sys.stderr = RedactingStream(sys.__stderr__ or sys.stderr, redactor)
    if isinstance(console, GitHubConsole):
        console.stream = sys.stdout
    else:
        console.stream = sys.stderr
    shown_before = warnings.showwarning
    warnings.showwarning = _warning_line(console)  # one clean line, not a file path and code
    try:
        return (run or _run)(args, _Invocation(redactor, gh, console, debug, before_run))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - never a traceback for the user, unless asked
        console.error(redactor(f"internal error: {type(exc).__name__}: {exc}"))
        if debug:
            import traceback

            sys.stderr.write(traceback.format_exc())
        return 1
    finally:
        with contextlib.suppress(Exception):
            for stream in (sys.stdout, sys.stderr):
                getattr(stream, "drain", stream.flush)()  # all of it, held-back text too
        sys.stdout, sys.stderr = real_stdout, sys.__stderr__ or sys.stderr
        warnings.showwarning = shown_before


def _warning_line(console: Any) -> Callable[..., None]:
    """Python's warnings during the run (a library's, the user's code's) as one progress line
    each: the category and the message, without the file path and source line Python shows."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        console.info(f"warning: {category.__name__}: {' '.join(str(message).split())}")

    return show


@dataclass(frozen=True)
class _Invocation:
    """What main() set up for this run, for the functions that carry it out: the redactor of
    every secret, the GitHub context (None outside Actions), the console, --debug, and what to
    do before the pipeline runs anything of the user's."""

    redactor: Any
    gh: Any
    console: Any
    debug: bool
    before_run: Callable[[str], None]


def _run(args: dict[str, Any], inv: _Invocation) -> int:
    from pydantic import SecretStr

    from deployer.compat import check_versions
    from deployer.settings import env_names, load_settings

    try:
        settings = load_settings(args)
        check_versions()  # Alembic and SQLAlchemy in their supported ranges (deployer/compat.py)
    except ConfigError as exc:
        return _refused(exc, args, inv)
    console = inv.console
    known = set(inv.redactor.to_mask)
    inv.redactor.add(*settings.secrets)
    new = [s for s in inv.redactor.to_mask if s not in known]  # every form of each
    if hasattr(console, "mask"):
        console.mask(*new)
    # The GitHub token is the publisher's alone: env.py and the revisions, which run in this
    # process (a pull request's own code in a plan), do not find it in the environment.
    for name in env_names("github_token"):
        os.environ.pop(name, None)

    with contextlib.ExitStack() as stack:
        if settings.embedded is not None:
            from deployer.embedded import embedded_server

            # An explicit --embedded never touches a database it was not asked to: a URL flag
            # beside it is a contradiction (refused); URLs from the environment are ignored.
            flags = [f"--{n.replace('_', '-')}" for n in URL_SETTINGS if args.get(n)]
            if flags:
                both = ConfigError(f"--embedded and {' and '.join(flags)} contradict: give one")
                return _refused(both, args, inv, settings)
            try:
                url = stack.enter_context(embedded_server(settings.embedded))
            except ConfigError as exc:
                return _refused(exc, args, inv, settings)
            if ignored := ignored_urls(os.environ):
                console.info(
                    f"--embedded: ignoring {', '.join(ignored)} from the environment "
                    "(no other database is touched)"
                )
            folder = url.split("host=", 1)[1].split("&", 1)[0]
            console.info(f"embedded PostgreSQL with pgvector started (in {folder})")
            cleared = {n: SecretStr("") for n in URL_SETTINGS}
            settings = settings.model_copy(update={**cleared, "database_url": SecretStr(url)})
        return _execute(settings, inv, report=_report_wanted(args, inv))
    return 0  # unreachable; keeps type checkers content


# The database URLs an explicit --embedded replaces (a flag naming one beside it is refused).
URL_SETTINGS = ("database_url", "direct_database_url", "scratch_database_url")


def ignored_urls(environ: Mapping[str, str]) -> list[str]:
    """The environment variables holding a database URL that --embedded ignores."""
    from deployer.settings import env_names

    return [e for n in URL_SETTINGS for e in env_names(n) if environ.get(e, "").strip()]


def _refused(exc: ConfigError, args: dict[str, Any], inv: _Invocation, settings: Any = None) -> int:
    """Bad input before the pipeline could start: still write the outputs, the summary and the
    report (status failed, failed-step config), with the one error line. Slack is not told: its
    webhook is among the input that could not be trusted."""
    from pydantic import SecretStr

    from deployer.errors import classify
    from deployer.publish import publish
    from deployer.results import RunResult, Telemetry, utcnow
    from deployer.settings import artefact_paths

    if settings is None:
        # Where the artefacts go: the path settings alone, read by the same fields and sources
        # (flag > input > environment > default); the others at their defaults.
        settings = artefact_paths(args)
    settings = settings.model_copy(update={"slack_webhook_url": SecretStr("")})
    result = RunResult(
        command=settings.command,
        telemetry=Telemetry.from_env(),
        status="failed",
        exit_code=exc.exit_code,
        failed_step=exc.step or "config",
        error=exc.message,
        error_class=classify(exc, exc.step or "config"),
    )
    result.finished_at = utcnow()
    options = _publish_options(settings, report=_report_wanted(args, inv))
    publish(result, options, inv.redactor, gh=inv.gh, console=inv.console, stdout=sys.stdout)
    return exc.exit_code


def _execute(settings: Any, inv: _Invocation, *, report: bool = True) -> int:
    from deployer.commands import execute
    from deployer.publish import publish

    inv.before_run(settings.command)
    result = execute(settings, inv.console, debug=inv.debug)  # SIGINT/SIGTERM: cancelled
    _shown_paths(result, settings.workspace_dir)
    options = _publish_options(settings, report=report)
    publish(result, options, inv.redactor, gh=inv.gh, console=inv.console, stdout=sys.stdout)
    if inv.debug and result.extra.get("traceback"):
        sys.stderr.write(str(result.extra["traceback"]))
    return result.exit_code


def _shown_paths(result: Any, workspace: Path) -> None:
    """The record's paths as the summary and the report show them: relative to the workspace
    when inside it (the script folder, each revision's file, the seed)."""

    folders: dict[str, str] = {}  # each folder resolved once (the revisions share a few)

    def shown(path: str) -> str:
        if not path or not os.path.isabs(path):
            return path
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        try:
            return str(Path(folders[folder], name).relative_to(workspace))
        except ValueError:
            return path

    m, st, sd = result.migrate, result.status_check, result.seed
    if m is not None:
        m.script_location = shown(m.script_location)
    for rev in [*(m.pending if m else []), *(st.pending if st else [])]:
        rev.path = shown(rev.path)
    if sd is not None:
        sd.path = shown(sd.path)


def _report_wanted(args: Mapping[str, Any], inv: _Invocation) -> bool:
    """The JSON report is written on GitHub (as an artefact of the job), elsewhere only when
    report-file is given (the flag, the input or its variable): a terminal run leaves no file
    behind in the current folder unless asked."""
    from deployer.settings import env_names

    if inv.gh is not None or args.get("report_file"):
        return True
    return any(os.environ.get(e, "").strip() for e in env_names("report_file"))


def _publish_options(settings: Any, *, report: bool = True) -> Any:
    """Where publish() sends the run's results, read once from the settings. `report`: write
    the JSON report (see `_report_wanted`)."""
    from deployer.publish import PublishOptions

    return PublishOptions(
        workspace=settings.workspace_dir,
        report_file=settings.resolve(settings.report_file) if report else None,
        summary_file=settings.resolve(settings.summary_file) if settings.summary_file else None,
        output_file=settings.resolve(settings.output_file) if settings.output_file else None,
        slack_webhook=settings.webhook,
        slack_timeout=settings.slack_timeout,
        github_token=settings.github_token.get_secret_value(),
        comment_marker=settings.environment,
    )
