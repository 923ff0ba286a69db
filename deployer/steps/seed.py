"""Seed: a `seed(connection)` Python file or a `.sql` file, in one transaction after the
migrations. Row deltas per table come from `pg_stat_xact_user_tables`, the statistics of the
current transaction, read when it starts and just before it commits: exact, and free of any
count(*). (The view also holds this backend's counts from earlier transactions that are not yet
flushed to the shared statistics, and no flush happens inside a transaction: hence the
difference.)"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from deployer.db import server_message
from deployer.errors import ConfigError, describe_exception
from deployer.results import SeedResult, TableDelta
from deployer.sql import concurrently, transaction_setting

_DELTAS = sa.text(
    """
    SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_del
    FROM pg_stat_xact_user_tables
    WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
    ORDER BY 1
    """
)


def _stats(connection: sa.Connection) -> dict[str, tuple[int, int, int]]:
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in connection.execute(_DELTAS)}


# ---------------------------------------------------------------------------- the SQL file

# Transaction control a seed may not use: it runs inside the deployer's one transaction.
_TXN_KINDS = {
    0: "BEGIN",
    1: "START TRANSACTION",
    2: "COMMIT",
    3: "ROLLBACK",
    4: "SAVEPOINT",
    5: "RELEASE SAVEPOINT",
    6: "ROLLBACK TO SAVEPOINT",
    7: "PREPARE TRANSACTION",
    8: "COMMIT PREPARED",
    9: "ROLLBACK PREPARED",
}
# Statements PostgreSQL refuses inside a transaction block: refused before anything runs.
_OUTSIDE_TXN = {
    "VacuumStmt": "VACUUM/ANALYZE",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
}


@dataclass(frozen=True)
class SqlStatement:
    """One statement of a SQL seed file, with the line it starts on."""

    line: int  # 1-based line of the file where the statement starts
    text: str


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, max(offset, 0)) + 1


_SAVEPOINT_KINDS = {4, 5, 6}  # SAVEPOINT, RELEASE, ROLLBACK TO: they cannot end a transaction


def _forbidden(stmt: object, savepoints: list[str] | None = None) -> str:
    """What transaction control `stmt` (a pglast node) is, or ''. Savepoints stay inside the
    transaction and are allowed; with `savepoints` (the names a .sql file established so far,
    kept up to date here) a RELEASE or ROLLBACK TO of a savepoint never made is refused too."""
    from pglast import ast

    if isinstance(stmt, ast.TransactionStmt):
        kind = int(stmt.kind)  # type: ignore[arg-type]
        if kind in _SAVEPOINT_KINDS:
            name = str(stmt.savepoint_name or "")
            if savepoints is None:
                return ""
            if kind == 4:
                savepoints.append(name)
                return ""
            if name in savepoints:
                if kind == 5:  # RELEASE also releases the savepoints made after it
                    del savepoints[savepoints.index(name) :]
                else:
                    del savepoints[savepoints.index(name) + 1 :]
                return ""
            return f"{_TXN_KINDS[kind]} {name} (no such savepoint earlier in the file)"
        return _TXN_KINDS.get(kind, "transaction control")
    if setting := transaction_setting(stmt):
        return f"SET {setting}"
    name = type(stmt).__name__
    if name in _OUTSIDE_TXN:
        return _OUTSIDE_TXN[name]
    if name == "IndexStmt" and getattr(stmt, "concurrent", False):
        return "CREATE INDEX CONCURRENTLY"
    if name == "ReindexStmt" and concurrently(getattr(stmt, "params", None)):
        return "REINDEX CONCURRENTLY"
    return ""


# dblink (and dblink_exec, dblink_connect…) runs SQL on a session of its own, which commits by
# itself: outside the seed's transaction, whatever the seed does after. Looked for in the whole
# statement text, the bodies of DO blocks and functions too.
_DBLINK = re.compile(r"\bdblink(?:_\w+)?\s*\(", re.I)


def _dblink(text: str) -> str:
    return "dblink (a session of its own, which commits by itself)" if _DBLINK.search(text) else ""


def read_sql_seed(path: Path) -> list[SqlStatement]:
    """The statements of a `.sql` seed, split by PostgreSQL's own parser (pglast): a file that
    is not UTF-8, does not parse, or holds transaction control (the seed is one transaction:
    COMMIT, BEGIN, ROLLBACK, a RELEASE or ROLLBACK TO of no savepoint, SET
    TRANSACTION…) is a ConfigError naming the file and
    the line, raised before anything is migrated."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"seed file {path.name}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start})"
        ) from None
    text = text.removeprefix("\ufeff")
    try:
        raw = parse_sql(text)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        message = str(exc.args[0]) if exc.args else str(exc)
        raise ConfigError(
            f"seed file {path.name}: line {_line(text, where)}: not valid SQL: {message}"
        ) from None
    out: list[SqlStatement] = []
    savepoints: list[str] = []
    for rs in raw:
        start = int(rs.stmt_location or 0)
        length = int(rs.stmt_len or 0)
        body = text[start : start + length] if length else text[start:]
        body = body.strip().rstrip(";").strip()
        line = _line(text, start + (len(text[start:]) - len(text[start:].lstrip())))
        what = _forbidden(rs.stmt, savepoints) or _dblink(body)
        if what:
            raise ConfigError(
                f"seed file {path.name}: line {line}: {what} is not allowed: the seed runs in "
                "one transaction, which the deployer commits or rolls back"
            )
        if body:
            out.append(SqlStatement(line, body))
    return out


