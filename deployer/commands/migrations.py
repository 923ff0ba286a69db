"""Running the migrations as deploy and rollback do: the deploy history checked first, each
revision recorded, a revision that hits lock_timeout retried (lock-retries)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer import db, history
from deployer.commands.context import Context
from deployer.commands.options import migrate_options
from deployer.results import AppliedRevision, MigrateResult

if TYPE_CHECKING:
    from alembic.runtime.migration import RevisionStep

    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import EnvFacts, Recorder


def run_migrate(
    ctx: Context,
    project: AlembicProject,
    mig: sa.Connection,
    *,
    recorder: Recorder | None,
    downgrade: bool = False,
    target: str | None = None,
    on_applied: Callable[[AppliedRevision], None] | None = None,
) -> MigrateResult:
    """The migrate step (or, with `downgrade`, the rollback's), retried (lock-retries) while
    a revision fails on lock_timeout. History rows that env.py's own connection could not
    carry are written afterwards on ours."""
    from deployer.steps.migrate import migrate

    s = ctx.settings
    options = migrate_options(ctx, target=target, downgrade=downgrade)
    applied: list[AppliedRevision] = []
    previous: list[str] | None = None
    watch = ctx.engine(ctx.spec(s.direct_url))  # the blocker watch: no timeouts
    for attempt in range(s.lock_retries + 1):
        m = migrate(
            project,
            mig,
            options,
            on_applied=on_applied or applied_message(ctx),
            recorder=recorder,
            watch_engine=watch,
        )
        previous = m.previous if previous is None else previous
        applied += m.applied
        if not (m.lock_timed_out and attempt < s.lock_retries):
            break
        delay = min(30.0, 2.0 * 2**attempt)
        ctx.warn(
            f"revision {m.failed_revision} hit lock_timeout ({m.error}); retry "
            f"{attempt + 1} of {s.lock_retries} in {delay:g}s"
        )
        time.sleep(delay)
    m.previous, m.applied = previous or [], applied
    if recorder is not None and not m.history_inline and m.applied:
        # env.py migrated on a connection of its own: record afterwards, on ours, in one go.
        history.record(
            mig,
            s.history_schema,
            [
                history.entry(project.revision(a.revision), not downgrade, a.seconds)
                for a in m.applied
            ],
            telemetry=ctx.result.telemetry,
        )
        mig.commit()
    return m


def applied_message(ctx: Context, verb: str = "applied") -> Callable[[AppliedRevision], None]:
    def say(rev: AppliedRevision) -> None:
        if rev.committed:
            ctx.info(f"{verb} {rev.revision} ({rev.seconds:.3f}s)")
        else:  # an all-or-nothing upgrade: it commits, or rolls back, with the last revision
            ctx.info(f"ran {rev.revision} ({rev.seconds:.3f}s; commits with the whole upgrade)")

    return say


def check_history(
    ctx: Context,
    project: AlembicProject,
    mig: sa.Connection,
    facts: EnvFacts,
    heads: list[str],
    *,
    read_only: bool = False,
) -> Recorder | None:
    """Create the history on first use and verify applied scripts against it (before
    anything is applied). `heads`: the database's, read under the deploy lock. Returns the
    per-revision recorder, or None without a history. A dry run (plan) and `read_only` (status)
    verify an existing history without writing anything."""
    s = ctx.settings
    dry = ctx.result.dry_run or read_only
    try:
        if dry and not history.exists(mig, s.history_schema):
            mig.rollback()
            return None
        if not dry:
            history.ensure(mig, s.history_schema)
        ctx.result.integrity = report = history.verify(
            mig,
            s.history_schema,
            project,
            heads,
            allow_edited=s.allow_edited_migrations,
            telemetry=ctx.result.telemetry,
            write=not dry,
        )
    except sa.exc.DBAPIError as exc:
        mig.rollback()
        what = "read" if dry else "create or write"
        ctx.warn(
            f"no deploy history: this role cannot {what} {s.history_schema}.{history.TABLE} "
            f"({db.server_message(exc)}); edited migrations are not detected"
        )
        return None
    if dry:
        return None
    if report.baselined:
        ctx.notice(
            f"deploy history baselined with {len(report.baselined)} revision(s) applied "
            "before it existed"
        )
    for rev in report.accepted or []:
        ctx.warn(
            f"applied migration {rev} was edited since it ran; accepted and "
            "re-recorded (allow-edited-migrations)"
        )
    return recorder(ctx, s.history_schema)


def recorder(ctx: Context, schema: str) -> Recorder:
    """Records each revision in the history, inside its own transaction."""
    telemetry = ctx.result.telemetry

    def record(conn: sa.Connection, step: RevisionStep, seconds: float) -> None:
        history.record(
            conn,
            schema,
            [history.entry(step.revision, step.is_upgrade, seconds)],
            telemetry=telemetry,
        )

    return record
