"""The migrate step's fast path (the `fast-path` input, off by default): each pending revision's
`upgrade()` is rendered to SQL and sent to the server in one round trip, instead of one round
trip per statement.

How: when Alembic's loop calls a revision's migration function (inside that revision's
transaction, on env.py's connection), the function is first run against an offline
MigrationContext (Alembic's `--sql` mode, with the live, initialised dialect) that collects the
statements it emits, compiled exactly as SQLAlchemy would compile them for that connection, bound
values rendered inline. The statements are then sent as one simple-protocol query (psycopg uses
the simple protocol when no parameters are passed; PostgreSQL 13+ applies `statement_timeout` to
each statement of it, `lock_timeout` to each lock wait). Everything else — the transaction
boundaries, the version table, the deploy history, the retries and the blocker watch — is
Alembic's and the deployer's usual path.

A revision that cannot be rendered faithfully runs the normal way, in the same transaction (the
render touched nothing): one that reads from the database (offline mode has no connection:
reading a result fails), uses `autocommit_block()`, passes parameters or execution options to a
statement, raises while rendering, or a connection that is not inside a transaction (statements
such as CREATE INDEX CONCURRENTLY then need to run one by one). Each fallback is reported with
its reason. A revision's upgrade() therefore runs its Python twice when it falls back: once to
render, once for real.
"""

from __future__ import annotations

import functools
import io
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.engine.mock import MockConnection
from sqlalchemy.sql.ddl import DDLElement

from deployer.errors import describe_exception


class CannotRender(Exception):
    """The revision is not rendered: it runs the normal way. The message says why."""


def install(
    step: RevisionStep,
    context: MigrationContext,
    *,
    on_sent: Callable[[str, int], None],
    on_fallback: Callable[[str, str], None],
) -> None:
    """Replace an upgrade step's migration function with the fast path's (before Alembic's
    loop calls it). `on_sent(revision, statements)` is called after the revision went in one
    round trip, `on_fallback(revision, reason)` when it ran the normal way."""
    if step.is_upgrade:
        step.migration_fn = _fast(step, context, on_sent, on_fallback)


def _fast(
    step: RevisionStep,
    context: MigrationContext,
    on_sent: Callable[[str, int], None],
    on_fallback: Callable[[str, str], None],
) -> Callable[..., None]:
    normal = step.migration_fn
    revision = step.revision.revision

    @functools.wraps(normal)
    def run(**kw: Any) -> None:
        conn = context.connection
        try:
            if conn is None or not conn.in_transaction() or _autocommit(conn):
                raise CannotRender("the connection is not inside a transaction")
            if conn.get_execution_options().get("schema_translate_map"):
                raise CannotRender("the connection translates schema names")
            statements = render(normal, context.dialect, kw)
            sql = to_simple_query(statements)
        except CannotRender as exc:
            on_fallback(revision, str(exc))
            normal(**kw)
            return
        if sql:
            conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
        on_sent(revision, len(statements))

    return run


def render(fn: Callable[..., Any], dialect: Dialect, kw: Mapping[str, Any]) -> list[str]:
    """The statements `fn(**kw)` (a revision's upgrade) emits, compiled for `dialect` as the
    online path would compile them, bound values inline. CannotRender when that is not faithful."""
    statements: list[str] = []
    stray = io.StringIO()
    offline = MigrationContext.configure(
        dialect=dialect, opts={"as_sql": True, "literal_binds": True, "output_buffer": stray}
    )

    def capture(
        construct: Any,
        execution_options: Mapping[str, Any] | None = None,
        multiparams: Any = None,
        params: Any = None,
    ) -> None:
        if multiparams or params:
            raise CannotRender("a statement is executed with parameters")
        if execution_options:
            raise CannotRender(
                f"a statement is executed with execution options ({', '.join(execution_options)})"
            )
        if isinstance(construct, str):
            construct = sa.text(construct)
        literal = {} if isinstance(construct, DDLElement) else {"literal_binds": True}
        try:
            if literal and any(
                b.required for b in construct.compile(dialect=dialect).binds.values()
            ):
                # Rendered inline it would be NULL; the normal path refuses it.
                raise CannotRender("a statement has a parameter without a value")
            compiled = construct.compile(dialect=dialect, compile_kwargs=literal)
        except CannotRender:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds here
            raise CannotRender(
                f"a statement cannot be rendered: {describe_exception(exc)}"
            ) from None
        text = str(compiled).strip()
        if text:
            statements.append(text)

    def no_autocommit_block() -> Any:
        raise CannotRender("it uses autocommit_block()")

    # Instance attributes win over the methods: every operation Alembic renders goes through
    # impl._exec, and op.get_bind() is a recorder that keeps the parameters Alembic's own mock
    # connection would drop.
    offline.impl._exec = capture  # type: ignore[method-assign]
    offline.autocommit_block = no_autocommit_block  # type: ignore[method-assign]
    recorder: Any = _Recorder(dialect, lambda obj, parameters=None: capture(obj, params=parameters))
    offline.connection = offline.impl.connection = recorder  # Alembic's offline mock is one too
    try:
        with _operations(offline):
            fn(**kw)
    except CannotRender:
        raise
    except Exception as exc:  # noqa: BLE001 - user code; the normal path will say it again
        raise CannotRender(
            f"rendering it raised {describe_exception(exc)} (it may read from the database)"
        ) from None
    if stray.getvalue().strip():
        raise CannotRender("it writes output the fast path does not send")
    return statements


class _Recorder(MockConnection):
    """op.get_bind() while rendering: statements go to `capture`, with their parameters.
    Refuses what it cannot render faithfully."""

    def execution_options(self, **kw: Any) -> MockConnection:
        raise CannotRender(f"it sets execution options on the connection ({', '.join(kw)})")

    def _run_ddl_visitor(self, visitorcallable: Any, element: Any, **kwargs: Any) -> None:
        if kwargs.get("checkfirst"):
            # create(checkfirst=True) / create_all() look at the database first.
            raise CannotRender("it creates or drops objects with checkfirst")
        super()._run_ddl_visitor(visitorcallable, element, **kwargs)


_PERCENTS = re.compile(r"%+")


def to_simple_query(statements: list[str]) -> str:
    """One query string for the simple protocol. SQLAlchemy compiles for psycopg's `pyformat`
    style, doubling every `%`, and psycopg halves them when it sends a statement with its (here
    empty) parameters; sent without parameters they are halved here instead. A lone `%` would be
    a placeholder the normal path fails on too: CannotRender, so that it fails the normal way."""
    # The terminator on a line of its own: a statement may end in a `--` comment.
    sql = "".join(f"{s}\n;\n" for s in statements)
    if any(len(m.group()) % 2 for m in _PERCENTS.finditer(sql)):
        raise CannotRender("a statement holds a parameter placeholder")
    return sql.replace("%%", "%")


def _autocommit(conn: sa.Connection) -> bool:
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


@contextmanager
def _operations(offline: MigrationContext) -> Iterator[None]:
    """`alembic.op` bound to `offline` while rendering, then back to env.py's run (Alembic's
    `Operations.context` removes the proxy on exit, and leaves it set on an exception)."""
    op_module = sys.modules["alembic.op"]
    outer = getattr(op_module, "_proxy", None)
    try:
        with Operations.context(offline):
            yield
    finally:
        if outer is not None:
            outer._install_proxy()
