"""Migrate: bring the database to the target revision with the user's own env.py.

The work function handed to `EnvironmentContext` receives the MigrationContext before any step
runs, whatever env.py passes to `configure()`. It returns the upgrade steps wrapped in a
generator, and Alembic's `run_migrations` loop (alembic/runtime/migration.py) does
`for step in fn(...): with begin_transaction(_per_migration=True): run; stamp` — so when the
generator resumes after yielding a step, that step has run and, with per-revision transactions,
committed. A step that raises leaves its revision recorded as the one that failed.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy import event

from deployer.alembic_project import (
    ENV_THREAD_IDS,
    AlembicProject,
    read_heads,
    render_offline,
    run_env,
    summary,
)
from deployer.db import (
    APPLICATION_NAME,
    BlockerWatch,
    backend_pid,
    dbapi_backend_pid,
    is_lock_timeout,
    server_message,
    session_options,
)
from deployer.errors import ConfigError, DeployError, StepFailed, describe_exception, sqlstate
from deployer.results import AppliedRevision, Failure, MigrateResult
from deployer.sql import quote_ident

HEAD_TARGETS = {"head", "heads"}
ENV_CONNECTIONS = ("shared", "autocommit", "none")  # the input env-connection


@dataclass
class _Tracker:
    """What the work function saw and what ran, filled in while env.py runs."""

    called: bool = False
    previous: tuple[str, ...] = ()
    running: RevisionStep | None = None
    started: float = 0.0
    applied: list[AppliedRevision] = field(default_factory=list)
    context: MigrationContext | None = None
    ours: sa.Connection | None = None  # the deployer's own connection
    # An autocommit connection: the revision's version row (and history row) are being
    # written in a transaction block of their own, opened after its statements (`_Stamped`).
    block: sa.Connection | None = None
    autocommit: bool = False  # the running revision runs on an autocommit connection
    marks: _Marks | None = None  # where a revision under way on such a connection is marked
    # Sessions (their DBAPI connections' ids) that have written a history row in this run.
    writes_history: set[int] = field(default_factory=set)
    refused_history: set[int] = field(default_factory=set)  # … and those that could not


def resolve_target(project: AlembicProject, target: str) -> tuple[str, ...]:
    """The revision ids `target` names (the script's heads for head/heads). Unknown → exit 2."""
    if target in HEAD_TARGETS or project.unsettled:  # unsettled: checked once env.py ran
        return tuple(project.heads())
    try:
        revs = project.script.get_revisions(target)
    except Exception as exc:  # noqa: BLE001 - alembic raises several kinds here
        raise ConfigError(
            f"unknown target revision {target!r}: {describe_exception(exc)}"
        ) from None
    if not revs:
        raise ConfigError(f"unknown target revision {target!r}")
    return tuple(sorted(r.revision for r in revs if r is not None))


@dataclass(frozen=True)
class MigrateOptions:
    """How to migrate: the URL env.py is handed, the target, a dry run (plan: nothing applied,
    the SQL rendered), a downgrade (the rollback command), the session's timeouts and, on
    PostgreSQL 14+, `client_connection_check_interval` (`client_check`). `env_connection`:
    what env.py is handed (the input env-connection): `shared` and `autocommit` a connection
    (`migrate`'s `handed`, else the deployer's own), `none` no connection at all (env.py
    builds its own engine from `sqlalchemy.url` / `DATABASE_URL`)."""

    url: str
    target: str = "heads"
    dry_run: bool = False
    downgrade: bool = False
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    workspace: Path | None = None
    client_check: bool = False
    env_connection: str = "shared"
    # The deploy history's schema, where a revision under way on an autocommit connection is
    # marked (`_Marks`), and who runs (actor, commit, run URL), for that mark.
    history_schema: str = ""
    run_by: str = ""
    # Masks the run's secrets in a failing statement before it is cut (see `_failure`).
    redact: Callable[[str], str] = field(default=lambda text: text, repr=False, compare=False)


class Recorder(Protocol):
    """The deploy history's writer (deployer/commands/migrations.py: HistoryRecorder)."""

    def prepare(self, steps: Sequence[RevisionStep]) -> None:
        """Called with the steps about to run, before the first one (again on a retried
        attempt)."""

    def __call__(self, conn: sa.Connection, step: RevisionStep, seconds: float) -> None:
        """Record `step` on `conn`, inside the revision's own transaction."""


def migrate(
    project: AlembicProject,
    connection: sa.Connection,
    options: MigrateOptions,
    *,
    on_applied: Callable[[AppliedRevision], None] | None = None,
    recorder: Recorder | None = None,
    watch_engine: sa.Engine | None = None,
    reconnect: Callable[[], sa.Connection] | None = None,
    handed: sa.Connection | None = None,
) -> MigrateResult:
    """Upgrade (or, with `options.downgrade`, downgrade) to `options.target`.
    `recorder(conn, step, seconds)` (the deploy history) is called inside each revision's
    transaction, on the connection the revision ran on, whichever env.py uses (Alembic's
    `on_version_apply`), so a row commits with its revision or not at all.
    `watch_engine`: where a watch of the sessions blocking ours (and env.py's) connects.
    `reconnect`: a new session, when ours was lost, to read the revision the database is at
    (else `current_unknown` says why it is unknown). `handed`: the connection env.py is handed
    when it is not `connection` (an autocommit one, or one of another driver; see
    `MigrateOptions.env_connection`). On an autocommit connection each revision's statements
    commit as they run; its version row and history row are then written together in a
    transaction of their own, so that the history never misses a revision the version table
    shows (nor the reverse). Returns the record, with `error` and
    `failed_revision` set when a revision (or env.py, waiting on a lock) failed (the database
    is then at its last committed revision, read back from it). Raises ConfigError for bad
    targets and a broken env.py (nothing changed)."""
    started = time.perf_counter()
    o = options
    destination = () if o.downgrade and o.target == "base" else resolve_target(project, o.target)
    result = MigrateResult(
        script_location=str(project.script_location), target=o.target, dry_run=o.dry_run
    )
    tracker = _Tracker(ours=connection)
    give = None if o.env_connection == "none" else (handed or connection)
    watch = (
        BlockerWatch(watch_engine, backend_pid(connection))
        if watch_engine is not None and not o.dry_run
        else None
    )
    if watch is not None and give is not None and give is not connection:
        watch.add(dbapi_backend_pid(give.connection.driver_connection))
    work = _work_function(project, o, destination, result, tracker, watch, on_applied, recorder)
    error = _run(project, connection, give, o, work, tracker, watch)
    ctx = tracker.context
    if ctx is not None:
        result.version_table = ctx.version_table
        result.version_table_schema = ctx.version_table_schema
        result.transaction_per_migration = bool(getattr(ctx, "_transaction_per_migration", False))
    result.previous = sorted(tracker.previous)
    result.current = _read_back(connection, result, reconnect)
    if error is not None:
        _failed(project, result, tracker, watch, error, options=o)
    else:
        for a in tracker.applied:
            a.committed = True  # the last transaction (all-or-nothing's only one) committed
        result.applied = list(tracker.applied)
        if o.dry_run and not o.downgrade:
            result.sql = offline_sql(project, o.url, result.previous, o.target, o.workspace)
        elif not o.dry_run and not result.current_unknown:
            _check_version_table(result, destination)
    result.seconds = round(time.perf_counter() - started, 4)
    if isinstance(error, KeyboardInterrupt):
        error.migrate_result = result  # type: ignore[attr-defined]  # the record, for the report
        raise error
    return result


def _work_function(
    project: AlembicProject,
    o: MigrateOptions,
    destination: tuple[str, ...],
    result: MigrateResult,
    tracker: _Tracker,
    watch: BlockerWatch | None,
    on_applied: Callable[[AppliedRevision], None] | None,
    recorder: Recorder | None,
) -> Callable[[tuple[str, ...], MigrationContext], Any]:
    """The function env.py's `run_migrations` calls: it plans the steps and hands them back
    one by one, timing each."""

    def tracked(steps: list[RevisionStep]) -> Iterator[Any]:
        if watch is not None and steps:
            watch.start()  # only when something will run
        if recorder is not None and steps:
            recorder.prepare(steps)  # the history created (first use) before the first revision
        for step in steps:
            tracker.running = step
            tracker.started = time.perf_counter()
            tracker.autocommit = False
            yield _Stamped(step, tracker)
            done = AppliedRevision(
                revision=step.revision.revision,
                description=summary(step.revision),
                seconds=round(time.perf_counter() - tracker.started, 4),
                # On an autocommit connection, committed as it ran (`_Stamped`).
                committed=tracker.autocommit or not _in_transaction(tracker.context),
            )
            tracker.applied.append(done)
            tracker.running = None
            if on_applied:
                on_applied(done)

    def work(heads: tuple[str, ...], context: MigrationContext) -> Any:
        tracker.called = True
        tracker.previous = tuple(heads)
        tracker.context = context
        if recorder is not None and o.history_schema:
            tracker.marks = _Marks(o.history_schema, o.run_by)
        if recorder is not None:
            # Called by Alembic inside the revision's transaction, after its version row is
            # written, on whatever connection env.py migrates on (its own engine's too).
            def on_apply(**_: Any) -> None:
                if tracker.running is not None:
                    seconds = time.perf_counter() - tracker.started
                    _record(recorder, context.connection, tracker, tracker.running, seconds)

            context.on_version_apply_callbacks = (*context.on_version_apply_callbacks, on_apply)
            result.history_inline = True
        # Last: on an autocommit connection, the block holding the version (and history) row
        # commits (`_Stamped`).
        context.on_version_apply_callbacks = (
            *context.on_version_apply_callbacks,
            lambda **_: _close_block(tracker),
        )
        steps = _plan(project, heads, o, destination)
        result.pending = [project.describe(s.revision.revision) for s in steps]
        return [] if o.dry_run else tracked(steps)

    return work


class _Stamped:
    """A revision step as Alembic's loop sees it (`alembic/runtime/migration.py`: run the
    step's `migration_fn`, then `update_to_step` writes the version row, then the
    `on_version_apply` callbacks). On an autocommit connection, where each of the revision's
    statements commits as it runs, `migration_fn` ends by opening a transaction block
    (`BEGIN`): the version row and the history row are written in it, and `_close_block`
    (the last callback) commits them together. A crash between the two then leaves neither,
    never a version row without its history row."""

    def __init__(self, step: RevisionStep, tracker: _Tracker) -> None:
        self._step = step
        self._tracker = tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __str__(self) -> str:
        return str(self._step)

    def __repr__(self) -> str:
        return repr(self._step)

    @property
    def migration_fn(self) -> Callable[..., None]:
        fn = self._step.migration_fn
        tracker = self._tracker

        def run(**kw: Any) -> None:
            context = tracker.context
            conn = context.connection if context is not None else None
            tracker.autocommit = conn is not None and is_autocommit(conn)
            if conn is not None and tracker.autocommit and tracker.marks is not None:
                tracker.marks.mark(conn, self._step)
            fn(**kw)
            conn = context.connection if context is not None else None
            if conn is not None and is_autocommit(conn):
                tracker.autocommit = True
                conn.exec_driver_sql("BEGIN")
                tracker.block = conn
                if tracker.marks is not None:
                    tracker.marks.unmark(conn)

        return run


UNFINISHED_TABLE = "db_deploy_unfinished"


@dataclass
class _Marks:
    """On an autocommit connection a revision's statements commit one by one, so a crash (or
    a failure) in the middle leaves some of them done while the version table still shows
    the revision before. So that the next run can say so, a row in
    `<history-schema>.db_deploy_unfinished` marks the revision before its first statement
    (committed at once), and goes in the transaction that writes its version and history
    rows. The table is created on first use; a role that cannot write it runs unmarked."""

    schema: str
    run_by: str
    off: bool = False
    ready: bool = False
    marked: str = ""

    def mark(self, conn: sa.Connection, step: RevisionStep) -> None:
        if self.off:
            return
        table = f"{quote_ident(self.schema)}.{UNFINISHED_TABLE}"
        try:
            if not self.ready:
                conn.exec_driver_sql(
                    f"CREATE TABLE IF NOT EXISTS {table} (revision text NOT NULL, "
                    "kind text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
                    "run_by text NOT NULL DEFAULT '')"
                )
                self.ready = True
            conn.execute(
                sa.text(f"INSERT INTO {table} (revision, kind, run_by) VALUES (:r, :k, :b)"),
                {
                    "r": step.revision.revision,
                    "k": "upgrade" if step.is_upgrade else "downgrade",
                    "b": self.run_by,
                },
            )
            self.marked = step.revision.revision
        except sa.exc.DBAPIError:
            self.off = True  # autocommit: nothing to roll back

    def unmark(self, conn: sa.Connection) -> None:
        """In the block holding the version row: the revision (every mark of it) is done."""
        revision, self.marked = self.marked, ""
        if not revision:
            return
        conn.exec_driver_sql("SAVEPOINT db_deploy_unfinished")
        try:
            conn.execute(
                sa.text(
                    f"DELETE FROM {quote_ident(self.schema)}.{UNFINISHED_TABLE} WHERE revision = :r"
                ),
                {"r": revision},
            )
        except sa.exc.DBAPIError:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT db_deploy_unfinished")
        else:
            conn.exec_driver_sql("RELEASE SAVEPOINT db_deploy_unfinished")


@dataclass(frozen=True)
class Unfinished:
    """A revision an earlier run started on an autocommit connection and never completed."""

    revision: str
    kind: str
    started_at: str
    run_by: str

    def __str__(self) -> str:
        by = f", {self.run_by}" if self.run_by else ""
        return f"{self.revision} ({self.kind} started {self.started_at}{by})"


def unfinished(conn: sa.Connection, schema: str) -> list[Unfinished]:
    """The revisions marked unfinished (`_Marks`), oldest first; none when there is no such
    table or it cannot be read. Leaves no transaction open."""
    table = f"{quote_ident(schema)}.{UNFINISHED_TABLE}"
    try:
        if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
            return []
        rows = conn.execute(
            sa.text(f"SELECT revision, kind, started_at, run_by FROM {table} ORDER BY started_at")
        ).all()
    except sa.exc.DBAPIError:
        return []
    finally:
        _rollback(conn)
    seen: dict[str, Unfinished] = {}
    for r in rows:
        at = r[2].isoformat(timespec="seconds") if hasattr(r[2], "isoformat") else str(r[2])
        seen.setdefault(r[0], Unfinished(r[0], r[1], at, r[3]))
    return list(seen.values())


def clear_unfinished(conn: sa.Connection, schema: str, revisions: list[str]) -> None:
    """Forget the marks of `revisions` (completed since, on a connection that was not
    autocommit, or no longer to be applied), committed."""
    if not revisions:
        return
    try:
        conn.execute(
            sa.text(
                f"DELETE FROM {quote_ident(schema)}.{UNFINISHED_TABLE} WHERE revision = ANY(:r)"
            ),
            {"r": revisions},
        )
        conn.commit()
    except sa.exc.DBAPIError:
        _rollback(conn)


def is_autocommit(conn: sa.Connection) -> bool:
    """Whether `conn`'s driver connection commits each statement (psycopg, psycopg2 and
    SQLAlchemy's async adaptors all say so as `autocommit`)."""
    try:
        return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
    except Exception:  # noqa: BLE001 - a closed or odd connection
        return False


def _close_block(tracker: _Tracker) -> None:
    """Commit the block `_Stamped` opened (the version row and the history row)."""
    conn, tracker.block = tracker.block, None
    if conn is not None:
        conn.exec_driver_sql("COMMIT")


def _abort_block(tracker: _Tracker) -> None:
    """A failure (or a cancel) while the block was open: nothing of it is kept."""
    conn, tracker.block = tracker.block, None
    if conn is not None:
        try:
            conn.exec_driver_sql("ROLLBACK")
        except Exception:  # noqa: BLE001 - a lost connection: the server rolled it back
            pass


def _record(
    recorder: Recorder,
    conn: sa.Connection | None,
    tracker: _Tracker,
    step: RevisionStep,
    seconds: float,
) -> None:
    """The history row of `step` on `conn`, in the revision's transaction (on an autocommit
    connection, the block `_Stamped` opened). On a connection of env.py's own (or one handed
    to it), the first row inside a savepoint: a role that cannot write the history must not
    fail the revision (its row is then written after the migrate step, on ours). Once a
    session has written a row, the next ones go without a savepoint (two round trips fewer
    per revision)."""
    if conn is None:
        return
    session = id(conn.connection.dbapi_connection)
    if session in tracker.refused_history:
        return  # written after the migrate step, on ours
    if conn is tracker.ours or session in tracker.writes_history:
        recorder(conn, step, seconds)
        return
    if conn is tracker.block:
        conn.exec_driver_sql("SAVEPOINT db_deploy_history")
        try:
            recorder(conn, step, seconds)
        except sa.exc.DBAPIError:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT db_deploy_history")
            tracker.refused_history.add(session)
            return
        conn.exec_driver_sql("RELEASE SAVEPOINT db_deploy_history")
    else:
        try:
            with conn.begin_nested() if conn.in_transaction() else nullcontext():
                recorder(conn, step, seconds)
        except sa.exc.DBAPIError:
            tracker.refused_history.add(session)
            return
    tracker.writes_history.add(session)


def _plan(
    project: AlembicProject,
    heads: tuple[str, ...],
    o: MigrateOptions,
    destination: tuple[str, ...],
) -> list[RevisionStep]:
    """The steps from `heads` to the target, after refusing the wrong direction."""
    if o.downgrade:
        _refuse_upgrade(project, heads, o.target, destination)
    else:
        _refuse_downgrade(project, heads, o.target, destination)
    try:
        return (
            project.script._downgrade_revs(o.target, heads)  # type: ignore[arg-type]
            if o.downgrade
            else project.script._upgrade_revs(o.target, heads)  # type: ignore[arg-type]
        )
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"cannot plan the {'downgrade' if o.downgrade else 'upgrade'} from {_fmt(heads)} "
            f"to {o.target!r}: "
            f"{describe_exception(exc)}"
        ) from None


