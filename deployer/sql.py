"""SQL as PostgreSQL's own parser reads it (pglast, libpg_query): what the deployer needs to know
of a statement, for the seed, the rehearsal and the lock ladder alike. pglast is imported when a
statement is first read, not with this module."""

from __future__ import annotations

import functools
from typing import Any

# SET commands that change the transaction, not a setting of the session
TRANSACTION_SETTINGS = frozenset({"TRANSACTION", "SESSION CHARACTERISTICS", "TRANSACTION SNAPSHOT"})
_FALSE = {"false", "f", "fa", "fal", "fals", "no", "n", "off", "of", "0"}  # PostgreSQL's parse_bool

# What a concurrent index build leaves when it fails: (kind, schema, relation, index).
# "create": CREATE INDEX CONCURRENTLY `index` ON `relation`, which leaves `index` invalid
# (`index` None: the server picks the name);
# "reindex": REINDEX INDEX|TABLE CONCURRENTLY `relation` (an index, or a table with `index`
# None), which leaves invalid copies named `…_ccnew` (or the old index as `…_ccold`);
# "reindex-schema": REINDEX SCHEMA CONCURRENTLY `schema` (relation ""), the copies alike on
# its tables; "reindex-database": REINDEX DATABASE CONCURRENTLY (schema None, relation "").
Build = tuple[str, str | None, str, str | None]


def quote_ident(name: str) -> str:
    """`name` as a quoted identifier (PostgreSQL's own `quote_ident` always quoting)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, name: str) -> str:
    """`schema.name`, each quoted; `name` alone (the search path decides) without a schema."""
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


@functools.lru_cache(maxsize=8)
def _only_statement(statement: str) -> Any:
    """The parse tree of `statement` when it is one statement the parser reads, else None (the
    lock ladder asks twice of the same text: what it builds, what it detaches)."""
    from pglast import parse_sql

    try:
        statements = parse_sql(statement)
    except Exception:  # noqa: BLE001 - pglast's ParseError, or a placeholder it cannot read
        return None
    return statements[0].stmt if len(statements) == 1 else None


def transaction_setting(node: Any) -> str:
    """The name of what a `SET` node changes when it is the transaction (`TRANSACTION`,
    `SESSION CHARACTERISTICS`, `TRANSACTION SNAPSHOT`), else ""."""
    from pglast import ast

    if not isinstance(node, ast.VariableSetStmt):
        return ""
    name = (node.name or "").upper()
    return name if name in TRANSACTION_SETTINGS else ""


def concurrently(params: Any) -> bool:
    """Whether REINDEX's options ask for CONCURRENTLY, as the server reads them: the last
    `concurrently` option counts (`CONCURRENTLY`, `(CONCURRENTLY)`, `(CONCURRENTLY on)` ask for
    it; `(CONCURRENTLY false)`, `(CONCURRENTLY 0)` do not)."""
    wanted = False
    for option in params or ():
        if getattr(option, "defname", "") != "concurrently":
            continue
        arg = getattr(option, "arg", None)
        if arg is None:
            wanted = True
        elif getattr(arg, "ival", None) is not None:
            wanted = int(arg.ival) != 0
        else:
            wanted = str(getattr(arg, "sval", getattr(arg, "boolval", ""))).lower() not in _FALSE
    return wanted


# ALTER TABLE `parent` DETACH PARTITION `partition` CONCURRENTLY: ((schema, parent),
# (schema, partition)), schemas None where the name is left to the search path. Cancelled in its
# second transaction (waiting for the queries that may see the partition), it leaves the
# partition "pending detach": only `… DETACH PARTITION … FINALIZE` then completes it.
Detach = tuple[tuple[str | None, str], tuple[str | None, str]]


def concurrent_detach(statement: str) -> Detach | None:
    """The partition `statement` detaches concurrently (as the server reads it), else None."""
    from pglast import ast
    from pglast.enums import AlterTableType

    node = _only_statement(statement)
    if not isinstance(node, ast.AlterTableStmt):
        return None
    cmds = node.cmds or ()
    if node.relation is None or len(cmds) != 1:
        return None
    cmd = cmds[0]
    part = getattr(cmd, "def_", None)
    if cmd.subtype != AlterTableType.AT_DetachPartition or not isinstance(part, ast.PartitionCmd):
        return None
    if not part.concurrent or part.name is None:
        return None
    parent, child = node.relation, part.name
    return (
        (parent.schemaname or None, str(parent.relname)),
        (child.schemaname or None, str(child.relname)),
    )


def may_build_concurrently(statement: str) -> bool:
    """Whether `statement` can be a concurrent index build or detach at all: it has the
    keyword somewhere (a cheap test before the parser reads it; `concurrent_build` and
    `concurrent_detach` decide)."""
    return "concurrently" in statement.lower()


def concurrent_build(statement: str) -> Build | None:
    """The concurrent index build in `statement` (comments, quoting and case as the server
    reads them): a `CREATE INDEX CONCURRENTLY`, named or not, or a `REINDEX INDEX|TABLE|SCHEMA|
    DATABASE CONCURRENTLY`; None for any other statement or one the parser refuses."""
    from pglast import ast

    node = _only_statement(statement)
    relation = getattr(node, "relation", None)
    name = str(relation.relname) if relation is not None and relation.relname else ""
    schema = (relation.schemaname or None) if relation is not None and name else None
    if isinstance(node, ast.IndexStmt):
        if not node.concurrent or not name:
            return None
        return ("create", schema, name, str(node.idxname) if node.idxname else None)
    if not isinstance(node, ast.ReindexStmt) or not concurrently(node.params):
        return None
    kind = int(node.kind)  # type: ignore[arg-type]
    if kind in (0, 1) and name:  # REINDEX_OBJECT_INDEX, REINDEX_OBJECT_TABLE
        return ("reindex", schema, name, name if kind == 0 else None)
    if kind == 2:  # REINDEX_OBJECT_SCHEMA
        return ("reindex-schema", str(node.name), "", None)
    if kind == 4:  # REINDEX_OBJECT_DATABASE (CONCURRENTLY leaves out the system catalogs)
        return ("reindex-database", None, "", None)
    return None
