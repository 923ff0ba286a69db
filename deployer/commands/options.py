"""The steps' option records, built from the settings: the one place where what the user set
becomes what a step is told (steps never read `Settings`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.db import LockLadder
from deployer.steps.security import SecurityOptions
from deployer.steps.smoke import SmokeOptions

if TYPE_CHECKING:
    from deployer.commands.context import Context
    from deployer.settings import Settings
    from deployer.steps.migrate import MigrateOptions


def migrate_options(
    ctx: Context, *, target: str | None = None, downgrade: bool = False
) -> MigrateOptions:
    """The migrate step's: on direct-database-url, with the migration session's timeouts."""
    from deployer.redact import Redactor
    from deployer.steps.migrate import MigrateOptions

    s = ctx.settings
    return MigrateOptions(
        url=s.direct_url,
        target=target or s.target,
        dry_run=ctx.result.dry_run,
        downgrade=downgrade,
        lock_timeout=s.lock_timeout,
        statement_timeout=s.statement_timeout,
        workspace=s.workspace_dir,
        client_check=ctx.spec(s.direct_url, migration=True).client_check,
        env_connection=s.env_connection,
        history_schema=s.history_schema,
        run_by=run_by(ctx),
        redact=Redactor(s.secrets),
    )


def lock_ladder(s: Settings) -> LockLadder:
    """How the migrate step takes its locks: lock-timeout-ladder's rungs (none above
    lock-timeout, the cap of every other lock wait), within lock-wait-budget; lock-retries N
    allows at most N attempts more at the last rung."""
    return LockLadder(
        rungs=s.lock_timeout_ladder,
        budget=s.lock_wait_budget,
        repeats=s.lock_retries,
        cap=s.lock_timeout or None,
    )


def run_by(ctx: Context) -> str:
    """Who runs, for the mark of a revision under way: actor, commit, run URL."""
    t = ctx.result.telemetry
    return ", ".join(x for x in (t.actor, t.sha[:12], t.run_url) if x)


def smoke_options(s: Settings) -> SmokeOptions:
    return SmokeOptions(
        expectations=s.smoke_expect,
        extensions=s.required_extensions,
        exclude_schemas=(s.history_schema,),
        lock_timeout=s.lock_timeout,
    )


def security_options(s: Settings) -> SecurityOptions:
    return SecurityOptions(
        url=s.url,
        direct_url=s.direct_url,
        require_tls=s.require_tls,
        required_extensions=s.required_extensions,
        history_schema=s.history_schema,
        fail_on=s.preflight_fail_on,
    )