def _run(
    project: AlembicProject,
    connection: sa.Connection,
    give: sa.Connection | None,
    o: MigrateOptions,
    work: Callable[[tuple[str, ...], MigrationContext], Any],
    tracker: _Tracker,
    watch: BlockerWatch | None,
) -> BaseException | None:
    """Run env.py with `work`, handing it `give` (ours, another connection of the run's, or
    none); the error a revision raised, if one did."""
    if give is not connection and connection.in_transaction():
        connection.commit()  # ours stays idle while env.py migrates on another connection
    environ = {
        "PGOPTIONS": session_options(o.lock_timeout, o.statement_timeout, o.client_check),
        "PGAPPNAME": APPLICATION_NAME,
    }
    try:
        with watch or nullcontext(), _env_sessions(watch):
            if watch is not None:
                watch.start()  # env.py itself may wait on a lock (the version table's creation)
            run_env(
                project,
                work,
                connection=give,
                url=o.url,
                environ=environ,
                workspace=o.workspace,
                dont_mutate=o.dry_run,
            )
        for conn in _distinct(give, connection):
            if conn.in_transaction():
                conn.commit()
    except DeployError:
        _rollback(connection, give, tracker=tracker)
        raise
    except KeyboardInterrupt as exc:  # cancelled (deployer/cancel.py): recorded, then raised
        _rollback(connection, give, tracker=tracker)
        return exc
    except Exception as exc:  # noqa: BLE001 - user code: report, don't crash
        _rollback(connection, give, tracker=tracker)
        if not tracker.called and not is_lock_timeout(exc):
            # A lock wait inside env.py (e.g. on the version table another `alembic upgrade`
            # is creating) is a lock wait like a revision's: retried, then exit 1, blocker named.
            raise ConfigError(
                f"env.py failed before migrating: {describe_exception(exc)}",
                detail=server_message(exc),
            ) from None
        return exc
    return None


