"""Tables, check constraints, indexes and triggers of the target, as DDL built from its catalog
without a lock on any of its relations (issue 18, point 7; used by `schema_copy`).

PostgreSQL's deparse functions lock the relation an expression belongs to: `pg_get_expr(expr,
table)`, `pg_get_indexdef`, `pg_get_partkeydef`, a CHECK's `pg_get_constraintdef` and a WHEN's
`pg_get_triggerdef` each open the table (ACCESS SHARE, held to the end of the transaction) to
learn its column names. So an expression is deparsed here against a relation of the system's
instead (the widest of pg_catalog and information_schema, e.g. information_schema.routines):
PostgreSQL prints column N under that relation's Nth name, which is then replaced by the
table's own Nth name where the parser (pglast) finds a column reference. Defaults and partition
bounds hold no column and are deparsed with no relation at all. Primary keys, unique and foreign
keys are printed by `pg_get_constraintdef`, which reads only the catalog.

Left out (and counted): an expression of a table wider than that relation, a WHEN clause of a
trigger (it names OLD and NEW: the trigger is made without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

# Relations of the user's: not the system's, not made by an extension.
_USER = (
    "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass "
    "AND e.objid = c.oid AND e.deptype = 'e')"
)
_CONTEXT = """
    SELECT c.oid, c.relname, array_agg(a.attname::text ORDER BY a.attnum)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
    WHERE c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
      AND c.relkind IN ('r', 'v')
    GROUP BY c.oid, c.relname
    HAVING max(a.attnum) = count(*)
    ORDER BY count(*) DESC, c.oid LIMIT 1
"""
_COLUMNS = f"""
    SELECT a.attrelid, a.attnum, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
             (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co
              JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation)
           END,
           a.attidentity, a.attgenerated,
           CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, :ctx)
                ELSE pg_get_expr(d.adbin, 0) END,
           a.attnotnull, a.attislocal, a.attcollation
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT a.attisdropped AND {_USER}
    ORDER BY a.attrelid, a.attnum
"""
_TABLES = f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), quote_ident(c.relname), c.relkind,
           c.relpersistence, c.relispartition,
           (SELECT string_agg(format('%I.%I', pn.nspname, pc.relname), ', '
                              ORDER BY i.inhseqno)
            FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE i.inhrelid = c.oid),
           pg_get_expr(c.relpartbound, 0),
           p.partstrat, p.partattrs::int2[], pg_get_expr(p.partexprs, :ctx)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {_USER}
    ORDER BY c.relispartition, n.nspname, c.relname
"""
# Primary keys, unique, exclusion and foreign keys (printed from the catalog alone); checks,
# deparsed against the context relation. Inherited ones come with their parent's.
_CONSTRAINTS = f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), quote_ident(c.relname),
           quote_ident(k.conname), k.contype,
           CASE WHEN k.contype IN ('p', 'u', 'f') THEN pg_get_constraintdef(k.oid) END,
           CASE WHEN k.contype = 'c' THEN pg_get_expr(k.conbin, :ctx) END,
           k.convalidated, k.connoinherit, k.conindid, k.condeferrable, k.condeferred,
           (SELECT array_agg(CASE WHEN opn.nspname = 'pg_catalog' THEN o.oprname::text
                                  ELSE format('OPERATOR(%I.%s)', opn.nspname, o.oprname) END
                             ORDER BY u.ord)
            FROM unnest(k.conexclop) WITH ORDINALITY AS u(op, ord)
            JOIN pg_operator o ON o.oid = u.op
            JOIN pg_namespace opn ON opn.oid = o.oprnamespace)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE k.contype IN ('p', 'u', 'x', 'c', 'f') AND k.conislocal AND {_USER}
    ORDER BY CASE k.contype WHEN 'f' THEN 2 WHEN 'c' THEN 1 ELSE 0 END, n.nspname, c.relname,
             k.conname
