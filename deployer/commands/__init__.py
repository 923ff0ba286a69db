"""The commands, one module each, and the registry that runs them.

Each command is a function `run(ctx) -> RunResult` in its own module: it composes the steps
(deployer/steps), fills the run's record and returns it. Steps never print or write GitHub
files; progress goes to the context's observer (the GitHub or terminal console), results to
the renderers afterwards. A command's module is imported when the command runs: Alembic (~0.1 s
of imports) is imported by the commands that load a migrations folder, not by `smoke`.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from deployer.errors import DeployError, classify
from deployer.results import Failure, RunResult, utcnow

if TYPE_CHECKING:
    from deployer.commands.context import Context, Observer
    from deployer.settings import Settings

# command → the module under deployer.commands that runs it (`plan` is `deploy` in dry-run
# mode).
COMMANDS: dict[str, str] = {
    "deploy": "deploy",
    "plan": "deploy",
    "status": "status",
    "smoke": "smoke",
    "seed": "seed",
    "drift": "drift",
    "backup": "backup",
    "restore": "restore",
    "preflight": "preflight",
    "rollback": "rollback",
    "fleet": "fleet",
    "fleet-report": "fleet_report",
}


def resolve(settings: Settings) -> str:
    """The command that runs `settings`: `deploy` (or `plan`) with a `fleet-file` deploys (or
    plans) the fleet, as `fleet` does (issue 20: `db-deploy fleet`, or `deploy` with
    `fleet-file`); every other command is itself."""
    if settings.command in ("deploy", "plan") and settings.fleet_file.strip():
        return "fleet"
    return settings.command


def command(name: str) -> Callable[[Context], RunResult]:
    """The function that runs command `name`."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
    run: Callable[[Context], RunResult] = module.run
    return run


def preload(name: str) -> None:
    """Import now what command `name` imports on its way: its own module, the PostgreSQL driver
    with SQLAlchemy's dialect for it and, for every command but `smoke` (which loads no
    migrations folder), Alembic with the migrate step. For the process entry point, which
    freezes what exists before the user's code runs (`deployer.cli.console_main`)."""
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    command(name)
    if name not in ("smoke", "fleet", "fleet-report"):
        from deployer import alembic_project  # noqa: F401
        from deployer.steps import migrate, version_table  # noqa: F401


def execute(settings: Settings, observer: Observer, *, debug: bool = False) -> RunResult:
    """Run `settings.command` and return its record; failures become the record's status."""
    from deployer.cancel import cancellable
    from deployer.commands.context import Context

    ctx = Context(settings, observer)
    result = ctx.result
    try:
        # A signal cancels the command while it runs (not its report): deployer/cancel.py.
        with cancellable(), ctx:
            command(resolve(settings))(ctx)
    except DeployError as exc:
        result.status = "failed"
        result.exit_code = exc.exit_code
        result.failed_step = exc.step or ctx.current_step
        result.error = exc.message
        result.error_class = classify(exc, result.failed_step)
        failed(result, exc.failure, exc.obj, debug=debug)
    except KeyboardInterrupt as exc:  # SIGINT/SIGTERM (deployer/cancel.py): the run cancelled
        result.status = "cancelled"
        result.exit_code = int(getattr(exc, "exit_code", 130))
        result.failed_step = ctx.current_step
        result.error = cancelled_message(str(exc) or "cancelled by SIGINT", result)
        result.error_class = "cancelled"
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the last line of defence: report, never crash
        result.status = "failed"
        result.exit_code = 1
        result.failed_step = ctx.current_step
        result.error = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        result.error_class = classify(exc, result.failed_step)
        if debug:
            result.extra["traceback"] = traceback.format_exc()
    finally:
        result.finished_at = utcnow()
    return result


def cancelled_message(what: str, result: RunResult) -> str:
    """`cancelled by SIGINT at migrate: revision X rolled back, database at Y`."""
    text = f"{what} at {result.failed_step}" if result.failed_step else what
    m = result.migrate
    if m is None or m.dry_run:
        return text
    rolled = f"revision {m.failed_revision} rolled back, " if m.failed_revision else ""
    return f"{text}: {rolled}database at {result.current_revision or 'base'}"


def failed(result: RunResult, failure: Failure | None, obj: str, *, debug: bool) -> None:
    """The run's `failure`: where a revision failed (the migrate step's record), or the failing
    object alone; the traceback only with --debug."""
    if failure is None and obj:
        failure = Failure(object=obj)
    if failure is None:
        return
    if obj and not failure.object:
        failure.object = obj
    if debug and failure.traceback:
        result.extra["traceback"] = failure.traceback
    elif not debug:
        failure.traceback = ""
    result.failure = failure