@contextmanager
def _env_sessions(watch: BlockerWatch | None) -> Iterator[None]:
    """While env.py runs, every session it opens on this thread (its own engine too) is
    watched for blockers beside ours."""
    if watch is None:
        yield
        return
    thread = threading.get_ident()

    def connected(dbapi_connection: Any, _record: Any) -> None:
        if threading.get_ident() == thread or threading.get_ident() in ENV_THREAD_IDS:
            pid = dbapi_backend_pid(dbapi_connection)
            if pid:
                watch.add(pid)

    event.listen(sa.pool.Pool, "connect", connected)
    try:
        yield
    finally:
        event.remove(sa.pool.Pool, "connect", connected)


def _failed(
    project: AlembicProject,
    result: MigrateResult,
    tracker: _Tracker,
    watch: BlockerWatch | None,
    error: BaseException,
    *,
    options: MigrateOptions,
) -> None:
    """Fill the record of a revision that failed."""
    downgrade = options.downgrade
    failed = tracker.running
    result.failed_revision = failed.revision.revision if failed else ""
    result.failure = _failure(project, error, failed, options)
    result.error = (
        server_message(error) if isinstance(error, sa.exc.DBAPIError) else describe_exception(error)
    )
    result.error = _PASSWORD.sub(r"\1'***'", result.error)  # the server echoes the statement
    result.lock_timed_out = is_lock_timeout(error)
    if watch is not None and watch.blocker is not None:
        result.blocked_by = str(watch.blocker)
        result.error += f" (blocked by {watch.blocker})"
        result.failure.object = result.blocked_by
    if failed is not None and tracker.autocommit:
        result.error += (
            f" (autocommit connection: the statements {failed.revision.revision} ran before "
            "the error were committed as they ran and are not rolled back)"
        )
    if result.current_unknown:
        # The connection was lost and the database could not be read: what committed before
        # the failure is known, the rest is not (never guessed as rolled back).
        result.applied = [a for a in tracker.applied if a.committed]
        return
    # Only what the database kept counts as applied (all-or-nothing rolls back everything).
    kept = project.ancestors(result.current) if result.current else set()
    result.applied = [a for a in tracker.applied if (a.revision in kept) != downgrade]
    for a in result.applied:
        a.committed = True
    result.rolled_back = [a.revision for a in tracker.applied if (a.revision in kept) == downgrade]