def check_seed_file(path: Path) -> str:
    """The seed's kind (`python` or `sql`); a missing, unreadable or unsupported file is a
    ConfigError, raised before anything is migrated."""
    if not path.is_file():
        raise ConfigError(f"seed file {str(path)!r} does not exist (seed-path)")
    if path.suffix == ".py":
        _load_module(path)  # imports now, before anything is migrated: errors are exit 2
        return "python"
    if path.suffix == ".sql":
        try:
            read_sql_seed(path)
        except OSError as exc:
            raise ConfigError(f"cannot read seed file {path.name}: {exc.strerror}") from None
        return "sql"
    raise ConfigError(
        f"seed file {path.name!r} must be a .py file with seed(connection) or a .sql file"
    )


_LOADED: dict[Path, ModuleType] = {}


def _load_module(path: Path) -> ModuleType:
    """Import the seed file once per run (the check before migrating, then the seed step)."""
    if path in _LOADED:
        return _LOADED[path]
    name = f"_db_deploy_seed_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import seed file {path.name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
        raise ConfigError(
            f"cannot import seed file {path.name!r}: {describe_exception(exc)}"
        ) from None
    finally:
        sys.path.remove(str(path.parent))
    if not callable(getattr(module, "seed", None)):
        raise ConfigError(f"seed file {path.name!r} defines no seed(connection) function")
    _LOADED[path] = module
    return module


# ------------------------------------------------------------------ the one transaction, kept

# A deferred constraint trigger on a temporary table: it fires when the transaction commits and
# fails unless the deployer said the seed is done, so a COMMIT sent by the seed in any way (SQL,
# the driver, a procedure) fails and rolls the seed's work back. The table is dropped when the
# transaction ends; the function lives in this session's pg_temp.
_GUARD = [
    "CREATE TEMPORARY TABLE IF NOT EXISTS db_deploy_seed_guard (x int) ON COMMIT DROP",
    """CREATE OR REPLACE FUNCTION pg_temp.db_deploy_seed_guard() RETURNS trigger
    LANGUAGE plpgsql AS $f$
    BEGIN
        IF coalesce(current_setting('db_deploy.seed_done', true), '') <> 'yes' THEN
            RAISE EXCEPTION 'the seed tried to commit the deployer''s transaction: a seed runs in one transaction, which the deployer commits'
                USING ERRCODE = '2D000';
        END IF;
        RETURN NULL;
    END
    $f$""",
    """CREATE CONSTRAINT TRIGGER db_deploy_seed_guard AFTER INSERT ON pg_temp.db_deploy_seed_guard
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.db_deploy_seed_guard()""",
    "INSERT INTO pg_temp.db_deploy_seed_guard VALUES (1)",
]
_TXID = "SELECT txid_current()"
_DONE = "SELECT set_config('db_deploy.seed_done', 'yes', true)"
_SQL_HINT = re.compile(
    r"\b(commit|rollback|begin|start|end|abort|savepoint|release|prepare|set|vacuum|dblink\w*)\b",
    re.I,
)


class SeedTransactionError(Exception):
    """The seed tried to end, or ended, the deployer's transaction."""


def _where_in_seed(path: Path) -> str:
    """` (seed.py line N)`: the innermost frame of the seed file on the stack, if any."""
    for frame in reversed(traceback.extract_stack()):
        if Path(frame.filename) == path:
            return f" ({path.name} line {frame.lineno})"
    return ""


