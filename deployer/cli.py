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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from deployer import __version__
from deployer.errors import EXIT_BAD_INPUT, ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"db-deploy: error: {message} (see db-deploy --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from deployer.settings import COMMANDS, Settings, _meta

    parser = _Parser(
        prog="db-deploy",
        description="Deploy PostgreSQL schema changes with Alembic: preflight, migrate, seed, "
        "status, smoke; report to GitHub, Slack, JSON and the terminal.",
        epilog="Every flag is also an action input (INPUT_<NAME>) and a plain environment "
        "variable; flags win. Exit codes: 0 ok, 1 deploy failed, 2 bad input, 3 unreachable.",
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
        meta = _meta(field)
        flag = meta["input"]
        if name in {"embedded", "workspace", "command"}:
            continue
        help_text = meta.get("description") or {
            "summary-file": "also write the markdown summary to this file",
            "output-file": "also write the outputs (GITHUB_OUTPUT format) to this file",
        }.get(flag, "")
        if meta.get("env"):
            help_text += f" [env {meta['env']}]"
        if field.annotation is bool:
            parser.add_argument(
                f"--{flag}", dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(f"--{flag}", dest=name, metavar="VALUE", help=help_text)
    parser.add_argument("--command", dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    parser.add_argument(
        "--embedded",
        dest="embedded",
        nargs="?",
        const="",
        metavar="DIR",
        help="with no database URL, deploy to a local PostgreSQL with pgvector "
        "started in DIR (default: a temporary folder, removed at exit)",
    )
    parser.add_argument(
        "--workspace",
        dest="workspace",
        metavar="DIR",
        help="folder that relative paths start from (default: GITHUB_WORKSPACE "
        "or the current folder)",
    )
    parser.add_argument(
        "--debug",
        dest="debug",
        action="store_true",
        help="on an internal error, include the traceback in the report",
    )
    parser.add_argument("--version", action="version", version=f"db-deploy {__version__}")
    return parser


def raw_secret_values(environ: Mapping[str, str]) -> list[str]:
    """Every secret input's value as given (both INPUT_ spellings and the plain variable),
    before validation: masked even when it fails to parse."""
    from deployer.redact import url_secrets
    from deployer.settings import Settings, _meta

    out: list[str] = []
    for field in Settings.model_fields.values():
        meta = _meta(field)
        if not meta.get("secret"):
            continue
        name = meta["input"].upper()
        for key in (f"INPUT_{name}", f"INPUT_{name.replace('-', '_')}", meta.get("env") or ""):
            value = environ.get(key, "").strip() if key else ""
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
    freezes what exists and turns the collector back on."""
    gc.disable()
    return _main(None, before_run=_user_code_next)


def _user_code_next(command: str) -> None:
    """What `command` imports on its way is imported now (`pipeline.preload`: Alembic, the
    driver), and what exists (modules, classes, the settings: alive until exit anyway) is
    frozen: kept out of every later collection and out of the one at exit, which would take it
    apart only to hand its memory back to an operating system about to reclaim it. Collection is
    on again, as usual, for the user's code and the rest of the run; what the user's code
    leaves is collected at exit as under bare Alembic, so its finalizers still run (a file it
    left open is flushed, a connection it left in a pool is closed)."""
    from deployer.pipeline import preload

    preload(command)
    gc.freeze()
    gc.enable()


def _nothing(command: str) -> None:
    pass


def _main(argv: Sequence[str] | None, *, before_run: Callable[[str], None]) -> int:
    args = vars(build_parser().parse_args(argv))
    debug = bool(args.pop("debug", False))
    positional = args.pop("command_arg", None)
    if positional:
        args["command"] = positional

    from deployer.github import GitHubConsole, GitHubContext
    from deployer.redact import RedactingStream, Redactor, url_secrets
    from deployer.render.terminal import TerminalConsole

    redactor = Redactor(raw_secret_values(os.environ))
    for key in ("database_url", "direct_database_url", "slack_webhook_url", "scratch_database_url"):
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
    try:
        return _run(args, _Invocation(redactor, gh, console, debug, before_run))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - never a traceback for the user, unless asked
        console.error(redactor(f"internal error: {type(exc).__name__}: {exc}"))
        if debug:
            import traceback

            sys.stderr.write(traceback.format_exc())
        return 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = real_stdout, sys.__stderr__ or sys.stderr


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

    from deployer.settings import load_settings

    try:
        settings = load_settings(args)
    except ConfigError as exc:
        return _refused(exc, args, inv)
    console = inv.console
    new = [s for s in settings.secrets if s not in inv.redactor.to_mask]
    inv.redactor.add(*new)
    if hasattr(console, "mask"):
        console.mask(*new)

    with contextlib.ExitStack() as stack:
        if settings.embedded is not None:
            if settings.url:
                console.info("a database URL is set: --embedded is ignored")
            else:
                from deployer.embedded import embedded_server

                try:
                    url = stack.enter_context(embedded_server(settings.embedded))
                except ConfigError as exc:
                    return _refused(exc, args, inv, settings)
                console.info(f"embedded PostgreSQL with pgvector started ({url.split('?')[1]})")
                settings = settings.model_copy(update={"database_url": SecretStr(url)})
        return _execute(settings, inv)
    return 0  # unreachable; keeps type checkers content


def _refused(exc: ConfigError, args: dict[str, Any], inv: _Invocation, settings: Any = None) -> int:
    """Bad input before the pipeline could start: still write the outputs, the summary and the
    report (status failed, failed-step config), with the one error line. Slack is not told: its
    webhook is among the input that could not be trusted."""
    from pydantic import SecretStr

    from deployer.publish import publish
    from deployer.results import RunResult, Telemetry, utcnow
    from deployer.settings import Settings

    if settings is None:
        # Where the artefacts go, read field by field with the usual precedence (flag > input >
        # environment > default): these plain paths need no validation.
        from deployer.settings import GitHubInputSource, PlainEnvSource

        fallback: dict[str, Any] = {}
        for name in ("workspace", "summary_file", "output_file", "report_file"):
            field = Settings.model_fields[name]
            value = args.get(name)
            for source in (GitHubInputSource(Settings), PlainEnvSource(Settings)):
                if value is None:
                    value = source.get_field_value(field, name)[0]
            if value is not None:
                fallback[name] = str(value)
        settings = Settings.model_construct(**fallback)
    settings = settings.model_copy(update={"slack_webhook_url": SecretStr("")})
    result = RunResult(
        command=str(args.get("command") or os.environ.get("INPUT_COMMAND") or "deploy"),
        telemetry=Telemetry.from_env(),
        status="failed",
        exit_code=exc.exit_code,
        failed_step=exc.step or "config",
        error=exc.message,
    )
    result.finished_at = utcnow()
    publish(result, settings, inv.redactor, gh=inv.gh, console=inv.console, stdout=sys.stdout)
    return exc.exit_code


def _execute(settings: Any, inv: _Invocation) -> int:
    from deployer.pipeline import execute
    from deployer.publish import publish

    inv.before_run(settings.command)
    result = execute(settings, inv.console, debug=inv.debug)
    publish(result, settings, inv.redactor, gh=inv.gh, console=inv.console, stdout=sys.stdout)
    if inv.debug and result.extra.get("traceback"):
        sys.stderr.write(str(result.extra["traceback"]))
    return result.exit_code