def _in_transaction(context: MigrationContext | None) -> bool:
    """Whether env.py's connection is inside a transaction still open (between revisions: an
    all-or-nothing upgrade, or env.py's own outer transaction)."""
    conn = context.connection if context is not None else None
    try:
        return bool(conn is not None and conn.in_transaction())
    except Exception:  # noqa: BLE001 - a closed or odd connection: treat as committed
        return False


# --------------------------------------------------------------------------- where it failed

STATEMENT_CHARS = 1500  # a failing statement is shown up to this size…
STATEMENT_LINES = 30  # …and this many lines (around the error's position when it is known)
LINE_CHARS = 240
_PASSWORD = re.compile(r"(?i)(\bpassword\s+)'(?:[^']|'')*'")


def _failure(
    project: AlembicProject,
    error: BaseException,
    failed: RevisionStep | None,
    o: MigrateOptions,
) -> Failure:
    """Where `error` happened: the revision's file and line (the deepest traceback frame inside
    it, else inside the script folder: env.py), and for a server error the statement (secrets
    masked before it is cut), the position and the server's message, detail, hint and
    context; for a Python error the exception."""
    f = Failure(revision=failed.revision.revision if failed else "")
    path = Path(failed.revision.path) if failed is not None and failed.revision.path else None
    frame = _frame_in(error, path, Path(project.script_location))
    workspace = (o.workspace or Path.cwd()).resolve()
    if frame is not None:
        f.file, f.line = _shown(Path(frame.filename), workspace), frame.lineno
    elif path is not None:
        f.file = _shown(path, workspace)
    f.traceback = _PASSWORD.sub(r"\1'***'", "".join(traceback.format_exception(error)))
    server = _server_error(error)
    if server is None:
        f.exception = describe_exception(error)
        return f
    orig = getattr(server, "orig", None) or server
    diag = getattr(orig, "diag", None)

    def text(name: str) -> str:
        value = getattr(diag, name, None) if diag is not None else None
        return " ".join(str(value).split()) if value else ""

    f.message = text("message_primary") or server_message(server)
    f.detail, f.hint = text("message_detail"), text("message_hint")
    f.context = (getattr(diag, "context", None) or "").strip() if diag is not None else ""
    f.context = _PASSWORD.sub(r"\1'***'", o.redact(f.context))  # it may quote a statement
    f.sqlstate = text("sqlstate") or str(getattr(orig, "sqlstate", "") or "")
    position = text("statement_position")
    statement = getattr(server, "statement", None)
    if isinstance(statement, str) and statement.strip():
        pos = int(position) if position.isdigit() else None
        f.statement, f.statement_line, f.statement_column = _statement(statement, pos, o.redact)
        f.position = pos
    return f