@contextmanager
def _kept_in_one_transaction(connection: sa.Connection, path: Path) -> Iterator[None]:
    """While a seed.py runs on `connection`: SQLAlchemy's commit()/rollback() and any
    transaction-control statement it executes raise, as do the driver connection's commit() and
    rollback(), before anything reaches the server."""

    def no_commit(conn: sa.Connection) -> None:
        raise SeedTransactionError(
            f"connection.commit() is not allowed in a seed{_where_in_seed(path)}: the seed "
            "runs in one transaction, which the deployer commits"
        )

    def no_rollback(conn: sa.Connection) -> None:
        raise SeedTransactionError(
            f"connection.rollback() is not allowed in a seed{_where_in_seed(path)}: raise an "
            "exception instead, and the deployer rolls the seed back"
        )

    def check_sql(
        conn: object,
        cursor: object,
        statement: object,
        parameters: object,
        context: object,
        executemany: object,
    ) -> None:
        if not isinstance(statement, str) or not _SQL_HINT.search(statement):
            return
        from pglast import parse_sql
        from pglast.parser import ParseError

        try:
            stmts = parse_sql(statement)
        except ParseError:
            return  # the server says what is wrong with it
        for rs in stmts:
            what = _forbidden(rs.stmt) or _dblink(statement)
            if what:
                raise SeedTransactionError(
                    f"{what} is not allowed in a seed{_where_in_seed(path)}: the seed runs in "
                    "one transaction, which the deployer commits or rolls back"
                )

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("commit", no_commit),
        ("rollback", no_rollback),
        ("before_cursor_execute", check_sql),
    ]
    for name, fn in listeners:
        sa.event.listen(connection, name, fn)
    raw = connection.connection.driver_connection
    patched: list[str] = []
    for name, fn in (("commit", no_commit), ("rollback", no_rollback)):
        try:
            setattr(raw, name, lambda *a, _fn=fn, **k: _fn(connection))
            patched.append(name)
        except (AttributeError, TypeError):
            pass  # the server-side guard still refuses a commit
    try:
        yield
    finally:
        for name in patched:
            with suppress(AttributeError):
                delattr(raw, name)
        for name, fn in listeners:
            sa.event.remove(connection, name, fn)


# ------------------------------------------------------------ no session of the seed's own

_OURS = "db-deploy-"  # the deployer's own threads' names: their sessions are let through
_READ_ONLY = "-c default_transaction_read_only=on"


class _Guard:
    """While a seed.py runs: the seed file (for messages) and the server's port."""

    path: Path | None = None
    port: int = 5432
    audit_installed = False


def _refuse_session(how: str) -> None:
    path = _Guard.path
    if path is None or threading.current_thread().name.startswith(_OURS):
        return
    raise SeedTransactionError(
        f"{how} is not allowed in a seed{_where_in_seed(path)}: a session of its own would "
        "commit outside the deployer's transaction; the seed runs on the connection it is given"
    )


def _audit(event: str, args: tuple[object, ...]) -> None:
    """A pure-Python driver (pg8000, asyncpg) connects with Python sockets: a socket to the
    server's port or to a PostgreSQL unix socket is refused while a seed.py runs."""
    if event != "socket.connect" or _Guard.path is None or len(args) < 2:
        return
    address = args[1]
    if (isinstance(address, str | bytes) and b".s.PGSQL." in os.fsencode(address)) or (
        isinstance(address, tuple) and len(address) >= 2 and address[1] == _Guard.port
    ):
        _refuse_session("a socket to the database server")


def _server_port(connection: sa.Connection) -> int:
    with suppress(Exception):
        return int(connection.connection.driver_connection.info.port)  # type: ignore[union-attr]
    return int(connection.engine.url.port or 5432)


