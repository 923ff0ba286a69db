"""The live schema copied into the scratch database from the catalog, without a lock on any
table of the target (issue 18, point 7).

`pg_dump --schema-only` takes ACCESS SHARE on every table it dumps: a review could then queue
behind an ACCESS EXCLUSIVE on production, or an ALTER queue behind the review (and every query
of the application behind the ALTER). Here the DDL is built from reads of `pg_catalog` (its own
tables only) and the deparse functions that use the catalog caches and open no user relation:
`format_type`, `pg_get_expr`, `pg_get_constraintdef`, `pg_get_indexdef`, `pg_get_triggerdef`,
`pg_get_partkeydef`, `pg_get_functiondef` (for bodies kept as text), `pg_get_function_arguments`.

What PostgreSQL can only print by locking what it reads (`pg_get_viewdef`, a function's
`BEGIN ATOMIC` body, rules, policies) is not read:
- a view or materialized view is made with its columns (names, types) and the columns and
  relations it depends on (`pg_depend`), so that what a migration does to them fails or
  cascades as on the live database; its query text is not the live one;
- a function with an SQL-standard body (`BEGIN ATOMIC`, `RETURN …`) becomes a PL/pgSQL stub
  with the same arguments, result and volatility;
- rules, policies, comments, grants and owners are left out.

The statements run on the scratch database in autocommit, in passes: one that fails (its
dependency not made yet) is tried again while a pass makes progress; what never succeeds is
returned, as the server said it.
"""

from __future__ import annotations

import sqlalchemy as sa

from deployer.risk import catalog

# Schemas of the user's: not the system's, not an extension's member.
_USER_NS = (
    "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
    " AND n.oid NOT IN (SELECT objid FROM pg_depend WHERE classid = 'pg_namespace'::regclass"
    " AND deptype = 'e')"
)