def _frame_in(
    error: BaseException, path: Path | None, folder: Path
) -> traceback.FrameSummary | None:
    """The deepest frame of `error`'s traceback inside `path`, else inside `folder`."""
    frames = traceback.extract_tb(error.__traceback__)
    resolved = [(fr, Path(fr.filename).resolve()) for fr in frames if fr.filename]
    if path is not None:
        target = path.resolve()
        inside = [fr for fr, p in resolved if p == target]
        if inside:
            return inside[-1]
    top = folder.resolve()
    inside = [fr for fr, p in resolved if p.is_relative_to(top)]
    return inside[-1] if inside else None


def _shown(path: Path, workspace: Path) -> str:
    """Relative to the workspace when inside it (the repository's path on GitHub)."""
    try:
        return path.resolve().relative_to(workspace).as_posix()
    except ValueError:
        return str(path)


def _server_error(error: BaseException) -> BaseException | None:
    """The server error behind `error` (SQLAlchemy's wrapper, or the driver's own), if any."""
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa.exc.DBAPIError) or getattr(exc, "diag", None) is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _statement(
    sql: str, position: int | None, redact: Callable[[str], str]
) -> tuple[str, int | None, int | None]:
    """The statement for people: secrets and password literals masked first, then cut to a
    window of lines (around `position`, the server's 1-based character, when known). Returns
    it with the position's line and column in what is shown."""
    line = column = None
    if position is not None and 0 < position <= len(sql) + 1:
        before = sql[: position - 1]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    masked = _PASSWORD.sub(r"\1'***'", redact(sql))
    lines = [ln.rstrip() for ln in masked.expandtabs(4).splitlines()]
    while lines and not lines[0].strip():
        lines.pop(0)
        line = line - 1 if line is not None else None
    while lines and not lines[-1].strip():
        lines.pop()
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
    lines = [ln[indent:] for ln in lines]
    if column is not None:
        column = max(1, column - indent)
    at = (line or 1) - 1
    if sum(len(ln) + 1 for ln in lines) <= STATEMENT_CHARS and len(lines) <= STATEMENT_LINES:
        return "\n".join(lines), line, column
    # A window of lines around the position (or the start), each line cut, the statement's
    # first line kept for what it is.
    half = STATEMENT_LINES // 2
    start = max(0, min(at - half, len(lines) - STATEMENT_LINES)) if line else 0
    window = list(range(start, min(len(lines), start + STATEMENT_LINES)))
    shown: list[str] = []
    if start > 0:
        shown.append(_cut_line(lines[0], None))
    if start > 1:
        shown.append(f"… ({start - 1} line(s) left out)")
    prefix = len(shown)
    budget = STATEMENT_CHARS - sum(len(x) + 1 for x in shown)
    last = start - 1
    for i in window:
        piece = _cut_line(lines[i], column if i == at and line else None)
        if budget - len(piece) - 1 < 0 and shown:
            break
        budget -= len(piece) + 1
        shown.append(piece)
        last = i
    if last + 1 < len(lines):
        shown.append(f"… ({len(lines) - last - 1} line(s) left out)")
    if line is not None:
        line = prefix + (at - start) + 1 if start <= at <= last else None
    long = at < len(lines) and len(lines[at]) > LINE_CHARS
    if column is not None and long and column > LINE_CHARS - 20:
        column = LINE_CHARS // 2 + 2  # `_cut_line` centred the line on it
    if line is None:
        column = None
    return "\n".join(shown), line, column


