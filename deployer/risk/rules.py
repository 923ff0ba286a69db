"""Squawk-class rules on statements parsed by PostgreSQL's own parser (pglast, libpg_query).

A `RuleChecker` reads one revision's statements in order (it remembers the tables the revision
created, the CHECK constraints it validated and its own `SET lock_timeout`) and returns `Hit`s:
the rule id, the table, the lock the statement takes, why it hurts and the safe way, with SQL.
The ids are stable (the interface spec lists them): more may be added, none renamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import (
    AlterTableType,
    ConstrType,
    NullTestType,
    ObjectType,
    TransactionStmtKind,
)
from pglast.parser import ParseError

ACCESS_EXCLUSIVE = "AccessExclusiveLock"
EXCLUSIVE = "ExclusiveLock"
SHARE_ROW_EXCLUSIVE = "ShareRowExclusiveLock"
SHARE = "ShareLock"
SHARE_UPDATE_EXCLUSIVE = "ShareUpdateExclusiveLock"

# What a statement does to the table while it holds its lock, when nobody measured it.
REWRITE, SCAN, BUILD, INSTANT = "rewrite", "scan", "build", "instant"


@dataclass(frozen=True)
class Rule:
    id: str
    lock: str  # the lock the statement takes on the table
    effect: str  # REWRITE / SCAN / BUILD / INSTANT (while the lock is held)
    why: str
    safe: str
    compat: bool = False  # breaks the application version still running (expand/contract)


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "index-not-concurrent",
            SHARE,
            BUILD,
            "CREATE INDEX without CONCURRENTLY holds a SHARE lock for the whole build: every "
            "INSERT, UPDATE and DELETE on the table waits until the index is built.",
            "CREATE INDEX CONCURRENTLY (in Alembic: op.create_index(..., "
            "postgresql_concurrently=True) inside `with op.get_context().autocommit_block():`)",
        ),
        Rule(
            "drop-index-not-concurrent",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table: it "
            "waits for every running query on it, and every query queues behind it.",
            "DROP INDEX CONCURRENTLY IF EXISTS name (outside a transaction: Alembic's "
            "autocommit_block)",
        ),
        Rule(
            "reindex-not-concurrent",
            SHARE,
            BUILD,
            "REINDEX without CONCURRENTLY blocks writes to the table and reads that use the "
            "index for the whole rebuild.",
            "REINDEX INDEX CONCURRENTLY name (PostgreSQL 12+, outside a transaction)",
        ),
        Rule(
            "fk-not-valid",
            SHARE_ROW_EXCLUSIVE,
            SCAN,
            "Adding a FOREIGN KEY checks every existing row while holding a SHARE ROW EXCLUSIVE "
            "lock on both tables: writes to both wait for the whole scan.",
            "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES p (id) NOT VALID; then, in "
            "a later transaction, ALTER TABLE t VALIDATE CONSTRAINT fk (SHARE UPDATE EXCLUSIVE: "
            "reads and writes go on)",
        ),
        Rule(
            "check-not-valid",
            ACCESS_EXCLUSIVE,
            SCAN,
            "Adding a CHECK constraint scans every existing row under an ACCESS EXCLUSIVE lock: "
            "reads and writes wait for the whole scan.",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (...) NOT VALID; then, in a later transaction, "
            "ALTER TABLE t VALIDATE CONSTRAINT c",
        ),
        Rule(
            "set-not-null",
            ACCESS_EXCLUSIVE,
            SCAN,
            "SET NOT NULL scans every row under an ACCESS EXCLUSIVE lock unless a validated "
            "CHECK (col IS NOT NULL) constraint already proves it.",
            "ALTER TABLE t ADD CONSTRAINT t_c_not_null CHECK (c IS NOT NULL) NOT VALID; ALTER "
            "TABLE t VALIDATE CONSTRAINT t_c_not_null; ALTER TABLE t ALTER c SET NOT NULL (no "
            "scan, PostgreSQL 12+); ALTER TABLE t DROP CONSTRAINT t_c_not_null",
        ),
        Rule(
            "column-type-rewrite",
            ACCESS_EXCLUSIVE,
            REWRITE,
            "Changing a column's type rewrites the table and its indexes under an ACCESS "
            "EXCLUSIVE lock (unless the types are binary coercible, e.g. varchar(n) to text).",
            "Add a new column of the new type, backfill it in batches, switch the application, "
            "then drop the old column (expand/contract)",
        ),
        Rule(
            "volatile-default",
            ACCESS_EXCLUSIVE,
            REWRITE,
            "A column added with a volatile default (random(), clock_timestamp(), "
            "gen_random_uuid(), serial or identity) rewrites the whole table under an ACCESS "
            "EXCLUSIVE lock; constant and stable defaults do not (PostgreSQL 11+).",
            "ALTER TABLE t ADD COLUMN c type (no default); ALTER TABLE t ALTER c SET DEFAULT "
            "expr (new rows only); backfill existing rows in batches",
        ),
        Rule(
            "unique-without-index",
            ACCESS_EXCLUSIVE,
            BUILD,
            "ADD CONSTRAINT UNIQUE / PRIMARY KEY builds its index while holding an ACCESS "
            "EXCLUSIVE lock: reads and writes wait for the whole build.",
            "CREATE UNIQUE INDEX CONCURRENTLY t_c_key ON t (c); ALTER TABLE t ADD CONSTRAINT "
            "t_c_key UNIQUE USING INDEX t_c_key",
        ),
        Rule(
            "drop-column",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "The application version still running may read or write the column: its queries "
            "fail from the moment the column is gone.",
            "Expand/contract: deploy an application that no longer uses the column first, then "
            "drop it in a later release",
            compat=True,
        ),
        Rule(
            "drop-table",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "The application version still running may use the table, and its rows are gone for "
            "good.",
            "Expand/contract: stop using the table in a release first (and back it up), then "
            "drop it in a later one",
            compat=True,
        ),
        Rule(
            "rename-column",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "The application version still running uses the old name: its queries fail from the "
            "moment of the rename.",
            "Expand/contract: add the new column, write both, backfill, switch reads, then drop "
            "the old one (or a view keeping the old name)",
            compat=True,
        ),
        Rule(
            "rename-table",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "The application version still running uses the old name: its queries fail from the "
            "moment of the rename.",
            "Expand/contract: rename, then CREATE VIEW old_name AS SELECT * FROM new_name until "
            "no deployed version uses the old name",
            compat=True,
        ),
        Rule(
            "vacuum-full",
            ACCESS_EXCLUSIVE,
            REWRITE,
            "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes "
            "wait for the whole rewrite.",
            "Plain VACUUM (no lock on reads or writes), or pg_repack / pg_squeeze to compact "
            "online",
        ),
        Rule(
            "cluster",
            ACCESS_EXCLUSIVE,
            REWRITE,
            "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes wait "
            "for the whole rewrite.",
            "pg_repack --order-by to reorder online, or leave the physical order alone",
        ),
        Rule(
            "concurrently-in-transaction",
            SHARE_UPDATE_EXCLUSIVE,
            INSTANT,
            "CONCURRENTLY cannot run inside a transaction block: the revision fails "
            '("cannot run inside a transaction block").',
            "Run it in Alembic's autocommit block: `with op.get_context().autocommit_block(): "
            "op.execute('CREATE INDEX CONCURRENTLY ...')`",
        ),
        Rule(
            "not-null-without-default",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "ADD COLUMN ... NOT NULL without a DEFAULT fails on a table that has rows (every "
            "existing row would be NULL): the revision fails, and the deploy with it.",
            "ALTER TABLE t ADD COLUMN c type DEFAULT value NOT NULL (a constant default: no "
            "rewrite), or add it nullable, backfill, then SET NOT NULL the safe way",
        ),
        Rule(
            "missing-lock-timeout",
            ACCESS_EXCLUSIVE,
            INSTANT,
            "The revision runs a statement that takes a strong lock with no lock_timeout (it "
            "set lock_timeout to 0, or the deploy has none): if a long transaction holds the "
            "table, the statement waits for it and every query on the table queues behind it.",
            "SET LOCAL lock_timeout = '5s' at the top of the revision (or keep the deploy's "
            "lock-timeout input), and retry on timeout",
        ),
    )
}

# Found by the rehearsal and the live database, not by the parser (spec: Risk review).
MEASURED_RULES: dict[str, str] = {
    "table-rewrite": "The statement rewrote the table (its relfilenode changed) under {lock}: "
    "reads and writes it blocks wait for the whole rewrite.",
    "scan-under-lock": "The statement scanned the table while holding {lock}.",
    "lock-contention": "Sessions hold or wait for locks on the table right now: the statement "
    "queues behind them, and every query on the table queues behind the statement.",
}
RULE_IDS = frozenset(RULES) | frozenset(MEASURED_RULES)

# Built-in functions whose volatility makes an ADD COLUMN ... DEFAULT rewrite the table. A user
# function is not known from the text: the rehearsal measures the rewrite instead.
VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "uuidv4",
        "uuidv7",
        "nextval",
        "txid_current",
        "setseed",
        "random_normal",
    }
)
SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})
STRONG_LOCKS = frozenset({ACCESS_EXCLUSIVE, EXCLUSIVE, SHARE_ROW_EXCLUSIVE, SHARE})


@dataclass
class Hit:
    rule: str
    table: str
    lock: str
    statement: str  # the statement's own text (not redacted here)
    index: int = 0  # the statement's position in the revision (the caller's numbering)

    @property
    def info(self) -> Rule:
        return RULES[self.rule]


@dataclass
class Parsed:
    sql: str
    node: ast.Node | None  # None: not parseable (the reason in `error`)
    error: str = ""


def placeholders_to_params(sql: str) -> str:
    """psycopg's `%(name)s` / `%s` placeholders as `$n` (the parser knows those), `%%` as `%`."""
    n = 0

    def number(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    out = re.sub(r"%\(\w+\)s|%s", number, sql)
    return out.replace("%%", "%")


def split(sql: str) -> list[Parsed]:
    """`sql` (one or more statements) parsed: one entry per statement; an unparseable text is
    one entry with the parser's error."""
    text = placeholders_to_params(sql)
    try:
        raws = parse_sql(text)
    except ParseError as exc:
        return [Parsed(sql=sql, node=None, error=str(exc))]
    out = []
    for raw in raws:
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(text) - start
        out.append(Parsed(sql=text[start : start + length].strip(), node=raw.stmt))
    return out


def rel_name(rv: ast.RangeVar | None) -> str:
    if rv is None:
        return ""
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else str(rv.relname)


def _names(node: Any) -> list[str]:
    """The strings of a list of String nodes (a qualified name)."""
    return [str(getattr(n, "sval", "")) for n in (node or ())]


def _funcs(node: object) -> Iterator[str]:
    """The bare names of every function called inside an expression tree."""
    if isinstance(node, ast.FuncCall):
        names = _names(node.funcname)
        if names:
            yield names[-1].lower()
    if isinstance(node, ast.Node):
        for name in node:  # the node's attribute names
            yield from _funcs(getattr(node, name))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _funcs(item)


def _not_null_column(expr: object) -> str:
    """`col IS NOT NULL` → col; anything else → ""."""
    if (
        isinstance(expr, ast.NullTest) and expr.nulltesttype == NullTestType.IS_NOT_NULL
    ):  # IS_NOT_NULL
        arg = expr.arg
        if isinstance(arg, ast.ColumnRef):
            names = _names(arg.fields)
            return names[-1] if names else ""
    return ""


def _has_option(options: Any, name: str) -> bool:
    return any(getattr(o, "defname", "") == name for o in (options or ()))


def _statement_rules(node: ast.Node, txn: bool) -> list[tuple[str, str]]:
    """(rule, table) for the statements a rule judges by themselves (not ALTER TABLE): index
    builds and drops, table drops, REINDEX, VACUUM FULL, CLUSTER, renames. `txn`: the
    statement ran inside a transaction block."""
    out: list[tuple[str, str]] = []

    def concurrently(rule: str, table: str, concurrent: bool) -> None:
        if not concurrent:
            out.append((rule, table))
        elif txn:
            out.append(("concurrently-in-transaction", table))

    if isinstance(node, ast.IndexStmt):
        concurrently("index-not-concurrent", rel_name(node.relation), bool(node.concurrent))
    elif isinstance(node, ast.DropStmt):
        removed = node.removeType
        if removed == ObjectType.OBJECT_INDEX:
            for obj in node.objects or ():
                name = ".".join(_names(obj))
                concurrently("drop-index-not-concurrent", name, bool(node.concurrent))
        elif removed == ObjectType.OBJECT_TABLE:
            out += [("drop-table", ".".join(_names(obj))) for obj in node.objects or ()]
    elif isinstance(node, ast.ReindexStmt):
        target = rel_name(node.relation) if node.relation else str(node.name or "")
        concurrently("reindex-not-concurrent", target, _has_option(node.params, "concurrently"))
    elif isinstance(node, ast.VacuumStmt):
        if node.is_vacuumcmd and _has_option(node.options, "full"):
            out += [("vacuum-full", rel_name(rel.relation)) for rel in node.rels or ()]
            if not node.rels:
                out.append(("vacuum-full", ""))
    elif isinstance(node, ast.ClusterStmt):
        out.append(("cluster", rel_name(node.relation)))
    elif isinstance(node, ast.RenameStmt):
        if node.renameType == ObjectType.OBJECT_COLUMN:
            out.append(("rename-column", rel_name(node.relation)))
        elif node.renameType == ObjectType.OBJECT_TABLE:
            out.append(("rename-table", rel_name(node.relation)))
    return out


# A new column's constraints that give it its values (the others are checked as constraints).
_VALUE_KINDS = (ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)


def _type_name(col: ast.ColumnDef) -> str:
    return _names(col.typeName.names)[-1].lower() if col.typeName else ""


def _not_null_without_default(col: ast.ColumnDef) -> bool:
    """A NOT NULL column added with nothing to fill the existing rows."""
    kinds = {con.contype for con in col.constraints or ()}
    return (
        ConstrType.CONSTR_NOTNULL in kinds
        and not kinds & set(_VALUE_KINDS)
        and _type_name(col) not in SERIAL_TYPES
    )


def _volatile_column(col: ast.ColumnDef) -> bool:
    """A new column whose value is computed for every existing row (a serial, an identity, a
    stored generated column, a default calling a volatile function): a table rewrite."""
    volatile = _type_name(col) in SERIAL_TYPES
    for con in col.constraints or ():
        if con.contype == ConstrType.CONSTR_DEFAULT:
            volatile |= bool(VOLATILE_FUNCTIONS & set(_funcs(con.raw_expr)))
        elif con.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
            volatile = True  # a stored generated column is computed for every row
    return volatile


@dataclass
class RuleChecker:
    """One revision's statements, in order."""

    session_lock_timeout: bool = True  # the deploy sets a lock_timeout on its session
    created: set[str] = field(default_factory=set)  # tables created by this revision
    not_null_checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → table, col
    proven_not_null: set[tuple[str, str]] = field(default_factory=set)
    lock_timeout_off: bool = False
    lock_timeout_set: bool = False
    flagged_timeout: bool = False
    in_transaction: bool = True  # for text that carries its own BEGIN/COMMIT

    def _new(self, table: str) -> bool:
        bare = table.rsplit(".", 1)[-1]
        return table in self.created or bare in self.created

    def check(self, sql: str, *, in_transaction: bool | None = None, index: int = 0) -> list[Hit]:
        """The hits of `sql` (one or more statements). `in_transaction`: whether it ran inside a
        transaction block (measured); None: follow BEGIN/COMMIT in the text itself."""
        hits: list[Hit] = []
        for parsed in split(sql):
            if parsed.node is None:
                continue
            txn = self.in_transaction if in_transaction is None else in_transaction
            hits += [
                Hit(h.rule, h.table, h.lock, parsed.sql, index)
                for h in self._statement(parsed.node, txn)
            ]
        return hits

    def _timeout_hit(self, table: str, lock: str) -> list[Hit]:
        off = self.lock_timeout_off or not (self.session_lock_timeout or self.lock_timeout_set)
        if not off or self.flagged_timeout or lock not in STRONG_LOCKS or self._new(table):
            return []
        self.flagged_timeout = True
        return [Hit("missing-lock-timeout", table, lock, "")]

    def _statement(self, node: ast.Node, txn: bool) -> list[Hit]:
        out: list[Hit] = []

        def hit(rule: str, table: str, lock: str | None = None) -> None:
            mode = lock or RULES[rule].lock
            if not self._new(table) or rule == "concurrently-in-transaction":
                out.append(Hit(rule, table, mode, ""))
            out.extend(self._timeout_hit(table, mode))

        if self._track(node):
            return out
        if isinstance(node, ast.AlterTableStmt) and node.objtype == ObjectType.OBJECT_TABLE:
            table = rel_name(node.relation)
            out.extend(self._timeout_hit(table, ACCESS_EXCLUSIVE))
            for cmd in node.cmds or ():
                self._alter(cmd, table, hit)
        else:
            for rule, target in _statement_rules(node, txn):
                hit(rule, target)
        return out

    def _track(self, node: ast.Node) -> bool:
        """Follow what later statements depend on (the transaction block, the lock_timeout,
        the tables this revision created); True when `node` was one of those."""
        if isinstance(node, ast.TransactionStmt):
            kind = node.kind
            if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
                self.in_transaction = True
            elif kind in (
                TransactionStmtKind.TRANS_STMT_COMMIT,
                TransactionStmtKind.TRANS_STMT_ROLLBACK,
            ):
                self.in_transaction = False
        elif isinstance(node, ast.VariableSetStmt) and (node.name or "").lower() == "lock_timeout":
            value = ""
            if node.args:
                val = getattr(node.args[0], "val", None)
                value = str(getattr(val, "sval", None) or getattr(val, "ival", ""))
            if node.args:
                zero = re.fullmatch(r"\s*0+\s*(ms|s|min|h|d)?\s*", value) is not None
                self.lock_timeout_off, self.lock_timeout_set = zero, not zero
            else:  # SET lock_timeout TO DEFAULT / RESET: the session's own (the deploy's)
                self.lock_timeout_off = self.lock_timeout_set = False
        elif isinstance(node, ast.CreateStmt | ast.CreateTableAsStmt):
            rv = (
                node.relation
                if isinstance(node, ast.CreateStmt)
                else getattr(node.into, "rel", None)
            )
            name = rel_name(rv)
            self.created.update({name, name.rsplit(".", 1)[-1]})
        else:
            return False
        return True

    def _alter(self, cmd: ast.AlterTableCmd, table: str, hit: object) -> None:
        assert callable(hit)
        sub = cmd.subtype
        if sub == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            self._constraint(cmd.def_, table, hit)
        elif sub == AlterTableType.AT_ValidateConstraint:
            proven = self.not_null_checks.get(str(cmd.name))
            if proven:
                self.proven_not_null.add(proven)
        elif sub == AlterTableType.AT_SetNotNull:
            if (table, str(cmd.name)) not in self.proven_not_null:
                hit("set-not-null", table)
        elif sub == AlterTableType.AT_AlterColumnType:
            hit("column-type-rewrite", table)
        elif sub == AlterTableType.AT_DropColumn:
            hit("drop-column", table)
        elif sub == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            col = cmd.def_
            if _not_null_without_default(col):
                hit("not-null-without-default", table)
            for con in col.constraints or ():
                if con.contype not in _VALUE_KINDS:
                    self._constraint(con, table, hit)
            if _volatile_column(col):
                hit("volatile-default", table)

    def _constraint(self, con: ast.Constraint, table: str, hit: object) -> None:
        assert callable(hit)
        kind = con.contype
        if kind == ConstrType.CONSTR_FOREIGN and not con.skip_validation:
            hit("fk-not-valid", table)
        elif kind == ConstrType.CONSTR_CHECK:
            column = _not_null_column(con.raw_expr)
            if con.skip_validation:
                if column and con.conname:
                    self.not_null_checks[str(con.conname)] = (table, column)
            else:
                if column:
                    self.proven_not_null.add((table, column))
                hit("check-not-valid", table)
        elif (
            kind
            in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_EXCLUSION)
            and not con.indexname
        ):
            hit("unique-without-index", table)


def check_revision(
    statements: list[tuple[str, bool | None]], *, session_lock_timeout: bool = True
) -> list[Hit]:
    """The hits of one revision's statements: (sql, in_transaction or None to follow the
    text's BEGIN/COMMIT), in order. `Hit.index` is the statement's position (1-based)."""
    checker = RuleChecker(session_lock_timeout=session_lock_timeout)
    out: list[Hit] = []
    for i, (sql, txn) in enumerate(statements, 1):
        out += checker.check(sql, in_transaction=txn, index=i)
    return out
