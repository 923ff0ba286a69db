"""Smoke: prove every table readable by the deploy role, count rows without reading them all,
check required extensions and expectations, and review vector indexes.

Cost does not grow with the data: one catalog query lists tables with their size estimates,
each table is read through `LIMIT` — `LIMIT 1` where the catalog already estimates more than
`EXACT_LIMIT` rows (the estimate is reported, marked as such), exact counts of at most
`EXACT_LIMIT + 1` rows elsewhere — and the per-table reads go out as one UNION ALL per batch.

What a read costs the server is opening the table and its indexes in a session that has not
seen them yet (~0.15 ms a table), so a schema of hundreds of tables is split between the
sessions the caller already holds (`helpers`: a deploy's migration session), read at once.
A table that someone else holds locked fails after `lock_timeout` instead of hanging the run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from deployer.db import pg_milliseconds, server_message
from deployer.results import (
    ExpectationCheck,
    ExtensionCheck,
    SmokeResult,
    TableCheck,
    VectorIndex,
)
from deployer.sql import qualified
from deployer.types import Expectation, ExtensionRequirement, version_tuple

EXACT_LIMIT = 10_000
BATCH = 200  # tables per UNION ALL query
PARALLEL_MIN = 100  # tables from which the helper sessions share the reads
ADVICE_MIN_ROWS = 10_000  # below this an ivfflat index's lists hardly matters
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

_TABLES = sa.text(
    """
    SELECT n.nspname, c.relname, c.oid::bigint,
           -- a partitioned parent has no statistics of its own: sum its leaves' (-1 = never
           -- analysed, unknown)
           CASE WHEN c.relkind = 'p' THEN coalesce((
               SELECT CASE WHEN bool_or(l.reltuples < 0) THEN -1 ELSE sum(l.reltuples) END
               FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid
               WHERE t.isleaf), 0)::bigint
           ELSE c.reltuples::bigint END,
           has_table_privilege(c.oid, 'SELECT')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'm', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND NOT c.relispartition
      AND n.nspname <> ALL (CAST(:exclude AS text[]))
    ORDER BY n.nspname, c.relname
    """
)

_EXTENSIONS = sa.text("SELECT extname, extversion FROM pg_extension")

_VECTOR_INDEXES = sa.text(
    """
    SELECT i.relname, n.nspname || '.' || t.relname, am.amname,
           pg_relation_size(i.oid), i.reloptions, t.reltuples::bigint
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_am am ON am.oid = i.relam
    WHERE am.amname IN ('ivfflat', 'hnsw')
    ORDER BY 2, 1
    """
)


def recommended_lists(rows: int) -> int:
    """pgvector's guidance: rows / 1000 up to 1M rows, sqrt(rows) above."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return int(math.sqrt(rows))