def _cut_line(text: str, column: int | None) -> str:
    """One line at most LINE_CHARS long, around `column` when given."""
    if len(text) <= LINE_CHARS:
        return text
    if column is None or column <= LINE_CHARS - 20:
        return text[: LINE_CHARS - 1] + "…"
    start = column - LINE_CHARS // 2
    return "…" + text[start : start + LINE_CHARS - 2] + "…"


def up_to_date(
    project: AlembicProject, heads: list[str], target: str, facts: EnvFacts, *, dry_run: bool
) -> MigrateResult | None:
    """The migrate step's record when the database (`heads`, read under the deploy lock) is
    already at `target`: nothing to apply, so env.py need not run again. None otherwise."""
    if not heads:
        return None
    try:
        destination = set(resolve_target(project, target))
    except ConfigError:
        return None  # `migrate` reports it
    if not destination or not (
        destination == set(heads) or destination <= project.ancestors(heads)
    ):
        return None
    if len(heads) > 1 and any(h in project.ancestors([o]) for h in heads for o in heads if o != h):
        return None  # a version table holding a revision and its ancestor: `migrate` refuses it
    return MigrateResult(
        script_location=str(project.script_location),
        target=target,
        dry_run=dry_run,
        previous=sorted(heads),
        current=sorted(heads),
        transaction_per_migration=facts.transaction_per_migration,
        version_table=facts.version_table,
        version_table_schema=facts.version_table_schema,
    )


