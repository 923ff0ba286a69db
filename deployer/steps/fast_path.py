"""The migrate step's fast path (the `fast-path` input, off by default): a revision's statements
are sent to the server together, in as few round trips as its own code allows, instead of one
round trip per statement.

How: while Alembic's loop runs a revision's `upgrade()` — once, online, inside that revision's
transaction, on env.py's connection, with env.py's MigrationContext — the statements Alembic's
operations emit through `impl._exec` are held back when they can be sent verbatim: DDL and plain
SQL text, with no bound parameter and no execution option. Everything else runs the normal way,
one statement at a time, after the held statements are sent: a statement with parameters
(`bulk_insert`, inserts and updates with values, `sa.text` with binds), with execution options,
transaction control (BEGIN, COMMIT, SAVEPOINT, …), SET/RESET (the server parses a whole query
string before running it, with the settings in force at the start), a NUL character, and any
statement the revision runs directly on the connection (`op.get_bind().execute()`,
`context.get_bind()`), before which the held statements are sent (a `before_execute` listener),
so that what it reads reflects what came before. When the revision returns, what is held is
sent in one simple-protocol query (psycopg uses the simple protocol when no parameters are
passed; PostgreSQL 13+ applies `statement_timeout` to each statement of it, `lock_timeout` to
each lock wait). If it raises, what is held is sent first, so that a server error the normal
path would have met earlier is the one reported.

Transactions, the version table, the deploy history, retries and the blocker watch are
Alembic's and the deployer's usual path. The fast path stays off for the whole upgrade when the
connection is in autocommit (statements such as CREATE INDEX CONCURRENTLY run one by one), not
in a transaction, translates schema names, or carries SQLAlchemy execution event listeners
(they would see one query instead of each statement). What differs, knowingly: a syntax error
anywhere in a batch is reported before a runtime error in an earlier statement of it (both
fail, and the revision rolls back either way); `statement_timestamp()` is one value per batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy.sql.ddl import DDLElement

_EXECUTION_EVENTS = ("before_execute", "after_execute", "before_cursor_execute")
# Held statements are sent before anything else runs on the connection, and before it commits
# or rolls back (user code calling op.get_bind().commit(), for one).
_FLUSH_BEFORE = ("before_execute", "commit", "rollback")
_ENDS = frozenset({"commit", "rollback"})
_PERCENTS = re.compile(r"%+")
# Statements that must run on their own: transaction control, and settings that change how
# the rest of a query string is parsed (it is parsed whole before it runs).
_ALONE = re.compile(
    r"(?:^|;)\s*(?:BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE|SET|RESET)\b",
    re.IGNORECASE,
)


class FastPath:
    """The fast path for one `migrate` call. `fallbacks` maps a revision to why (some of) its
    statements ran one by one; `sent` holds the revisions whose statements all went together."""

    def __init__(self) -> None:
        self.fallbacks: dict[str, str] = {}
        self.sent: set[str] = set()
        self._refused: dict[int, str | None] = {}  # per connection: why the fast path is off
        self._listening: list[tuple[sa.Connection, str, Callable[..., None]]] = []
        self._batch: _Batch | None = None

    def install(self, step: RevisionStep, context: MigrationContext) -> None:
        """Replace an upgrade step's migration function (before Alembic's loop calls it)."""
        if not step.is_upgrade:
            return
        normal = step.migration_fn
        revision = step.revision.revision

        def run(**kw: Any) -> None:
            conn = context.connection
            reason = self._refusal(conn)
            if conn is None or reason:
                self.fallbacks[revision] = reason or "no connection"
                normal(**kw)
                return
            batch = self._batch = _Batch(conn)
            impl = context.impl
            own_exec = impl._exec

            def held_exec(
                construct: Any,
                execution_options: Mapping[str, Any] | None = None,
                multiparams: Any = None,
                params: Any = None,
            ) -> Any:
                if batch.failed is not None:
                    batch.send()  # raises it
                why = batch.hold(construct, execution_options, multiparams, params)
                if why is None:
                    return None  # Alembic's operations do not use the result
                self.fallbacks.setdefault(revision, why)
                batch.send()
                kw_: dict[str, Any] = {"execution_options": execution_options}
                if multiparams is not None:
                    kw_["multiparams"] = multiparams
                if params:
                    kw_["params"] = params
                return own_exec(construct, **kw_)

            own_block = context.autocommit_block

            @contextmanager
            def autocommit_block() -> Iterator[None]:
                batch.send()  # before Alembic commits the transaction they belong to
                with own_block():
                    yield

            impl._exec = held_exec  # type: ignore[method-assign]
            context.autocommit_block = autocommit_block  # type: ignore[method-assign]
            try:
                normal(**kw)
            except BaseException:
                batch.send()  # a server error the normal path met first wins
                raise
            finally:
                del impl._exec, context.autocommit_block  # the class's methods again
                self._batch = None
            batch.send()
            if revision not in self.fallbacks:
                self.sent.add(revision)

        run.__name__ = getattr(normal, "__name__", "upgrade")
        step.migration_fn = run

    def close(self) -> None:
        """Remove the listeners from the connections (they outlive the upgrade)."""
        for conn, event, fn in self._listening:
            if sa.event.contains(conn, event, fn):
                sa.event.remove(conn, event, fn)
        self._listening.clear()

    def _refusal(self, conn: sa.Connection | None) -> str | None:
        if conn is None:
            return "no connection"
        key = id(conn)
        if key not in self._refused:
            self._refused[key] = _connection_refusal(conn)
            if self._refused[key] is None:
                # Anything run on the connection itself (op.get_bind(), context.get_bind())
                # first sends what is held, so that it sees what came before.
                def flush_first(*_: Any) -> None:
                    if self._batch is not None:
                        self._batch.send()

                def flush_before_end(*_: Any) -> None:
                    # Raising inside SQLAlchemy's commit/rollback would leave the connection
                    # half-ended: a failure is kept and raised when the revision's code next
                    # reaches the deployer (the transaction is lost either way, as it is when
                    # the normal path fails on that statement).
                    if self._batch is not None:
                        self._batch.send(defer_failure=True)

                for event in _FLUSH_BEFORE:
                    fn = flush_before_end if event in _ENDS else flush_first
                    sa.event.listen(conn, event, fn)
                    self._listening.append((conn, event, fn))
        if self._refused[key] is None and (not conn.in_transaction() or _autocommit(conn)):
            return "the connection is not inside a transaction"
        return self._refused[key]


class _Batch:
    """Statements held for one round trip on `conn`."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.held: list[str] = []
        self.failed: BaseException | None = None  # a send that failed while the txn ended

    def hold(
        self,
        construct: Any,
        execution_options: Mapping[str, Any] | None,
        multiparams: Any,
        params: Any,
    ) -> str | None:
        """Hold `construct` (None) or say why it runs on its own."""
        if _autocommit(self.conn) or not self.conn.in_transaction():
            return "a statement outside a transaction (after a commit, or in autocommit_block)"
        if multiparams or params:
            return "a statement with parameters"
        if execution_options or getattr(construct, "_execution_options", None):
            return "a statement with execution options"
        if isinstance(construct, str):
            construct = sa.text(construct)
        if isinstance(construct, sa.TextClause):
            if construct._bindparams:
                return "a statement with bound parameters"
        elif not isinstance(construct, DDLElement):
            return "a statement that is not DDL or plain SQL"
        compiled = construct.compile(dialect=self.conn.dialect)
        if getattr(compiled, "binds", None):
            return "a statement with bound parameters"
        sql = str(compiled).strip()
        if "\x00" in sql:
            return "a statement with a NUL character"
        code = code_only(sql)
        if code is None:
            return "a statement whose quoting is not plain (E'' strings, unterminated quotes)"
        if _ALONE.search(code):
            return "transaction control or SET"
        if any(len(m.group()) % 2 for m in _PERCENTS.finditer(sql)):
            return "a statement with a parameter placeholder"
        if sql:
            self.held.append(sql)
        return None

    def send(self, *, defer_failure: bool = False) -> None:
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        if not self.held:
            return
        sql, self.held = to_simple_query(self.held), []
        try:
            self.conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
        except sa.exc.DBAPIError as exc:
            if not defer_failure:
                raise
            self.failed = exc