@contextmanager
def _no_session_of_its_own(connection: sa.Connection, path: Path) -> Iterator[None]:
    """While a seed.py runs it cannot open a database session of its own: that session's
    commits would be outside the deployer's transaction, and a failed seed could not truthfully
    be reported rolled back. Refused before anything is sent:
    - SQLAlchemy, any engine and driver (the one behind `connection.engine` too): a new
      connection (`do_connect`) or one taken from a pool (`checkout`);
    - psycopg 3 (sync and async) and psycopg2, connecting directly;
    - a pure-Python driver's socket to the server (an audit hook on `socket.connect`).
    And a program the seed starts (psql) or a libpq binding not listed connects with PGOPTIONS
    making its transactions read-only. The deployer's own threads (named db-deploy-…) are let
    through."""

    def sa_connect(*_a: object, **_k: object) -> None:
        _refuse_session("a new SQLAlchemy connection (an engine of its own, engine.connect())")

    def sa_checkout(*_a: object, **_k: object) -> None:
        _refuse_session("a connection from an engine's pool")

    patched: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, how: str) -> None:
        """`owner.name` (a class's method or a module's function) refused while the seed runs,
        restored after."""
        original = vars(owner).get(name)
        if original is None:
            return
        func = getattr(original, "__func__", original)

        def refused(*a: object, **k: object) -> object:
            _refuse_session(how)
            return func(*a, **k)

        setattr(owner, name, classmethod(refused) if isinstance(original, classmethod) else refused)
        patched.append((owner, name, original))

    with suppress(ImportError):
        from psycopg._connection_base import BaseConnection

        patch(BaseConnection, "_connect_gen", "psycopg.connect()")
    with suppress(ImportError):
        import psycopg2  # its connect() calls the module's _connect, looked up at each call

        patch(psycopg2, "_connect", "psycopg2.connect()")
    _Guard.path, _Guard.port = path, _server_port(connection)
    if not _Guard.audit_installed:
        sys.addaudithook(_audit)
        _Guard.audit_installed = True
    sa.event.listen(sa.engine.Engine, "do_connect", sa_connect)
    sa.event.listen(sa.pool.Pool, "checkout", sa_checkout)
    options = os.environ.get("PGOPTIONS")
    os.environ["PGOPTIONS"] = f"{options} {_READ_ONLY}" if options else _READ_ONLY
    try:
        yield
    finally:
        if options is None:
            os.environ.pop("PGOPTIONS", None)
        else:
            os.environ["PGOPTIONS"] = options
        sa.event.remove(sa.pool.Pool, "checkout", sa_checkout)
        sa.event.remove(sa.engine.Engine, "do_connect", sa_connect)
        _Guard.path = None
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def seed(connection: sa.Connection, path: Path) -> SeedResult:
    """Run the seed in one transaction; on failure it is rolled back and `error` is set.

    The transaction is the deployer's alone: transaction control in a .sql seed is refused when
    the file is read (before migrating); in a seed.py, `commit()`/`rollback()` and such
    statements raise; whatever gets past that (the raw driver), a server-side guard makes any
    commit but the deployer's fail. Should the seed still end the transaction (a ROLLBACK of its
    own through the raw driver), the transaction id changes, and the result says so
    (`rolled_back` false: what the seed wrote afterwards may have been committed)."""
    kind = check_seed_file(path)
    module = _load_module(path) if kind == "python" else None
    statements = read_sql_seed(path) if kind == "sql" else []
    result = SeedResult(path=str(path), kind=kind)
    started = time.perf_counter()
    if connection.in_transaction():
        connection.commit()
    txn = connection.begin()
    try:
        for sql in _GUARD:
            connection.exec_driver_sql(sql)
        txid = connection.exec_driver_sql(_TXID).scalar()
        before = _stats(connection)
        if module is not None:
            with (
                _kept_in_one_transaction(connection, path),
                _no_session_of_its_own(connection, path),
            ):
                try:
                    module.seed(connection)
                except SystemExit as exc:
                    raise RuntimeError(f"seed() called sys.exit({exc.code!r})") from None
        else:
            raw = connection.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                for st in statements:
                    try:
                        cur.execute(st.text)
                    except Exception as exc:
                        raise _AtLine(f"{path.name} line {st.line}", exc) from exc
        if connection.exec_driver_sql(_TXID).scalar() != txid:
            result.rolled_back = False
            raise SeedTransactionError(
                "the seed ended the deployer's transaction itself (a COMMIT or ROLLBACK through "
                "the raw driver): part of what it wrote may have been committed"
            )
        after = _stats(connection)
        for table, counts in sorted(after.items()):
            if table.startswith("pg_temp"):
                continue
            base = before.get(table, (0, 0, 0))
            ins, upd, dele = (a - b for a, b in zip(counts, base, strict=True))
            if ins or upd or dele:
                result.tables.append(TableDelta(table, ins, upd, dele))
        connection.exec_driver_sql(_DONE)
        txn.commit()
    except Exception as exc:  # noqa: BLE001 - user code: report it
        with suppress(Exception):
            txn.rollback()
        with suppress(Exception):
            connection.rollback()
        result.tables = []
        result.error = _describe(exc)
    result.seconds = round(time.perf_counter() - started, 4)
    return result


class _AtLine(Exception):
    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(where)
        self.where = where
        self.exc = exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _AtLine):
        return f"{exc.where}: {_describe(exc.exc)}"
    if isinstance(exc, sa.exc.DBAPIError):
        return server_message(exc)
    if isinstance(exc, SeedTransactionError):
        return str(exc)
    if type(exc).__module__.startswith("psycopg"):
        return " ".join(str(exc).split()) or type(exc).__name__
    return describe_exception(exc)