def check_heads(project: AlembicProject, heads: list[str], target: str) -> None:
    """Refuse, before anything is written, a database this folder cannot upgrade: one at a
    revision the folder does not contain (an older checkout re-run), or a target below the
    current revision. Both are ConfigError (exit 2, nothing changed)."""
    known = project.ancestors(project.heads())
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise ConfigError(unknown_heads_message(unknown), step="status")
    _refuse_downgrade(project, tuple(heads), target, resolve_target(project, target))


def unknown_heads_message(unknown: list[str]) -> str:
    return (
        f"the database is at {', '.join(unknown)}, which the migrations folder does not "
        "contain: is this the right folder, or was a newer version deployed?"
    )


def _refuse_downgrade(
    project: AlembicProject, heads: tuple[str, ...], target: str, destination: tuple[str, ...]
) -> None:
    if target in HEAD_TARGETS or not heads:
        return
    below = project.ancestors(heads) - set(heads)
    if any(d in below for d in destination):
        raise ConfigError(
            f"target {target!r} is below the current revision {_fmt(heads)}: deploy only "
            "upgrades (use the rollback command to downgrade)"
        )


def _refuse_upgrade(
    project: AlembicProject, heads: tuple[str, ...], target: str, destination: tuple[str, ...]
) -> None:
    below = project.ancestors(heads) if heads else set()
    if any(d not in below for d in destination):
        raise ConfigError(
            f"target {target!r} is not below the current revision {_fmt(heads)}: "
            "rollback only downgrades"
        )


def _check_version_table(result: MigrateResult, destination: tuple[str, ...]) -> None:
    """The version table on the deployer's own connection must show what env.py reported."""
    if not result.pending:
        return
    current, expected = set(result.current), set(destination)
    if (expected <= current) if expected else not current:
        return
    raise StepFailed(
        f"env.py reported applying {len(result.applied)} revision(s) to {_fmt(destination)}, "
        f"but {result.version_table_name} on the deploy connection is at {_fmt(result.current)}: "
        "env.py migrated another database (does it ignore config.attributes['connection'] "
        "and sqlalchemy.url?)",
        step="migrate",
    )