def to_simple_query(statements: list[str]) -> str:
    """One query string for the simple protocol. SQLAlchemy compiles for psycopg's `pyformat`
    style, doubling every `%`, and psycopg halves them when it sends a statement with its (here
    empty) parameters; sent without parameters they are halved here instead (`hold` leaves a
    statement with an odd run of `%` to the normal way). The terminator goes on a line of its
    own: a statement may end in a `--` comment."""
    return "".join(f"{s}\n;\n" for s in statements).replace("%%", "%")


_DOLLAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def code_only(sql: str) -> str | None:
    """`sql` with its string literals, quoted identifiers, dollar-quoted bodies and comments
    blanked out (what is left is keywords, names and punctuation), or None when that is not
    certain: an escape string (E'…', where a backslash can hide a quote), a quote or comment
    left open, or comments nested (PostgreSQL counts them)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            if c == "'" and i and sql[i - 1] in "eE" and not _word(sql, i - 1):
                return None
            j = i + 1
            while True:
                j = sql.find(c, j)
                if j < 0:
                    return None
                if sql.startswith(c * 2, j):
                    j += 2
                    continue
                break
            out.append(" ")
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            out.append(" ")
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0 or "/*" in sql[i + 2 : j]:
                return None
            out.append(" ")
            i = j + 2
        elif c == "$" and not _word(sql, i) and (m := _DOLLAR.match(sql, i)):
            j = sql.find(m.group(), m.end())
            if j < 0:
                return None
            out.append(" ")
            i = j + len(m.group())
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _word(sql: str, i: int) -> bool:
    """Whether the character before position `i` continues an identifier."""
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")


def _connection_refusal(conn: sa.Connection) -> str | None:
    if conn.get_execution_options().get("schema_translate_map"):
        return "the connection translates schema names"
    if getattr(conn.dialect, "_backslash_escapes", False):
        return "standard_conforming_strings is off (a backslash can hide a quote)"
    for target in (conn, conn.engine):
        if any(list(getattr(target.dispatch, ev)) for ev in _EXECUTION_EVENTS):
            return "SQLAlchemy execution event listeners are set on the connection"
    return None


def _autocommit(conn: sa.Connection) -> bool:
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