"""
_INDEX_SELECT = """
    SELECT i.indexrelid, c.oid, format('%I.%I', n.nspname, c.relname), quote_ident(c.relname),
           quote_ident(ic.relname), i.indisunique, am.amname, i.indnkeyatts, i.indkey::int2[],
           i.indclass::oid[], i.indoption::int2[], i.indcollation::oid[],
           pg_get_expr(i.indexprs, :ctx), pg_get_expr(i.indpred, :ctx),
           coalesce(to_jsonb(i) ->> 'indnullsnotdistinct', 'false') = 'true'
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
# The indexes not made by a constraint (a partition's come with its parent's).
_INDEXES = f"""{_INDEX_SELECT}
    WHERE NOT ic.relispartition AND c.relkind IN ('r', 'p', 'm')
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                      AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))
      AND {_USER}
"""
# Those of exclusion constraints (printing the constraint would lock its table).
_EXCLUSION_INDEXES = f"""{_INDEX_SELECT}
    WHERE i.indexrelid IN (SELECT conindid FROM pg_constraint WHERE contype = 'x') AND {_USER}
"""
_DEFAULT_COLLATION = 100  # pg_catalog."default"
_OPCLASSES = """
    SELECT o.oid, o.opcdefault, format('%I.%I', n.nspname, o.opcname)
    FROM pg_opclass o JOIN pg_namespace n ON n.oid = o.opcnamespace
"""
_COLLATIONS = """
    SELECT co.oid, format('%I.%I', n.nspname, co.collname)
    FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
    WHERE co.oid = ANY (CAST(:oids AS oid[]))
"""
# A trigger with no WHEN is printed from the catalog alone; one with a WHEN is built here.
_TRIGGERS = f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), t.tgqual IS NULL,
           CASE WHEN t.tgqual IS NULL THEN pg_get_triggerdef(t.oid) END,
           quote_ident(t.tgname), t.tgtype, format('%I.%I', pn.nspname, p.proname),
           t.tgnargs, t.tgargs, t.tgattr::int2[], t.tgconstraint <> 0,
           quote_ident(t.tgoldtable), quote_ident(t.tgnewtable)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND coalesce(to_jsonb(t) ->> 'tgparentid', '0') = '0'
      AND {_USER}
"""


@dataclass(frozen=True)
class Column:
    attnum: int
    name: str  # quoted as needed
    type: str
    collate: str | None
    identity: str
    generated: str
    expression: str | None  # the default, or the generated column's expression
    not_null: bool
    local: bool
    collation: int


@dataclass
class Catalog:
    """The target's columns, and the relation expressions are deparsed against."""

    context: int  # its oid
    context_name: str
    context_columns: list[str]
    columns: dict[int, list[Column]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)

    def names(self, table: int) -> dict[int, str]:
        return {c.attnum: c.name for c in self.columns.get(table, [])}

    def expression(self, text: str | None, table: int, table_name: str) -> str | None:
        """`text`, deparsed against the context relation, with the table's own column names;
        None when a column is beyond the context's width (or `text` is None)."""
        if text is None:
            return None
        return _renamed(text, self, self.names(table), table_name)

    def expressions(self, text: str | None, table: int, table_name: str) -> list[str] | None:
        """A list of expressions (an index's, a partition key's), each on its own."""
        renamed = self.expression(text, table, table_name)
        if renamed is None:
            return None
        from pglast import parse_sql
        from pglast.stream import RawStream

        stmt: Any = parse_sql("SELECT " + renamed)[0].stmt
        return [RawStream()(t.val) for t in stmt.targetList]


def read(conn: sa.Connection) -> Catalog:
    """The context relation and the columns of every table, partition and materialized view."""
    oid, name, columns = conn.execute(sa.text(_CONTEXT)).one()
    cat = Catalog(int(oid), str(name), [str(c) for c in columns])
    for row in conn.execute(sa.text(_COLUMNS), {"ctx": cat.context}):
        cat.columns.setdefault(int(row[0]), []).append(Column(*row[1:]))
    return cat


class _Wider(Exception):
    """An expression names a column beyond the context relation's width."""


def _renamed(text: str, cat: Catalog, names: dict[int, str], table_name: str) -> str | None:
    from pglast import parse_sql
    from pglast.visitors import Visitor

    prefix = "SELECT "
    data = (prefix + text).encode()
    spans: list[tuple[int, int, str]] = []
    position = {n: i + 1 for i, n in enumerate(cat.context_columns)}

    class Refs(Visitor):
        def visit_ColumnRef(self, _ancestors: object, node: Any) -> None:
            first = node.fields[0]
            name = getattr(first, "sval", None)
            if name is None:
                return
            at = int(node.location)
            end = _identifier_end(data, at)
            if len(node.fields) > 1 and name == cat.context_name:  # a whole-row reference
                spans.append((at, end, table_name))
            elif len(node.fields) == 1 and name in position:
                if position[name] not in names:
                    raise _Wider(name)
                spans.append((at, end, names[position[name]]))

    try:
        Refs()(parse_sql(data.decode()))
    except _Wider:
        return None
    for at, end, new in sorted(spans, reverse=True):
        data = data[:at] + new.encode() + data[end:]
    return data.decode()[len(prefix) :]