def _read_back(
    connection: sa.Connection,
    result: MigrateResult,
    reconnect: Callable[[], sa.Connection] | None = None,
) -> list[str]:
    """The revision(s) the database is at, read on our connection; when that was lost, on a
    new one (`reconnect`, bounded). When neither can read it, `result.current_unknown` says
    why and nothing is guessed."""
    try:
        heads = read_heads(connection, result.version_table, result.version_table_schema)
    except sa.exc.SQLAlchemyError as exc:
        _rollback(connection)
        lost = server_message(exc)
        if sqlstate(exc) == "42501":  # the connection is fine: another one would not do better
            result.current_unknown, result.current_unreadable = lost, True
            return []
        if reconnect is None:
            result.current_unknown = lost
            return []
        try:
            fresh = reconnect()
            heads = read_heads(fresh, result.version_table, result.version_table_schema)
            _rollback(fresh)
        except (DeployError, sa.exc.SQLAlchemyError) as again:
            why = again.message if isinstance(again, DeployError) else server_message(again)
            result.current_unknown = f"{lost}; reconnecting: {why}"
            return []
        return heads
    if connection.in_transaction():
        connection.rollback()
    return heads


def _rollback(*connections: sa.Connection | None, tracker: _Tracker | None = None) -> None:
    """Roll back what is open on `connections` (and a block `_Stamped` left open)."""
    if tracker is not None:
        _abort_block(tracker)
    for connection in _distinct(*connections):
        try:
            if connection.in_transaction():
                connection.rollback()
        except sa.exc.SQLAlchemyError:
            pass


def _distinct(*connections: sa.Connection | None) -> list[sa.Connection]:
    out: list[sa.Connection] = []
    for c in connections:
        if c is not None and all(c is not o for o in out):
            out.append(c)
    return out


def _fmt(heads: tuple[str, ...] | list[str]) -> str:
    return ", ".join(heads) if heads else "base"


_RUNNING = re.compile(r"^-- Running upgrade (.*?) -> (\S+?),?(?: .*)?$", re.MULTILINE)


def offline_sql(
    project: AlembicProject,
    url: str,
    current: list[str],
    target: str,
    workspace: Path | None = None,
) -> dict[str, str]:
    """The SQL each pending revision would run, from Alembic's offline (`--sql`) mode, split at
    Alembic's `-- Running upgrade A -> B` markers."""
    if len(current) > 1:
        return {}
    rendered = render_offline(project, url, current[0] if current else None, target, workspace)
    if rendered.error:  # offline mode is best effort
        return {"*": f"-- offline SQL unavailable: {rendered.error}"}
    text = rendered.text
    marks = list(_RUNNING.finditer(text))
    preamble = text[: marks[0].start()].strip() if marks else ""
    chunks: list[list[str]] = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        chunks.append([m.group(2), re.sub(r"\n{3,}", "\n\n", text[m.end() : end].strip())])
    # Alembic writes a revision's BEGIN before its marker, so it ends the chunk before: give
    # it back, so that each revision reads BEGIN … COMMIT.
    for this, following in pairwise(chunks):
        if this[1].endswith(_BEGIN):
            this[1] = this[1][: -len(_BEGIN)].rstrip()
            following[1] = f"{_BEGIN}\n\n{following[1]}"
    if preamble == _BEGIN and chunks:
        preamble, chunks[0][1] = "", f"{_BEGIN}\n\n{chunks[0][1]}"
    out: dict[str, str] = {}
    if preamble:  # e.g. CREATE TABLE alembic_version on a fresh database
        out["(setup)"] = preamble
    out.update((rev, sql) for rev, sql in chunks)
    return out


_BEGIN = "BEGIN;"


@dataclass
class EnvFacts:
    """What env.py configures, learnt by running it once without changing anything."""

    heads: list[str]
    version_table: str
    version_table_schema: str | None
    transaction_per_migration: bool = False


def inspect_env(
    project: AlembicProject,
    connection: sa.Connection | None,
    *,
    url: str,
    workspace: Path | None = None,
) -> EnvFacts:
    """Run env.py with a work function that applies nothing (as `alembic current` does, with
    `dont_mutate`): a broken env.py shows here, before the deploy lock or any change.
    `connection`: what env.py is handed (None: env-connection none, it builds its own)."""
    seen: dict[str, Any] = {}

    def work(heads: tuple[str, ...], context: MigrationContext) -> Any:
        seen.update(
            heads=sorted(heads),
            table=context.version_table,
            schema=context.version_table_schema,
            per_migration=bool(getattr(context, "_transaction_per_migration", False)),
        )
        return []

    try:
        run_env(
            project, work, connection=connection, url=url, workspace=workspace, dont_mutate=True
        )
    except DeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError(f"env.py failed before migrating: {describe_exception(exc)}") from None
    finally:
        _rollback(connection)
    if not seen:
        raise ConfigError("env.py never called context.run_migrations(): nothing would be migrated")
    return EnvFacts(seen["heads"], seen["table"], seen["schema"], seen["per_migration"])