def _not_member(table: str, oid: str) -> str:
    """Not created by an extension (CREATE EXTENSION makes it)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{table}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


_SCHEMAS = f"SELECT format('CREATE SCHEMA IF NOT EXISTS %I', n.nspname) FROM pg_namespace n WHERE {_USER_NS} ORDER BY n.nspname"
_EXTENSIONS = """
    SELECT format('CREATE EXTENSION IF NOT EXISTS %I SCHEMA %I', e.extname, n.nspname)
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname <> 'plpgsql' ORDER BY e.extname
"""
_TYPES = f"""
    SELECT format('CREATE TYPE %I.%I AS ENUM (%s)', n.nspname, t.typname,
                  (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                   FROM pg_enum e WHERE e.enumtypid = t.oid))
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typtype = 'e' AND {_USER_NS} AND {_not_member("pg_type", "t.oid")}
    UNION ALL
    SELECT format('CREATE TYPE %I.%I AS RANGE (subtype = %s)', n.nspname, t.typname,
                  format_type(r.rngsubtype, NULL))
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    JOIN pg_range r ON r.rngtypid = t.oid
    WHERE t.typtype = 'r' AND {_USER_NS} AND {_not_member("pg_type", "t.oid")}
    UNION ALL
    SELECT format('CREATE DOMAIN %I.%I AS %s%s%s', n.nspname, t.typname,
                  format_type(t.typbasetype, t.typtypmod),
                  CASE WHEN t.typdefault IS NOT NULL THEN ' DEFAULT ' || t.typdefault ELSE '' END,
                  CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typtype = 'd' AND {_USER_NS} AND {_not_member("pg_type", "t.oid")}
    UNION ALL
    SELECT format('ALTER DOMAIN %I.%I ADD CONSTRAINT %I %s', n.nspname, t.typname, c.conname,
                  pg_get_constraintdef(c.oid))
    FROM pg_constraint c JOIN pg_type t ON t.oid = c.contypid
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE c.contype = 'c' AND {_USER_NS} AND {_not_member("pg_type", "t.oid")}
    UNION ALL
    SELECT format('CREATE TYPE %I.%I AS (%s)', n.nspname, c.relname,
                  (SELECT string_agg(format('%I %s', a.attname,
                                            format_type(a.atttypid, a.atttypmod)), ', '
                                     ORDER BY a.attnum)
                   FROM pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'c' AND {_USER_NS} AND {_not_member("pg_class", "c.oid")}
"""
# A body kept as text (plpgsql, a quoted SQL body) is printed from pg_proc alone; an
# SQL-standard body (prosqlbody, PostgreSQL 14+) would be deparsed, locking what it reads: a
# PL/pgSQL stub instead (its body is not checked, nor inlined into the callers).
_FUNCTIONS = f"""
    SELECT CASE WHEN to_jsonb(p) ->> 'prosqlbody' IS NULL THEN pg_get_functiondef(p.oid)
           WHEN p.prokind = 'p' THEN
             format('CREATE PROCEDURE %I.%I(%s) LANGUAGE plpgsql AS %L', n.nspname, p.proname,
                    pg_get_function_arguments(p.oid), 'BEGIN END')
           ELSE format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql%s AS %L',
                       n.nspname, p.proname, pg_get_function_arguments(p.oid),
                       pg_get_function_result(p.oid),
                       CASE p.provolatile WHEN 'i' THEN ' IMMUTABLE' WHEN 's' THEN ' STABLE'
                            ELSE '' END,
                       CASE WHEN p.proretset THEN 'BEGIN RETURN; END'
                            WHEN p.prorettype = 'void'::regtype THEN 'BEGIN END'
                            ELSE 'BEGIN RETURN NULL; END' END) END
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_language l ON l.oid = p.prolang
    WHERE p.prokind IN ('f', 'p') AND l.lanname NOT IN ('c', 'internal')
      AND {_USER_NS} AND {_not_member("pg_proc", "p.oid")}
    ORDER BY n.nspname, p.proname
"""
_SEQUENCES = f"""
    SELECT format('CREATE SEQUENCE %I.%I AS %s INCREMENT %s MINVALUE %s MAXVALUE %s START %s '
                  'CACHE %s%s', n.nspname, c.relname, format_type(s.seqtypid, NULL),
                  s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache,
                  CASE WHEN s.seqcycle THEN ' CYCLE' ELSE '' END)
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {_USER_NS} AND {_not_member("pg_class", "c.oid")}
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'i')
"""
_OWNED_BY = f"""
    SELECT format('ALTER SEQUENCE %I.%I OWNED BY %I.%I.%I', n.nspname, c.relname,
                  tn.nspname, t.relname, a.attname)
    FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'a' AND c.relkind = 'S' AND {_USER_NS}
"""
# A column's collation when it is not its type's.
_COLLATE = """CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
    (SELECT format(' COLLATE %I.%I', cn.nspname, co.collname) FROM pg_collation co
     JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation)
    ELSE '' END"""
_VIEWS = f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind,
           (SELECT string_agg(format('NULL::%s%s AS %I', format_type(a.atttypid, a.atttypmod),
                                     {_COLLATE}, a.attname), ', ' ORDER BY a.attnum)
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('v', 'm') AND {_USER_NS} AND {_not_member("pg_class", "c.oid")}
"""
# What each view's rule depends on: relations, and their columns (refobjsubid > 0).
_VIEW_DEPENDENCIES = """
    SELECT DISTINCT r.ev_class, d.refobjid, format('%I.%I', n.nspname, c.relname),
           CASE WHEN d.refobjsubid > 0 THEN
             (SELECT quote_ident(a.attname) FROM pg_attribute a
              WHERE a.attrelid = d.refobjid AND a.attnum = d.refobjsubid) END
    FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
      AND r.ev_class = ANY (CAST(:oids AS oid[]))
"""


def schema_ddl(conn: sa.Connection) -> tuple[list[str], list[str]]:
    """The statements that make the live schema, and what was left out, read on `conn` (a
    connection to the target) in a READ ONLY transaction with a short lock_timeout, rolled
    back: no lock on any user relation, no row of it read."""
    if conn.in_transaction():
        conn.rollback()
    try:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
        cat = catalog.read(conn)
        out = [*_scalars(conn, _SCHEMAS), *_scalars(conn, _EXTENSIONS)]
        out += _scalars(conn, _TYPES)
        out += _scalars(conn, _FUNCTIONS)
        out += _scalars(conn, _SEQUENCES)
        out += catalog.tables(conn, cat)
        out += _scalars(conn, _OWNED_BY)
        out += catalog.constraints(conn, cat)
        out += _views(conn)
        out += catalog.indexes(conn, cat)
        out += catalog.triggers(conn, cat)
        return [s for s in out if s], cat.left_out
    finally:
        conn.rollback()


def _scalars(conn: sa.Connection, sql: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(sa.text(sql)) if r[0]]


def _views(conn: sa.Connection) -> list[str]:
    """Each view with its columns and, in a clause never true, the columns and relations it
    depends on: the dependencies are the live ones, the query text is not."""
    views = conn.execute(sa.text(_VIEWS)).all()
    uses: dict[int, dict[int, tuple[str, set[str]]]] = {}
    for view, rel, name, column in conn.execute(
        sa.text(_VIEW_DEPENDENCIES), {"oids": [v[0] for v in views]}
    ):
        _, cols = uses.setdefault(int(view), {}).setdefault(int(rel), (str(name), set()))
        if column:
            cols.add(str(column))
    out = []
    for oid, name, kind, select in views:
        rels = list(uses.get(int(oid), {}).values())
        sources = ", ".join(f"{rel} AS r{i}" for i, (rel, _) in enumerate(rels))
        refs = [f"r{i}.{c}" for i, (_, cols) in enumerate(rels) for c in sorted(cols)]
        query = f"SELECT {select or ''}"
        if sources:
            query += f" FROM {sources} WHERE false"
            if refs:
                query += f" AND ROW({', '.join(refs)}, NULL) IS NULL"
        if kind == "m":
            out.append(f"CREATE MATERIALIZED VIEW {name} AS {query} WITH NO DATA")
        else:
            out.append(f"CREATE VIEW {name} AS {query}")
    return out


def apply_ddl(conn: sa.Connection, statements: list[str]) -> list[str]:
    """Run `statements` on the scratch database (`conn`: AUTOCOMMIT) in passes, each failed
    one again while a pass makes progress (an object made before what it needs). Returns the
    server's errors for what could not be made."""
    raw = conn.connection.driver_connection
    assert raw is not None
    todo = list(statements)
    errors: dict[str, str] = {}
    with raw.cursor() as cur:
        cur.execute("SET check_function_bodies = off")
        while todo:
            failed: list[str] = []
            for statement in todo:
                try:
                    cur.execute(statement)  # no parameters: the text is sent as it is
                except Exception as exc:  # noqa: BLE001 - the server's refusal, kept
                    errors[statement] = _first_line(exc)
                    failed.append(statement)
            if len(failed) == len(todo):
                break
            todo = failed
    return list(dict.fromkeys(errors[s] for s in todo))


def _first_line(exc: BaseException) -> str:
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    return str(primary or (str(exc).splitlines() or [type(exc).__name__])[0])
