"""The rehearsal: the pending revisions run on a scratch database holding the live schema, and
every statement measured as it runs.

The scratch database is created on a server the caller names (`scratch-database-url`'s, or the
embedded one) and dropped afterwards. It gets the live database's schema built from the
target's catalog (`schema_copy`: no lock on any table of the target; objects the scratch server
cannot create, such as an extension it lacks, are noted and skipped) and the version table's
rows, not a replay of the history. Then the user's env.py runs the pending revisions on it, exactly as a deploy would.

Statements are seen through SQLAlchemy's `before_cursor_execute`/`after_cursor_execute` events,
listened to on every Engine while the rehearsal runs and kept for connections to the scratch
database: env.py may use the connection it is handed or build its own engine. Around each
statement, on the same session with a cursor of its own on the pool's DBAPI connection (no
event, no SQLAlchemy state; for an async engine SQLAlchemy's adapter, whose cursor waits on the
driver inside `run_sync`'s greenlet, so Alembic's async template is measured the same way), two
catalog reads: the relation locks the session holds (`pg_locks`), each table's `relfilenode`
(changed: the table was rewritten) and the scans counted in this transaction
(`pg_stat_xact_user_tables`: a constraint or NOT NULL validated by a scan, an index built). Python revisions are rehearsed the same way: nothing is guessed from source text.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy.engine import make_url

from deployer.alembic_project import ENV_THREAD_IDS, AlembicProject, render_offline, run_env
from deployer.db import (
    APPLICATION_NAME,
    IDLE,
    INERROR,
    ConnectionSpec,
    server_message,
    session_options,
    transaction_status,
)
from deployer.errors import describe_exception
from deployer.results.risk import LockHeld, StatementTrace
from deployer.risk.schema_copy import apply_ddl, schema_ddl
from deployer.sql import transaction_setting

STATEMENT_CHARS = 400

_USER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
_SNAPSHOT = f"""
    SELECT 'rel', format('%I.%I', n.nspname, c.relname), c.relfilenode::text,
           (coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0))::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stat_xact_user_tables s ON s.relid = c.oid
    WHERE c.relkind IN ('r', 'm', 'p') AND {_USER}
    UNION ALL
    SELECT 'lock', format('%I.%I', n.nspname, c.relname), l.mode, ''
    FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
      AND c.relkind IN ('r', 'm', 'p') AND {_USER}