@dataclass(frozen=True)
class SmokeOptions:
    """What the smoke checks. `exclude_schemas`: the tool's own (the deploy history), which is
    not the application's; `exclude_tables`: the tool's own tables elsewhere (the version
    table), as (schema, name), a schema of None or "" matching any. `lock_timeout`: how long a
    read waits for a lock, on every session."""

    expectations: tuple[Expectation, ...] = ()
    extensions: tuple[ExtensionRequirement, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    exclude_tables: tuple[tuple[str | None, str], ...] = ()
    lock_timeout: float | None = None


def smoke(
    connection: sa.Connection,
    options: SmokeOptions | None = None,
    *,
    helpers: Sequence[sa.Connection] = (),
) -> SmokeResult:
    """`helpers`: other idle sessions on the same database that share the table reads (each in
    a thread of its own) when they act as the same role."""
    started = time.perf_counter()
    options = options or SmokeOptions()
    lock_timeout = options.lock_timeout
    result = SmokeResult()
    sessions = [connection, *helpers]
    try:
        role = _begin(connection, lock_timeout)
        everything = connection.execute(_TABLES, {"exclude": list(options.exclude_schemas)}).all()
        catalog = [r for r in everything if not _excluded(r[0], r[1], options.exclude_tables)]
        sessions = [connection]
        if len(catalog) >= PARALLEL_MIN:
            sessions += [h for h in helpers if _helps(h, lock_timeout, role)]
        result.tables = _check_tables(sessions, catalog, lock_timeout)
        installed: dict[str, str] = dict(connection.execute(_EXTENSIONS).all())
        result.extensions = [_check_extension(req, installed) for req in options.extensions]
        estimates = {f"{r[0]}.{r[1]}": r for r in everything}
        result.expectations = [
            _check_expectation(connection, x, estimates) for x in options.expectations
        ]
        try:
            result.vector_indexes = _vector_indexes(connection, result.tables)
        except sa.exc.DBAPIError:  # an index locked by someone else: its table failed above
            connection.rollback()
    finally:
        for session in (connection, *helpers):
            try:
                if session.in_transaction():
                    session.rollback()
            except sa.exc.DBAPIError:
                pass  # a session gone: the smoke's own outcome (or error) is what counts
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _excluded(schema: str, name: str, tables: Sequence[tuple[str | None, str]]) -> bool:
    return any(name == n and (not s or s == schema) for s, n in tables)


_BEGIN = sa.text(
    "SELECT current_user, set_config('lock_timeout', coalesce(:v, current_setting('lock_timeout')),"
    " true)"
)


def _helps(helper: sa.Connection, lock_timeout: float | None, role: str) -> bool:
    """Whether `helper` can share the reads: it answers, and as the same role (a session on
    which env.py ran SET ROLE proves nothing about the deploy role)."""
    try:
        return _begin(helper, lock_timeout) == role
    except sa.exc.DBAPIError:
        try:
            helper.rollback()
        except sa.exc.DBAPIError:
            pass
        return False


def _begin(connection: sa.Connection, lock_timeout: float | None) -> str:
    """Open the smoke's transaction on `connection` with `lock_timeout` (`SET LOCAL`); returns
    the role the reads run as."""
    v = f"{pg_milliseconds(lock_timeout)}ms" if lock_timeout is not None else None
    return str(connection.execute(_BEGIN, {"v": v}).scalar_one())


def _check_tables(
    sessions: Sequence[sa.Connection], catalog: Sequence[sa.Row], lock_timeout: float | None
) -> list[TableCheck]:
    checks = [TableCheck(schema=r[0], name=r[1]) for r in catalog]
    readable: list[tuple[int, TableCheck, sa.Row]] = []
    for check, row in zip(checks, catalog, strict=True):
        if row[4]:
            readable.append((len(readable), check, row))
        else:
            check.ok = False
            check.error = "permission denied (no SELECT privilege for the deploy role)"
    if not readable:
        return checks
    # Contiguous shares, one per session; the first session's in this thread, the others' in
    # threads of their own (psycopg waits for the server without holding the GIL).
    size = -(-len(readable) // len(sessions))
    shares = [readable[k : k + size] for k in range(0, len(readable), size)]
    counts: dict[int, int] = {}
    failures: list[BaseException] = []

    def read(session: sa.Connection, share: list[tuple[int, TableCheck, sa.Row]]) -> None:
        try:
            counts.update(_count(session, share, lock_timeout))
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            failures.append(exc)

    threads = [
        threading.Thread(target=read, args=(session, share), name="db-deploy-smoke")
        for session, share in zip(sessions[1:], shares[1:], strict=False)
    ]
    for t in threads:
        t.start()
    read(sessions[0], shares[0])
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    for i, check, row in readable:
        if i not in counts:
            continue
        count = counts[i]
        if count > 0 and (int(row[3]) > EXACT_LIMIT or count > EXACT_LIMIT):
            # (a count of 0 is exact whatever the statistics say: a table emptied since)
            check.estimated = True
            if int(row[3]) >= 0:
                check.rows = max(int(row[3]), count)
            else:  # never analysed: all we know is the bounded count
                check.rows = count
                check.lower_bound = True
        else:
            check.rows = int(count)
    return checks


def _count(
    connection: sa.Connection,
    share: list[tuple[int, TableCheck, sa.Row]],
    lock_timeout: float | None,
) -> dict[int, int]:
    """Bounded counts of `share`'s tables on `connection`: one round trip per batch, a UNION
    ALL. Should any table fail (a lock, a broken foreign table), the batch falls back to one
    savepoint per table, to name the culprit (its check gets the error)."""
    counts: dict[int, int] = {}
    for first in range(0, len(share), BATCH):
        batch = share[first : first + BATCH]
        sql = " UNION ALL ".join(
            f"SELECT {i}, count(*) FROM (SELECT 1 FROM {qualified(c.schema, c.name)} "
            f"LIMIT {1 if int(r[3]) > EXACT_LIMIT else EXACT_LIMIT + 1}) s{i}"
            for i, c, r in batch
        )
        try:
            counts.update(connection.execute(sa.text(sql)).all())
        except sa.exc.DBAPIError:
            connection.rollback()  # the catalog rows are already read
            _begin(connection, lock_timeout)  # the new transaction
            for i, check, _ in batch:
                try:
                    counts[i] = _bounded_count(
                        connection, check.schema, check.name, EXACT_LIMIT + 1
                    )
                except sa.exc.DBAPIError as exc:
                    check.ok = False
                    check.error = server_message(exc)
    return counts


def _bounded_count(connection: sa.Connection, schema: str, table: str, limit: int) -> int:
    """count(*) of at most `limit` rows, in a savepoint so a failure leaves the session usable."""
    connection.execute(sa.text("SAVEPOINT smoke_one"))
    try:
        n = connection.execute(
            sa.text(
                f"SELECT count(*) FROM (SELECT 1 FROM {qualified(schema, table)} LIMIT {int(limit)}) s"
            )
        ).scalar_one()
    except sa.exc.DBAPIError:
        connection.execute(sa.text("ROLLBACK TO SAVEPOINT smoke_one"))
        raise
    connection.execute(sa.text("RELEASE SAVEPOINT smoke_one"))
    return int(n)


def _check_extension(req: ExtensionRequirement, installed: dict[str, str]) -> ExtensionCheck:
    have = installed.get(req.name)
    ok = have is not None and (
        not req.min_version or version_tuple(have) >= version_tuple(req.min_version)
    )
    return ExtensionCheck(name=req.name, required=req.min_version, installed=have, ok=ok)


def _check_expectation(
    connection: sa.Connection, exp: Expectation, catalog: dict[str, sa.Row]
) -> ExpectationCheck:
    schema, _, table = exp.table.rpartition(".")
    key = f"{schema or 'public'}.{table}"
    check = ExpectationCheck(table=exp.table, minimum=exp.minimum)
    if key not in catalog:
        check.error = "no such table"
        return check
    try:
        check.counted = _bounded_count(connection, schema or "public", table, exp.minimum)
    except sa.exc.DBAPIError as exc:
        check.error = server_message(exc)
        return check
    check.ok = check.counted >= exp.minimum
    return check


def _vector_indexes(connection: sa.Connection, tables: list[TableCheck]) -> list[VectorIndex]:
    rows_by_table = {t.qualified: t.rows for t in tables if not t.lower_bound}
    out = []
    for name, table, method, size, options, reltuples in connection.execute(_VECTOR_INDEXES):
        opts = dict(o.split("=", 1) for o in (options or []))
        rows = rows_by_table.get(table)
        if rows is None:  # a large table never analysed: unknown
            rows = int(reltuples) if reltuples >= 0 else None
        elif rows > EXACT_LIMIT and reltuples > 0:
            rows = max(int(reltuples), rows)
        idx = VectorIndex(
            name=name,
            table=table,
            method=method,
            size_bytes=int(size),
            rows=rows,
        )
        if method == "ivfflat":
            idx.lists = int(opts.get("lists", 100))
            if rows is not None and rows >= ADVICE_MIN_ROWS:
                idx.recommended_lists = recommended_lists(rows)
                ratio = idx.lists / idx.recommended_lists
                if ratio > 2 or ratio < 0.5:
                    schema = table.split(".", 1)[0]
                    ident = qualified(schema, name)
                    idx.advice = (
                        f"ALTER INDEX {ident} SET (lists = {idx.recommended_lists}); "
                        f"REINDEX INDEX CONCURRENTLY {ident};"
                    )
        out.append(idx)
    return out
