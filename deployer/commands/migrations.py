"""Running the migrations as deploy and rollback do: the deploy history checked first, each
revision recorded inside its own transaction (whatever connection env.py migrates on), a
revision or env.py that hits lock_timeout retried on the lock ladder (lock-timeout-ladder,
lock-wait-budget, lock-retries)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer import db, history
from deployer.commands.context import Context, close
from deployer.commands.options import lock_ladder, migrate_options
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
    """The migrate step (or, with `downgrade`, the rollback's) on the lock ladder: each attempt
    with its rung's lock_timeout (set once per attempt on the session), an attempt whose
    revision (or env.py) hit it retried after a jittered wait (committed revisions are not run
    again; an all-or-nothing upgrade runs again whole), until lock-wait-budget is spent; then
    the step fails, naming the blocker. Every attempt is in `lock_attempts`. History rows that env.py's own connection
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

    retry = db.LockRetry(lock_ladder(s))
    each_statement = s.env_connection == "autocommit"
    with db.lock_ladder(retry, each_statement=each_statement):
        while True:
            rung = retry.begin()
            # The rung as a session setting, once per attempt: on ours and the one env.py is
            # handed (SET), on the sessions env.py opens itself (PGOPTIONS). No statement
            # pays for it.
            handed = ctx.env_connection(mig)
            sessions = [mig] if handed is None or handed is mig else [mig, handed]
            for session in sessions:
                _set_lock_timeout(session, rung)
            try:
                m = migrate(
                    project,
                    mig,
                    replace(options, lock_timeout=rung),
                    on_applied=on_applied or applied_message(ctx),
                    recorder=recorder,
                    watch_engine=watch,
                    reconnect=reconnect,
                    handed=handed,
                )
            except KeyboardInterrupt as exc:  # cancelled: what ran so far goes in the report
                cut: MigrateResult | None = getattr(exc, "migrate_result", None)
                if cut is not None:
                    cut.previous = (previous if previous is not None else cut.previous) or []
                    cut.applied = applied + cut.applied
                    cut.lock_attempts = retry.attempts
                    ctx.result.migrate = cut
                raise
            previous = m.previous if previous is None else previous
            applied += m.applied
            where = (m.failed_revision or "env.py") if m.lock_timed_out else ""
            retry.end(timed_out=m.lock_timed_out, where=where)
            if not m.lock_timed_out or (delay := retry.wait()) is None:
                break
            ctx.info(
                f"{where} hit lock_timeout ({rung * 1000:g}ms"
                + (f", blocked by {retry.blocked_by()}" if retry.blocked_by() else "")
                + f"); {_retry_number(retry)} after {delay:g}s"
            )
    for session in sessions:  # back to lock-timeout, for what runs after (the seed)
        _set_lock_timeout(session, None)
    m.lock_attempts = retry.attempts
    if retry.timed_out:
        _report_ladder(ctx, m, retry)
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


def _set_lock_timeout(mig: sa.Connection, seconds: float | None) -> None:
    with contextlib.suppress(sa.exc.DBAPIError):  # a lost session: migrate reports it
        if mig.in_transaction():
            mig.rollback()
        db.set_lock_timeout(mig, seconds)


def _retry_number(retry: db.LockRetry) -> str:
    n, limit = len(retry.attempts), retry.ladder.max_attempts
    if limit is not None:
        return f"retry {n} of {limit - 1}"
    left = max(0.0, retry.ladder.budget - retry.spent)
    return f"retry {n} ({left:.0f}s of lock-wait-budget left)"


def _report_ladder(ctx: Context, m: MigrateResult, retry: db.LockRetry) -> None:
    """How the lock ladder went: a warning when attempts hit lock_timeout; when it gave up,
    the error says so and names the blocker."""
    n, spent = len(retry.attempts), retry.spent
    dropped = [a.dropped_index for a in retry.attempts if a.dropped_index]
    also = f"; invalid index(es) dropped: {', '.join(dropped)}" if dropped else ""
    if m.lock_timed_out:
        who = retry.blocked_by()
        m.error = (
            f"gave up after {n} lock attempt(s) in {spent:.1f}s (lock-timeout-ladder "
            f"{', '.join(f'{r * 1000:g}ms' for r in retry.ladder.rungs)}, lock-wait-budget "
            f"{retry.ladder.budget:g}s"
            + (f", lock-retries {retry.ladder.repeats}" if retry.ladder.repeats else "")
            + f"){f', blocked by {who}' if who and 'blocked by' not in m.error else ''}: "
            + m.error
            + also
        )
        if who and not m.blocked_by:
            m.blocked_by = who
        return
    ctx.warn(
        f"{retry.timed_out} of {n} lock attempt(s) hit lock_timeout before the migrations "
        f"took their locks ({spent:.1f}s){also}"
    )


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
        self.digests: dict[str, history.Checksums] = {}

    def prepare(self, steps: Sequence[RevisionStep]) -> None:
        """Take the checksums of the scripts about to run, and create the history on first use
        (once), committed before the first revision runs. The checksums are taken here in one
        go, from the files Alembic has just loaded, not one by one inside each revision's
        transaction: the same values, at half the cost (the hashing code stays warm)."""
        for step in steps:
            script = step.revision
            if script.revision not in self.digests:
                self.digests[script.revision] = history.checksums(script.path)
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
            [
                history.entry(
                    step.revision,
                    step.is_upgrade,
                    seconds,
                    self.digests.get(step.revision.revision),
                )
            ],
            telemetry=self.telemetry,
        )
        self.recorded.add(step.revision.revision)