"""
# Strength order of the table lock modes (PostgreSQL docs, "Table-Level Locks").
MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
_READ_MAX = 64 * 1024  # longer statements are data (a big INSERT), never either kind


@functools.lru_cache(maxsize=64)
def _reading(statement: str) -> tuple[bool, frozenset[str]]:
    """What PostgreSQL's parser (pglast) reads in `statement` (`rules.split`): whether it is
    transaction control (BEGIN, COMMIT, SAVEPOINT, SET TRANSACTION…) and the relations it names
    (as the server reads them: unquoted names folded to lower case). A text the parser
    refuses, or one longer than any statement of either kind (Alembic's own are a line), is
    neither: it is measured as a statement of the revision's."""
    if len(statement) > _READ_MAX:
        return False, frozenset()
    from pglast import ast
    from pglast.visitors import Visitor

    from deployer.risk.rules import split

    parsed = split(statement)
    nodes = [p.node for p in parsed if p.node is not None]
    if len(nodes) < len(parsed):  # the parser refused it
        return False, frozenset()
    control = any(isinstance(n, ast.TransactionStmt) or transaction_setting(n) for n in nodes)
    names: set[str] = set()

    class Relations(Visitor):
        def visit_RangeVar(self, _ancestors: object, node: Any) -> None:
            names.add(str(node.relname))

    for node in nodes:
        Relations()(node)
    return control, frozenset(names)


_PASSWORD = re.compile(r"(?i)(\bpassword\s+)'(?:[^']|'')*'")


def mode_rank(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else -1


class ForeignDatabase(RuntimeError):
    """Raised before a statement reaches any database but the scratch copy."""


class RehearsalUnavailable(Exception):
    """No rehearsal (the schema could not be copied, no scratch server): the review falls back
    to the rules and the live statistics and says why."""


def shown_sql(sql: str, redact: Callable[[str], str], limit: int = STATEMENT_CHARS) -> str:
    """A statement for people: on one line, password literals and secrets masked, cut at
    `limit` characters on a word boundary."""
    text = redact(_PASSWORD.sub(r"\1'***'", " ".join(sql.split())))
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + " …"


@dataclass
class Rehearsal:
    """What ran: per revision its statements (shown) and their raw SQL for the rules."""

    server: str = ""
    traces: dict[str, list[StatementTrace]] = field(default_factory=dict)
    raw: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)  # sql, in transaction
    errors: dict[str, str] = field(default_factory=dict)
    existing: set[str] = field(default_factory=set)  # tables there before the revisions ran
    copy_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- scratch database


def server_major(conn: sa.Connection) -> int:
    return int(str(conn.execute(sa.text("SHOW server_version_num")).scalar())) // 10000


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server of `server_url` (its role needs CREATEDB), dropped
    afterwards; yields its URL."""
    engine = ConnectionSpec(server_url, retries=1).engine(isolation_level="AUTOCOMMIT")
    name = f"db_deploy_risk_{uuid.uuid4().hex[:12]}"
    try:
        admin = engine.connect()
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise RehearsalUnavailable(
            f"cannot reach the scratch server: {server_message(exc)}"
        ) from None
    try:
        try:
            admin.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.DBAPIError as exc:
            raise RehearsalUnavailable(
                f"cannot create a scratch database: {server_message(exc)} (its role needs CREATEDB)"
            ) from None
        yield (
            make_url(server_url)
            .difference_update_query(["dbname"])
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):
            admin.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.close()
        engine.dispose()


def copy_schema(live: sa.Connection | None, target_url: str, scratch_url: str) -> list[str]:
    """The live schema into the scratch database, built from the target's catalog
    (`schema_copy`: no lock on any table of the target, no row read), read on `live` or on a
    session of its own to `target_url`. Returns what the scratch server could not create.
    RehearsalUnavailable when the catalog cannot be read."""
    own = None
    try:
        if live is None:
            own = ConnectionSpec(target_url, retries=1).engine()
            live = own.connect()
        statements, left_out = schema_ddl(live)
    except sa.exc.DBAPIError as exc:
        raise RehearsalUnavailable(
            f"cannot read the live schema from the catalog: {server_message(exc)}"
        ) from None
    finally:
        if own is not None:
            if live is not None:
                live.close()
            own.dispose()
    engine = ConnectionSpec(scratch_url, retries=1).engine(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as scratch:
            return [*left_out, *apply_ddl(scratch, statements)]
    except sa.exc.DBAPIError as exc:
        raise RehearsalUnavailable(
            f"cannot reach the scratch database: {server_message(exc)}"
        ) from None
    finally:
        engine.dispose()


def seed_version_table(
    scratch_url: str, heads: list[str], version_table: str, schema: str | None
) -> None:
    """The live version table's rows in the scratch database (the table created if the schema
    copy has none, as Alembic creates it)."""
    engine = ConnectionSpec(scratch_url, retries=1).engine()
    try:
        with engine.begin() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"version_table": version_table, "version_table_schema": schema}
            )
            ctx._ensure_version_table()
            table = ctx._version
            conn.execute(table.delete())
            if heads:
                conn.execute(table.insert(), [{"version_num": h} for h in heads])
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the tracer


@dataclass
class _Pending:
    sql: str
    started: float
    line: int
    in_transaction: bool
    before: tuple[dict[str, tuple[str, int]], dict[str, str]] | None


class Tracer:
    """Listens to every Engine's cursor events while active; keeps the scratch database's."""

    def __init__(self, database: str, version_table: str, redact: Callable[[str], str]) -> None:
        self.database = database
        self.version_table = version_table
        self.redact = redact
        self.revision = ""
        self.path = ""
        self.pending: dict[int, _Pending] = {}  # by connection: one statement at a time
        self.traces: dict[str, list[StatementTrace]] = {}
        self.raw: dict[str, list[tuple[str, bool]]] = {}
        self.existing: set[str] = set()
        self.foreign = ""  # a database other than the scratch one that env.py tried to use
        self.thread = threading.get_ident()  # env.py's (async engines run on it too)

    # ---- events
    def _ours(self, conn: sa.Connection, statement: str) -> bool:
        return (
            bool(self.revision)
            and conn.engine.url.database == self.database
            and self.version_table not in _reading(statement)[1]  # Alembic's own statements
        )

    def before(self, conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() != self.thread and threading.get_ident() not in ENV_THREAD_IDS:
            return  # another thread of the process (a watcher): not the rehearsal's
        database = conn.engine.url.database
        if database != self.database:
            # env.py built its own engine on another database (its own environment variable,
            # say): nothing may reach it during a rehearsal.
            self.foreign = self.foreign or str(database or "?")
            raise ForeignDatabase(
                f"env.py connected to database {database!r}, not to the scratch copy"
            )
        if not self._ours(conn, statement):
            return
        raw = conn.connection.dbapi_connection
        in_txn = _in_transaction(conn)
        before = None if _reading(statement)[0] else _snapshot(raw)
        self.pending[id(conn)] = _Pending(
            sql=statement,
            started=time.perf_counter(),
            line=self._line(),
            in_transaction=in_txn,
            before=before,
        )

    def after(self, conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
        p = self.pending.pop(id(conn), None)
        if p is None:
            return
        seconds = time.perf_counter() - p.started
        trace = self._trace(p, seconds)
        raw = conn.connection.dbapi_connection
        after = _snapshot(raw) if p.before is not None else None
        if p.before is not None and after is not None:
            (rels0, locks0), (rels1, locks1) = p.before, after
            trace.locks = [
                LockHeld(relation=name, mode=mode, existed=name in self.existing)
                for name, mode in sorted(locks1.items())
            ]
            # Only the locks this statement took or strengthened count as its own.
            trace.locks = [
                lk
                for lk in trace.locks
                if mode_rank(lk.mode) > mode_rank(locks0.get(lk.relation, ""))
            ]
            for name, (node, scans) in rels1.items():
                old = rels0.get(name)
                if old is None or name not in self.existing:
                    continue
                if old[0] != node and node != "0":
                    trace.rewritten.append(name)
                elif p.in_transaction and scans > old[1]:
                    trace.scanned.append(name)

    def error(self, ctx: Any) -> None:
        conn = ctx.connection
        p = self.pending.pop(id(conn), None) if conn is not None else None
        if p is None:
            return
        trace = self._trace(p, time.perf_counter() - p.started)
        trace.error = self.redact(server_message(ctx.original_exception))

    def _trace(self, p: _Pending, seconds: float) -> StatementTrace:
        traces = self.traces.setdefault(self.revision, [])
        self.raw.setdefault(self.revision, []).append((p.sql, p.in_transaction))
        trace = StatementTrace(
            revision=self.revision,
            index=len(traces) + 1,
            sql=shown_sql(p.sql, self.redact),
            line=p.line,
            seconds=round(seconds, 4),
            in_transaction=p.in_transaction,
        )
        traces.append(trace)
        return trace

    def _line(self) -> int:
        """The line of the revision file that sent the statement (its frame on the stack)."""
        if not self.path:
            return 0
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename == self.path:
                return frame.f_lineno
            frame = frame.f_back  # type: ignore[assignment]
        return 0

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        self.thread = threading.get_ident()
        events = (
            ("before_cursor_execute", self.before),
            ("after_cursor_execute", self.after),
            ("handle_error", self.error),
        )
        for name, fn in events:
            sa.event.listen(sa.engine.Engine, name, fn)
        try:
            yield
        finally:
            for name, fn in events:
                sa.event.remove(sa.engine.Engine, name, fn)


def _in_transaction(conn: sa.Connection) -> bool:
    """Whether a statement sent now runs inside a transaction block (a connection not in
    autocommit opens one; in autocommit, only an explicit BEGIN does)."""
    raw = conn.connection.dbapi_connection
    autocommit = bool(getattr(raw, "autocommit", False))
    return (not autocommit) or transaction_status(raw) not in (IDLE, None)


def _snapshot(raw: Any) -> tuple[dict[str, tuple[str, int]], dict[str, str]] | None:
    """Tables (relfilenode, scans in this transaction) and this session's table locks, read on
    the session's DBAPI connection with a cursor of its own (no SQLAlchemy event). `raw` is the
    pool's DBAPI connection: the driver's own for a sync engine, SQLAlchemy's adapter for an
    async one (its cursor waits on the driver's coroutines: the events run inside
    `run_sync`'s greenlet). None when the transaction has failed."""
    if transaction_status(raw) == INERROR:
        return None
    rels: dict[str, tuple[str, int]] = {}
    locks: dict[str, str] = {}
    cursor = raw.cursor()
    try:
        cursor.execute(_SNAPSHOT)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    for kind, name, a, b in rows:
        if kind == "rel":
            rels[name] = (a, int(b))
        elif mode_rank(a) > mode_rank(locks.get(name, "")):
            locks[name] = a
    return rels, locks


# --------------------------------------------------------------------------- the rehearsal


def rehearse(
    project: AlembicProject,
    scratch_url: str,
    *,
    heads: list[str],
    target: str = "heads",
    redact: Callable[[str], str] = lambda s: s,
    workspace: Path | None = None,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> Rehearsal:
    """Run the revisions from `heads` (the live database's) to `target` on `scratch_url` (a
    database holding the live schema), tracing every statement. A revision that fails ends the
    rehearsal: its error is recorded (the same deploy would fail there)."""
    started = time.perf_counter()
    seed_version_table(scratch_url, heads, version_table, version_table_schema)
    spec = ConnectionSpec(
        scratch_url, retries=1, lock_timeout=lock_timeout, statement_timeout=statement_timeout
    )
    engine = spec.engine()
    database = str(make_url(scratch_url).database)
    tracer = Tracer(database, version_table, redact)
    out = Rehearsal()
    try:
        with engine.connect() as conn:
            tracer.existing = set(_snapshot(conn.connection.dbapi_connection)[0])  # type: ignore[index]
            conn.rollback()
            out.existing = set(tracer.existing)

            def steps(planned: list[RevisionStep]) -> Iterator[RevisionStep]:
                for step in planned:
                    tracer.revision = step.revision.revision
                    tracer.path = str(Path(step.revision.path).resolve())
                    tracer.traces.setdefault(tracer.revision, [])
                    yield step
                tracer.revision = tracer.path = ""

            def work(current: tuple[str, ...], context: MigrationContext) -> Any:
                planned = project.script._upgrade_revs(target, current)  # type: ignore[arg-type]
                return steps(list(planned))

            environ = {
                "PGOPTIONS": session_options(lock_timeout, statement_timeout),
                "PGAPPNAME": APPLICATION_NAME,
            }
            try:
                with tracer.listening():
                    run_env(
                        project,
                        work,
                        connection=conn,
                        url=scratch_url,
                        environ=environ,
                        workspace=workspace,
                    )
                if conn.in_transaction():
                    conn.commit()
            except Exception as exc:  # noqa: BLE001 - user code: recorded, the review goes on
                failed = tracer.revision or "env.py"
                message = (
                    server_message(exc)
                    if isinstance(exc, sa.exc.DBAPIError)
                    else describe_exception(exc)
                )
                out.errors[failed] = redact(message)
                with contextlib.suppress(sa.exc.DBAPIError):
                    conn.rollback()
    finally:
        engine.dispose()
    if tracer.foreign:
        raise RehearsalUnavailable(
            f"env.py connected to database {redact(tracer.foreign)!r} instead of the scratch "
            "copy (does it read its URL from a variable of its own? it should use "
            "sqlalchemy.url or DATABASE_URL); no statement of the revisions reached it"
        )
    out.traces, out.raw = tracer.traces, tracer.raw
    out.seconds = round(time.perf_counter() - started, 4)
    return out


def offline_statements(
    project: AlembicProject,
    url: str,
    heads: list[str],
    target: str = "heads",
    workspace: Path | None = None,
) -> tuple[dict[str, str], str]:
    """Without a rehearsal: each pending revision's SQL from Alembic's offline (`--sql`) mode,
    cut at the step boundaries. ({revision: sql}, "" or why it is not available: a revision
    that reads data cannot render offline)."""
    if len(heads) > 1:
        return {}, "offline SQL needs a single current revision"
    rendered = render_offline(project, url, heads[0] if heads else None, target, workspace)
    if rendered.error:
        return {}, f"offline SQL unavailable: {rendered.error}"
    return rendered.by_step(), ""
