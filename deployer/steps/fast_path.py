"""The migrate step's fast path (the `fast-path` input, off by default): a revision's statements
are sent to the server together, in as few round trips as its own code allows, instead of one
round trip per statement.

How: while Alembic's loop runs a revision's `upgrade()` — once, online, inside that revision's
transaction, on env.py's connection, with env.py's MigrationContext — the statements Alembic's
operations emit through `impl._exec` are held back when they can be sent verbatim: DDL and plain
SQL text, with no bound parameter and no execution option. When the revision returns, what is
held is sent in one simple-protocol query (psycopg uses the simple protocol when no parameters
are passed; PostgreSQL 13+ applies `statement_timeout` to each statement of it, `lock_timeout` to
each lock wait). If it raises, what is held is sent first, so that a server error the normal
path would have met earlier is the one reported.

Everything else runs the normal way, one statement at a time, in its place, after what is held
is sent:
- statements with parameters (`bulk_insert`, inserts and updates with values, `sa.text` with
  binds: values stay bound, never inlined), with execution options (on the statement or, set
  during the upgrade, on the connection), a NUL character, outside a transaction (after a
  commit, in `autocommit_block()`) or inside a savepoint;
- transaction control and SET/RESET, and anything mentioning the settings that change how the
  server reads SQL (it parses a whole query string before running it): after those, nothing
  more is held in that revision;
- whatever SQLAlchemy runs on the connection itself (`op.get_bind().execute()`,
  `exec_driver_sql()`, `context.get_bind()`, an Inspector, an ORM Session), its commits and its
  rollbacks: listeners send what is held first, so that reads see what came before.

No statement of a revision is held when its source (read with `ast`) catches or suppresses
exceptions (a statement must fail where the revision can catch it) or reaches the database other
than through SQLAlchemy's Connection: its DBAPI connection or cursor, the engine, another
connection, a database driver; nor when the source of one of the user's own modules it uses
does (`SourceCheck`: the modules it imports, those its globals come from and those custom
operations live in, transitively, but not the standard library nor installed packages). Code
reached by a computed name (`importlib.import_module(name)`, `getattr`) or loaded from a path
by hand is not found.

No statement at all is held when the connection is in autocommit or not in a transaction,
translates schema names, carries SQLAlchemy execution listeners (they would see one query
instead of each statement), or the server has `standard_conforming_strings` off. Transactions,
the version table, the deploy history, retries and the blocker watch are Alembic's and the
deployer's usual path. What differs, knowingly: a syntax error anywhere in a batch is reported
before a runtime error in an earlier statement of it (both fail, and the revision rolls back
either way), error positions count the lines of the batch, and `statement_timestamp()` is one
value per batch.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.util
import re
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy.sql.ddl import DDL, DDLElement

_EXECUTION_EVENTS = (
    "before_execute",
    "after_execute",
    "before_cursor_execute",
    "after_cursor_execute",
)
# Held statements are sent before anything else SQLAlchemy runs on the connection (execute,
# exec_driver_sql, the Inspector, an ORM Session: all reach before_cursor_execute), and before
# it commits or rolls back (user code calling op.get_bind().commit(), for one).
_FLUSH_BEFORE = ("before_cursor_execute", "commit", "rollback")
_ENDS = frozenset({"commit", "rollback"})
# Settings that change how the server reads the rest of a query string, however they are set
# (SET, set_config(), inside a DO block): nothing more is held in that revision.
_LEXING = re.compile(r"standard_conforming_strings|backslash_quote", re.IGNORECASE)
_READ_DIFFERENTLY = "a setting that changes how SQL is read"
_TRANSACTION_OR_SET = "transaction control or SET"
_STICKY = frozenset({_READ_DIFFERENTLY, _TRANSACTION_OR_SET})
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
        self._installed: set[int] = set()  # connections carrying the flush listeners
        self._listening: list[tuple[sa.Connection, str, Callable[..., None]]] = []
        self._batch: _Batch | None = None
        self._sources = SourceCheck()

    def install(self, step: RevisionStep, context: MigrationContext) -> None:
        """Replace an upgrade step's migration function (before Alembic's loop calls it)."""
        if not step.is_upgrade:
            return
        normal = step.migration_fn
        revision = step.revision.revision

        def run(**kw: Any) -> None:
            conn = context.connection
            reason = self._refusal(conn) or self._sources.refusal(step)
            if "_exec" in vars(context.impl):
                reason = reason or "env.py replaced impl._exec"
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
                if why in _STICKY:
                    # A SAVEPOINT the revision may roll back to, a setting that changes how
                    # SQL is read: hold nothing more in this revision.
                    batch.stopped = why
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
        """Why no statement of the next revision may be held on `conn` (None: they may).
        Checked before every revision: env.py or a revision may add listeners or options."""
        if conn is None:
            return "no connection"
        key = id(conn)
        reason = _connection_refusal(conn, ours=key in self._installed)
        if reason is None and key not in self._installed:
            self._installed.add(key)

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
        if reason is None and _outside_transaction(conn):
            return "the connection is not inside a transaction"
        return reason


class _Batch:
    """Statements held for one round trip on `conn`."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.held: list[str] = []
        self.failed: BaseException | None = None  # a send that failed while the txn ended
        self.stopped: str | None = None  # why nothing more is held in this revision

    def hold(
        self,
        construct: Any,
        execution_options: Mapping[str, Any] | None,
        multiparams: Any,
        params: Any,
    ) -> str | None:
        """Hold `construct` (None) or say why it runs on its own."""
        if self.stopped:
            return self.stopped
        if _outside_transaction(self.conn):
            return "a statement outside a transaction (after a commit, or in autocommit_block)"
        if self.conn.in_nested_transaction():
            # The revision may catch a failure and roll back to the savepoint: the statement
            # must fail where it stands.
            return "a statement inside a savepoint (begin_nested)"
        if multiparams or params:
            return "a statement with parameters"
        if execution_options or getattr(construct, "_execution_options", None):
            return "a statement with execution options"
        options = self.conn.get_execution_options()
        if options.get("schema_translate_map") or options.get("no_parameters"):
            return "the connection has execution options (schema_translate_map, no_parameters)"
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
        if _LEXING.search(sql):
            return _READ_DIFFERENTLY
        if isinstance(construct, sa.TextClause | DDL):
            # Free text may hold several statements: look at what is outside its quotes.
            # (SQLAlchemy's own DDL constructs - CREATE TABLE, CREATE INDEX, … - are one each.)
            code = code_only(sql)
            if code is None:
                return "a statement whose quoting is not plain (E'' strings, unterminated quotes)"
            if _ALONE.search(code):
                return _TRANSACTION_OR_SET
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