def _identifier_end(data: bytes, at: int) -> int:
    """The end of the identifier starting at byte `at`: quoted ("a""b") or plain."""
    if data[at : at + 1] == b'"':
        i = at + 1
        while i < len(data):
            if data[i : i + 1] == b'"':
                if data[i + 1 : i + 2] != b'"':
                    return i + 1
                i += 1
            i += 1
        return len(data)
    i = at
    while i < len(data) and (chr(data[i]).isalnum() or data[i] in b"_$" or data[i] >= 0x80):
        i += 1
    return i


# --------------------------------------------------------------------------- the DDL


def tables(conn: sa.Connection, cat: Catalog) -> Iterator[str]:
    strategies = {"r": "RANGE", "l": "LIST", "h": "HASH"}
    for row in conn.execute(sa.text(_TABLES), {"ctx": cat.context}):
        oid, name, short, kind, persistence, is_partition, parents, bound = row[:8]
        strategy, attrs, exprs = row[8:]
        unlogged = "UNLOGGED " if persistence == "u" else ""
        by = ""
        if kind == "p":
            keys = _keys(cat, int(oid), short, attrs or [], exprs)
            if keys is None:
                cat.left_out.append(f"table {name}: its partition key")
                continue
            by = f" PARTITION BY {strategies.get(strategy, 'RANGE')} ({', '.join(keys)})"
        if is_partition and parents:
            yield f"CREATE {unlogged}TABLE {name} PARTITION OF {parents} {bound}{by}"
            continue
        local = [c for c in cat.columns.get(int(oid), []) if c.local]
        cols = [_column(c, cat, int(oid), short) for c in local]
        if None in cols:
            cat.left_out.append(f"table {name}: a generated column")
            continue
        inherits = f" INHERITS ({parents})" if parents else ""
        yield f"CREATE {unlogged}TABLE {name} ({', '.join(map(str, cols))}){inherits}{by}"


def _column(c: Column, cat: Catalog, table: int, short: str) -> str | None:
    out = f"{c.name} {c.type}"
    if c.collate:
        out += f" COLLATE {c.collate}"
    if c.identity:
        out += f" GENERATED {'ALWAYS' if c.identity == 'a' else 'BY DEFAULT'} AS IDENTITY"
    elif c.generated:
        expr = cat.expression(c.expression, table, short)
        if expr is None:
            return None
        out += f" GENERATED ALWAYS AS ({expr})" + (" STORED" if c.generated == "s" else "")
    elif c.expression is not None:
        out += f" DEFAULT {c.expression}"
    return out + (" NOT NULL" if c.not_null else "")


def _keys(
    cat: Catalog, table: int, short: str, attrs: list[int], exprs: str | None
) -> list[str] | None:
    """Key columns (attnum > 0) and expressions (0, in order), as an index or partition key."""
    listed = cat.expressions(exprs, table, short) if exprs else []
    if listed is None:
        return None
    names, pending = cat.names(table), iter(listed)
    return [names[a] if a else f"({next(pending)})" for a in attrs]


def constraints(conn: sa.Connection, cat: Catalog) -> Iterator[str]:
    exclusions = _read_indexes(conn, cat, _EXCLUSION_INDEXES)
    for row in conn.execute(sa.text(_CONSTRAINTS), {"ctx": cat.context}):
        oid, name, short, short_con, kind, definition, check, valid, no_inherit = row[:9]
        index, deferrable, deferred, operators = row[9:]
        if kind == "c":
            expr = cat.expression(check, int(oid), short)
            if expr is None:
                cat.left_out.append(f"constraint {short_con} on {name}")
                continue
            definition = f"CHECK ({expr})" + " NO INHERIT" * bool(no_inherit)
            definition += " NOT VALID" * (not valid)
        elif kind == "x":
            ix = exclusions.get(int(index))
            if ix is None:
                cat.left_out.append(f"constraint {short_con} on {name}")
                continue
            pairs = ", ".join(f"{k} WITH {op}" for k, op in zip(ix.keys, operators, strict=False))
            definition = f"EXCLUDE USING {ix.am} ({pairs})" + ix.tail(include_only=True)
            definition += f" WHERE ({ix.where})" if ix.where else ""
            definition += " DEFERRABLE" * bool(deferrable) + " INITIALLY DEFERRED" * bool(deferred)
        yield f"ALTER TABLE {name} ADD CONSTRAINT {short_con} {definition}"


