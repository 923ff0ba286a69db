"""SQL as PostgreSQL's own parser reads it (pglast, libpg_query): what the deployer needs to know
of a statement, for the seed, the rehearsal and the lock ladder alike. pglast is imported when a
statement is first read, not with this module."""

from __future__ import annotations

from typing import Any

# SET commands that change the transaction, not a setting of the session
TRANSACTION_SETTINGS = frozenset({"TRANSACTION", "SESSION CHARACTERISTICS", "TRANSACTION SNAPSHOT"})
_FALSE = {"false", "f", "fa", "fal", "fals", "no", "n", "off", "of", "0"}  # PostgreSQL's parse_bool

# What a concurrent index build leaves when it fails: (kind, schema, relation, index).
# "create": CREATE INDEX CONCURRENTLY `index` ON `relation`, which leaves `index` invalid;
# "reindex": REINDEX INDEX|TABLE CONCURRENTLY `relation` (an index, or a table with `index`
# None), which leaves invalid copies named `…_ccnew` (or the old index as `…_ccold`).
Build = tuple[str, str | None, str, str | None]


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


def concurrent_build(statement: str) -> Build | None:
    """The concurrent index build in `statement` (comments, quoting and case as the server
    reads them): a `CREATE INDEX CONCURRENTLY` with a name, or a `REINDEX INDEX|TABLE
    CONCURRENTLY`; None for any other statement, an index without a name (the server picks
    one) or a statement the parser refuses."""
    from pglast import ast, parse_sql

    try:
        statements = parse_sql(statement)
    except Exception:  # noqa: BLE001 - pglast's ParseError, or a placeholder it cannot read
        return None
    if len(statements) != 1:
        return None
    node = statements[0].stmt
    relation = getattr(node, "relation", None)
    if relation is None or not relation.relname:
        return None
    schema, name = relation.schemaname or None, str(relation.relname)
    if isinstance(node, ast.IndexStmt):
        return (
            ("create", schema, name, str(node.idxname))
            if node.concurrent and node.idxname
            else None
        )
    if isinstance(node, ast.ReindexStmt) and concurrently(node.params):
        kind = int(node.kind)  # type: ignore[arg-type]
        if kind in (0, 1):  # REINDEX_OBJECT_INDEX, REINDEX_OBJECT_TABLE
            return ("reindex", schema, name, name if kind == 0 else None)
    return None
