"""Running the migrations as deploy and rollback do: the deploy history checked first, each
revision recorded inside its own transaction (whatever connection env.py migrates on), a
revision or env.py that hits lock_timeout retried (lock-retries)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer import db, history
from deployer.commands.context import Context, close
from deployer.commands.options import migrate_options
from deployer.results import AppliedRevision, IntegrityReport, MigrateResult

if TYPE_CHECKING:
    from alembic.runtime.migration import RevisionStep

    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import EnvFacts


def run_migrate(
    ctx: Context,
    project: AlembicProject,
    mig: sa.Connection,
    *,
    recorder: HistoryRecorder | None,
    downgrade: bool = False,
    target: str | None = None,
    on_applied: Callable[[AppliedRevision], None] | None = None,
) -> MigrateResult:
    """The migrate step (or, with `downgrade`, the rollback's), retried (lock-retries) while
    a revision (or env.py) fails on lock_timeout. History rows that env.py's own connection
    could not carry (it may not write the history) are written afterwards on ours; after a lost
    connection the revision the database is at is read again on a new session."""
    from deployer.steps.migrate import migrate

    s = ctx.settings
    options = migrate_options(ctx, target=target, downgrade=downgrade)
    applied: list[AppliedRevision] = []
    previous: list[str] | None = None
    watch = ctx.engine(ctx.spec(s.direct_url))  # the blocker watch: no timeouts

    def reconnect() -> sa.Connection:
        # After a lost connection: a new session (bounded retries, connect-retries) to read
        # the revision the database is really at.
        return ctx.connect(ctx.spec(s.direct_url))

    for attempt in range(s.lock_retries + 1):
        try:
            m = migrate(
                project,
                mig,
                options,
                on_applied=on_applied or applied_message(ctx),
                recorder=recorder,
                watch_engine=watch,
                reconnect=reconnect,
            )
        except KeyboardInterrupt as exc:  # cancelled: what ran so far goes in the report
            cut: MigrateResult | None = getattr(exc, "migrate_result", None)
            if cut is not None:
                cut.previous = (previous if previous is not None else cut.previous) or []
                cut.applied = applied + cut.applied
                ctx.result.migrate = cut
            raise
        previous = m.previous if previous is None else previous
        applied += m.applied
        if not (m.lock_timed_out and attempt < s.lock_retries):
            break
        delay = min(30.0, 2.0 * 2**attempt)
        where = f"revision {m.failed_revision}" if m.failed_revision else "env.py"
        ctx.warn(
            f"{where} hit lock_timeout ({m.error}); retry "
            f"{attempt + 1} of {s.lock_retries} in {delay:g}s"
        )
        time.sleep(delay)
    m.previous, m.applied = previous or [], applied
    missing = [a for a in m.applied if recorder is None or a.revision not in recorder.recorded]
    if recorder is not None and recorder.enabled and missing and not m.current_unknown:
        # Rows the revision's own transaction could not carry (env.py's connection may not
        # write the history): written now, on ours.
        history.record(
            mig,
            s.history_schema,
            [
                history.entry(project.revision(a.revision), not downgrade, a.seconds)
                for a in missing
            ],
            telemetry=ctx.result.telemetry,
        )
        mig.commit()
    m.history_inline = recorder is not None and not missing
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
    pending: bool = True,
) -> HistoryRecorder | None:
    """Verify applied scripts against the history (before anything is applied). `heads`: the
    database's, read under the deploy lock. Returns the per-revision recorder, or None without
    a history. A history that does not exist yet is created only just before the first
    revision runs (`HistoryRecorder.prepare`): a no-op deploy (`pending` False) and a run
    refused with exit 2 or 3 create nothing. A dry run (plan) and `read_only` (status) verify
    an existing history without writing anything."""
    s = ctx.settings
    dry = ctx.result.dry_run or read_only
    try:
        if not history.exists(mig, s.history_schema):
            mig.rollback()
            if dry or not pending:
                return None
            return HistoryRecorder(ctx, project, s.history_schema, heads=heads)
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
        _no_history(ctx, what, exc)
        return None
    if dry:
        return None
    if report.baselined:
        _baselined(ctx, report.baselined)
    for rev in report.accepted or []:
        ctx.warn(
            f"applied migration {rev} was edited since it ran; accepted and "
            "re-recorded (allow-edited-migrations)"
        )
    return HistoryRecorder(ctx, project, s.history_schema)


def _no_history(ctx: Context, what: str, exc: sa.exc.DBAPIError) -> None:
    s = ctx.settings
    ctx.warn(
        f"no deploy history: this role cannot {what} {s.history_schema}.{history.TABLE} "
        f"({db.server_message(exc)}); edited migrations are not detected"
    )


def _baselined(ctx: Context, revisions: list[str]) -> None:
    ctx.notice(
        f"deploy history baselined with {len(revisions)} revision(s) applied before it existed"
    )


class HistoryRecorder:
    """Records each revision in the history, inside its own transaction, on the connection it
    ran on (`migrate` calls it from Alembic's `on_version_apply`, whatever connection env.py
    uses): the row and the revision commit together or not at all. `recorded`: the revisions
    recorded so. `heads` given: the history does not exist yet, and `prepare()` (called just
    before the first revision runs) creates it, baselining what the database already has, on a
    session of its own."""

    def __init__(
        self,
        ctx: Context,
        project: AlembicProject,
        schema: str,
        *,
        heads: list[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.project = project
        self.schema = schema
        self.telemetry = ctx.result.telemetry
        self.create_from = heads
        self.enabled = True
        self.recorded: set[str] = set()

    def prepare(self) -> None:
        """Create the history on first use (once), committed before the first revision runs."""
        if self.create_from is None:
            return
        heads, self.create_from = self.create_from, None
        ctx = self.ctx
        conn = ctx.connect(ctx.spec(ctx.settings.direct_url, migration=True))
        try:
            baselined = history.baseline(
                conn, self.schema, self.project, heads, telemetry=self.telemetry
            )
        except sa.exc.DBAPIError as exc:
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()
            self.enabled = False
            _no_history(ctx, "create or write", exc)
            return
        finally:
            close(conn)
        ctx.result.integrity = IntegrityReport(
            checked=len(baselined), baselined=baselined, accepted=[]
        )
        if baselined:
            _baselined(ctx, baselined)

    def __call__(self, conn: sa.Connection, step: RevisionStep, seconds: float) -> None:
        if not self.enabled:
            return
        history.record(
            conn,
            self.schema,
            [history.entry(step.revision, step.is_upgrade, seconds)],
            telemetry=self.telemetry,
        )
        self.recorded.add(step.revision.revision)