@dataclass(frozen=True)
class _Index:
    table: str
    name: str
    unique: bool
    am: str
    keys: list[str]  # with their collation, operator class and order
    include: list[str]
    where: str
    nulls_not_distinct: bool

    def tail(self, *, include_only: bool = False) -> str:
        out = f" INCLUDE ({', '.join(self.include)})" if self.include else ""
        if include_only:
            return out
        out += " NULLS NOT DISTINCT" * self.nulls_not_distinct
        return out + (f" WHERE {self.where}" if self.where else "")


def indexes(conn: sa.Connection, cat: Catalog) -> Iterator[str]:
    for ix in _read_indexes(conn, cat, _INDEXES).values():
        if ix is not None:
            yield (
                f"CREATE {'UNIQUE ' * ix.unique}INDEX {ix.name} ON {ix.table} USING {ix.am} "
                f"({', '.join(ix.keys)}){ix.tail()}"
            )


def _read_indexes(conn: sa.Connection, cat: Catalog, sql: str) -> dict[int, _Index | None]:
    """The indexes `sql` selects, by oid; None (and noted) for one that cannot be read."""
    rows = conn.execute(sa.text(sql), {"ctx": cat.context}).all()
    if not rows:
        return {}
    opclasses = {int(r[0]): (bool(r[1]), str(r[2])) for r in conn.execute(sa.text(_OPCLASSES))}
    wanted = sorted({int(c) for r in rows for c in (r[11] or []) if c})
    collations = {
        int(r[0]): str(r[1]) for r in conn.execute(sa.text(_COLLATIONS), {"oids": wanted})
    }
    out: dict[int, _Index | None] = {}
    for row in rows:
        index, oid, table, short, name, unique, am, nkeys, attrs, classes = row[:10]
        options, colls, exprs, pred, nulls_not_distinct = row[10:]
        keys = _keys(cat, int(oid), short, list(attrs), exprs)
        where = cat.expression(pred, int(oid), short) if pred else ""
        if keys is None or where is None:
            cat.left_out.append(f"index {name} on {table}")
            out[int(index)] = None
            continue
        columns = {c.attnum: c.collation for c in cat.columns.get(int(oid), [])}
        shown = []
        for i, key in enumerate(keys[:nkeys]):
            coll = int(colls[i] or 0)
            # A column's own collation, or an expression's default (100), goes unsaid.
            usual = columns.get(attrs[i], coll) if attrs[i] else _DEFAULT_COLLATION
            if coll and coll != usual:
                key += f" COLLATE {collations.get(coll, 'pg_catalog.default')}"
            default, opclass = opclasses.get(int(classes[i]), (True, ""))
            if not default:
                key += f" {opclass}"
            desc, nulls_first = bool(options[i] & 1), bool(options[i] & 2)
            key += " DESC" * desc
            if nulls_first != desc:
                key += " NULLS FIRST" if nulls_first else " NULLS LAST"
            shown.append(key)
        out[int(index)] = _Index(
            table, name, bool(unique), am, shown, keys[nkeys:], where, bool(nulls_not_distinct)
        )
    return out


_EVENTS = ((4, "INSERT"), (8, "DELETE"), (16, "UPDATE"), (32, "TRUNCATE"))  # pg_trigger.tgtype


def triggers(conn: sa.Connection, cat: Catalog) -> Iterator[str]:
    for row in conn.execute(sa.text(_TRIGGERS)):
        oid, table, plain, definition, name, kind, function = row[:7]
        nargs, args, columns, constraint, old_table, new_table = row[7:]
        if plain:
            yield str(definition)
            continue
        if constraint:
            cat.left_out.append(f"constraint trigger {name} on {table} (it has a WHEN)")
            continue
        cat.left_out.append(f"the WHEN of trigger {name} on {table}")
        names = cat.names(int(oid))
        events = [e for bit, e in _EVENTS if kind & bit]
        if "UPDATE" in events and columns:
            cols = ", ".join(names[a] for a in columns if a in names)
            events[events.index("UPDATE")] = f"UPDATE OF {cols}"
        when = "INSTEAD OF" if kind & 64 else "BEFORE" if kind & 2 else "AFTER"
        referencing = ""
        if old_table or new_table:
            referencing = " REFERENCING" + f" OLD TABLE AS {old_table}" * bool(old_table)
            referencing += f" NEW TABLE AS {new_table}" * bool(new_table)
        each = "ROW" if kind & 1 else "STATEMENT"
        values = bytes(args or b"").split(b"\0")[: int(nargs)]
        quoted = ", ".join("'" + v.decode().replace("'", "''") + "'" for v in values)
        yield (
            f"CREATE TRIGGER {name} {when} {' OR '.join(events)} ON {table}{referencing} "
            f"FOR EACH {each} EXECUTE FUNCTION {function}({quoted})"
        )