_SPECIAL = re.compile(r"['\"$]|--|/\*")


def code_only(sql: str) -> str | None:
    """`sql` with its string literals, quoted identifiers, dollar-quoted bodies and comments
    blanked out (what is left is keywords, names and punctuation), or None when that is not
    certain: an escape string (E'…', where a backslash can hide a quote), a quote or comment
    left open, or comments nested (PostgreSQL counts them)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while (m := _SPECIAL.search(sql, i)) is not None:
        start, token = m.start(), m.group()
        out.append(sql[i:start])
        if token in "'\"":
            if token == "'" and start and sql[start - 1] in "eE" and not _word(sql, start - 1):
                return None
            j = start + 1
            while True:
                j = sql.find(token, j)
                if j < 0:
                    return None
                if sql.startswith(token * 2, j):
                    j += 2
                    continue
                break
            i = j + 1
        elif token == "--":
            j = sql.find("\n", start)
            i = n if j < 0 else j
        elif token == "/*":
            j = sql.find("*/", start + 2)
            if j < 0 or "/*" in sql[start + 2 : j]:
                return None
            i = j + 2
        elif not _word(sql, start) and (d := _DOLLAR.match(sql, start)):
            j = sql.find(d.group(), d.end())
            if j < 0:
                return None
            i = j + len(d.group())
        else:  # a $ inside a name, or $1
            out.append(token)
            i = start + 1
            continue
        out.append(" ")
    out.append(sql[i:])
    return "".join(out)


def _word(sql: str, i: int) -> bool:
    """Whether the character before position `i` continues an identifier."""
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")


def _connection_refusal(conn: sa.Connection, *, ours: bool) -> str | None:
    options = conn.get_execution_options()
    if options.get("schema_translate_map"):
        return "the connection translates schema names"
    if getattr(conn.dialect, "_backslash_escapes", False):
        return "standard_conforming_strings is off (a backslash can hide a quote)"
    for event in _EXECUTION_EVENTS:
        listeners = len(list(getattr(conn.dispatch, event)))  # the engine's included
        if ours and event == "before_cursor_execute":
            listeners -= 1
        if listeners > 0:
            return f"SQLAlchemy {event} listeners are set on the connection"
    return None


_DRIVERS = frozenset({"psycopg", "psycopg2", "asyncpg", "pg8000"})
# Names through which a revision reaches the database other than through SQLAlchemy's
# Connection (whose executions send what is held first): the DBAPI connection, a cursor, the
# engine or another connection.
_BELOW = frozenset(
    {"connection", "driver_connection", "dbapi_connection", "_dbapi_connection"}
    | {"raw_connection", "cursor", "connect"}
    | {"engine", "create_engine", "engine_from_config", "create_async_engine"}
)


_MAYBE = re.compile("|".join(sorted(_BELOW | _DRIVERS | {"try", "suppress"})))
# Import statements, read from the text (anywhere: in a function, after `;` or `:`, with
# backslash continuations joined first): `from X import a, b`, `from X import (a,\n b)`,
# `from .X import a` and `import X, Y as z`.
_IMPORT = re.compile(
    r"(?:^|[;:])[ \t]*(?:from(?:[ \t]+|(?=\.))(?P<base>\.*[\w.]*)[ \t]*import[ \t]*"
    r"(?:\((?P<parenthesized>[^)]{0,4000})\)|(?P<names>[^\n#;]*))"
    r"|import[ \t]+(?P<modules>[^\n#;]*))",
    re.MULTILINE,
)
_CONTINUATION = re.compile(r"\\\r?\n")


class SourceCheck:
    """Why no statement of a revision may be held, from its code: the revision file's and that
    of the user's own modules it uses, transitively (not the standard library's nor an
    installed package's): those it imports (read from the text, in functions too), those its
    globals come from, and those that implement custom operations (`op.<name>` registered with
    `Operations.implementation_for`). One of them catches exceptions (a statement must then
    fail where it stands), or reaches the database below SQLAlchemy's Connection or through
    another connection (which would not see what is held). Each file is read once per run, and
    once more after its module is loaded."""

    def __init__(self) -> None:
        # Keyed on (file, whether its module is loaded): a file read before its module was
        # loaded is read again once it is, for its globals.
        self._files: dict[tuple[Path, bool], tuple[str | None, tuple[str, ...]]] = {}
        self._clean: set[tuple[Path, bool]] = set()  # nothing reachable from these refuses
        self._where: dict[str, Path | None] = {}

    def refusal(self, step: RevisionStep) -> str | None:
        try:
            return self._refusal(step)
        except Exception as exc:  # noqa: BLE001 - reading code must never fail a deploy
            return f"its code could not be read ({type(exc).__name__})"

    def _refusal(self, step: RevisionStep) -> str | None:
        script = step.revision
        start = Path(str(getattr(script, "path", None)))
        todo: list[tuple[Path, ModuleType | None, str | None]] = [
            (start, getattr(script, "module", None), None)
        ]
        seen = {(start, todo[0][1] is not None)}
        while todo:
            path, loaded, name = todo.pop()
            if (path, loaded is not None) in self._clean:
                continue
            reason, uses = self._file(path, loaded, name)
            if reason is not None:
                return reason if name is None else f"{reason}, in module {name}, which it uses"
            if name is None:
                uses = (*uses, *_operation_modules())
            for used in uses:
                found = self._users_module(used)
                module = sys.modules.get(used)
                if found is not None and (found, module is not None) not in seen:
                    seen.add((found, module is not None))
                    todo.append((found, module, used))
        self._clean |= seen
        return None

    def _file(
        self, path: Path, loaded: ModuleType | None, name: str | None
    ) -> tuple[str | None, tuple[str, ...]]:
        """One file's own refusal, and the modules it uses: those it imports and, when it is
        loaded, those its globals come from."""
        key = (path, loaded is not None)
        if key not in self._files:
            reason, uses = _scan(path, name)
            if reason is None and loaded is not None:
                uses = (*uses, *_modules_used_by(loaded))
            self._files[key] = (reason, uses)
        return self._files[key]

    def _users_module(self, name: str) -> Path | None:
        if name not in self._where:
            self._where[name] = _users_module(name)
        return self._where[name]


def _scan(path: Path, name: str | None) -> tuple[str | None, tuple[str, ...]]:
    try:
        raw = path.read_bytes()
        source = importlib.util.decode_source(raw)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return "its source could not be read", ()
    uses = _imported(source, path, name)
    if any(m.split(".")[0] in _DRIVERS for m in uses):
        return "it imports a database driver", ()
    if not _MAYBE.search(source):
        return None, uses  # none of the names looked for: no need to parse it
    try:
        tree = ast.parse(raw)
    except (SyntaxError, ValueError):
        return "its source could not be read", ()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Try) and node.handlers) or type(node).__name__ == "TryStar":
            return "it catches exceptions (a statement must fail where it stands)", ()
        word = (
            node.attr
            if isinstance(node, ast.Attribute)
            else node.id
            if isinstance(node, ast.Name)
            else node.name.rpartition(".")[2]
            if isinstance(node, ast.alias)
            else None
        )
        if word == "suppress":
            return "it suppresses exceptions (a statement must fail where it stands)", ()
        if word in _BELOW:
            return f"it reaches the database other than through its operations ({word})", ()
    return None, uses


def _imported(source: str, path: Path, name: str | None) -> tuple[str, ...]:
    """The modules a file's import statements run: `import a.b` runs a and a.b; `from a import
    b` runs a and, when b is a module, a.b. Relative imports are resolved against `name`. Read
    from the text, so an import in a string counts too (one more module read, never fewer)."""
    heads: list[str] = []
    for m in _IMPORT.finditer(_CONTINUATION.sub(" ", source)):
        if m["modules"] is not None:
            heads += [part.split()[0] for part in m["modules"].split(",") if part.split()]
            continue
        base = m["base"]
        if base.startswith("."):
            if name is None:
                continue
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            try:
                base = importlib.util.resolve_name(base, package)
            except (ImportError, ValueError):
                continue
        listed = m["parenthesized"] if m["parenthesized"] is not None else m["names"]
        names = [part.split()[0] for part in re.sub(r"#.*", "", listed).split(",") if part.split()]
        heads += [base, *(f"{base}.{n}" for n in names if n != "*")]
    out: list[str] = []
    for head in heads:
        parts = [p for p in head.split(".") if p.isidentifier()]
        out += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return tuple(dict.fromkeys(out))


def _modules_used_by(module: ModuleType) -> list[str]:
    """The modules a loaded module's globals come from: modules it imported, and the modules
    its functions and classes were defined in (for other objects, their type's). Types are
    looked at, not the objects, so that no lazy proxy runs."""
    out: list[str] = []
    for value in list(vars(module).values()):
        kind = type(value)
        try:
            if issubclass(kind, ModuleType):
                where = value.__name__
            elif issubclass(kind, type) or kind in _FUNCTIONS:
                where = value.__module__
            else:
                where = kind.__module__
        except Exception:  # noqa: BLE001 - any object a module holds
            continue
        if isinstance(where, str) and where != module.__name__:
            out.append(where)
    return out


_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _operation_modules() -> list[str]:
    """The modules implementing Alembic operations (`Operations.implementation_for`, custom
    operations included): a revision reaches them through `op`."""
    from alembic.operations import Operations

    registry = getattr(getattr(Operations, "_to_impl", None), "_registry", None) or {}
    return [m for fn in registry.values() if isinstance(m := getattr(fn, "__module__", None), str)]


def _users_module(name: str) -> Path | None:
    """The source file of module `name` when it is the user's own code: neither the standard
    library nor an installed package. Found without running anything: in sys.modules, else
    through the import system's finders, package by package."""
    if name.split(".")[0] in sys.stdlib_module_names:
        return None  # (and finding `distutils` would run setuptools' import hook)
    try:
        spec = _spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    origin = spec.origin if spec is not None else None
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    found = Path(origin).resolve()
    if any(found.is_relative_to(root) for root in _installed_roots()):
        return None
    return found


def _spec(name: str) -> ModuleSpec | None:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__spec__", None)
    parent, _, _ = name.rpartition(".")
    if not parent:
        return importlib.util.find_spec(name)  # a top-level name: finding it runs nothing
    above = _spec(parent)
    locations = above.submodule_search_locations if above is not None else None
    if not locations:
        return None
    return importlib.machinery.PathFinder.find_spec(name, list(locations))


@functools.cache
def _installed_roots() -> tuple[Path, ...]:
    """Where the standard library and installed packages live (their folders, not the
    prefixes: a project under /usr/src is the user's own even when Python's prefix is /usr)."""
    found = sysconfig.get_paths()
    paths = {found[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in found}
    paths |= {*site.getsitepackages(), site.getusersitepackages()}
    paths |= {p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"}}
    return tuple(Path(p).resolve() for p in paths if p)


def _outside_transaction(conn: sa.Connection) -> bool:
    """No transaction to hold statements in: none begun, or the DBAPI connection in autocommit."""
    return not conn.in_transaction() or bool(
        getattr(conn.connection.dbapi_connection, "autocommit", False)
    )
