"""The live database around the tables the revisions touch: read-only, from the catalog and the
statistics views, in the deployer's own process, before any env.py runs.

What is read, and why it never waits for nor takes a lock on a user's table:
- sizes and row estimates from `pg_class` (`relpages`, `reltuples`: what the last VACUUM or
  ANALYZE counted; no `pg_relation_size`, which opens the table and takes ACCESS SHARE);
- who holds or waits for a lock on each table, and since when: `pg_locks` joined to
  `pg_stat_activity` (the lock manager's shared memory, no heavyweight lock);
- long transactions: `pg_stat_activity`; (auto)vacuum running on a table:
  `pg_stat_progress_vacuum`.
All in one READ ONLY transaction with `lock_timeout` set defensively.

Grants: any role can read `pg_class` and `pg_locks`; the other sessions' user, state, query and
transaction start in `pg_stat_activity` (and `pg_stat_progress_vacuum`) need membership of
`pg_read_all_stats` (or `pg_monitor`, which includes it): `GRANT pg_read_all_stats TO deployer;`.
Without it, other users' sessions still show up with their pid and lock, and their ages as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from deployer.results.risk import SessionInfo, TableStats

LONG_TRANSACTION = 60.0  # seconds: a transaction older than this is reported

_USER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
_TABLES = sa.text(
    f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), n.nspname, c.relname,
           c.reltuples::bigint,
           (c.relpages::bigint + coalesce(t.relpages, 0)
            + coalesce((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i
                        ON i.oid = x.indexrelid WHERE x.indrelid = c.oid), 0))
           * current_setting('block_size')::bigint
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
    WHERE c.relkind IN ('r', 'p', 'm') AND {_USER}
    """
)
_INDEXES = sa.text(
    f"""
    SELECT n.nspname, i.relname, x.indrelid
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_namespace n ON n.oid = i.relnamespace
    WHERE {_USER}
    """
)
_LOCKS = sa.text(
    """
    SELECT l.relation, l.mode, l.granted, l.pid, coalesce(a.application_name, ''),
           coalesce(a.usename, ''), coalesce(a.state, ''),
           coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8,
           left(coalesce(a.query, ''), 300)
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
)
_LONG = sa.text(
    """
    SELECT pid, coalesce(application_name, ''), coalesce(usename, ''), coalesce(state, ''),
           extract(epoch FROM now() - xact_start)::float8, left(coalesce(query, ''), 300)
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
      AND backend_type = 'client backend' AND now() - xact_start > make_interval(secs => :secs)
    ORDER BY xact_start
    """
)
_VACUUM = sa.text(
    "SELECT relid, phase FROM pg_stat_progress_vacuum WHERE datname = current_database()"
)


@dataclass
class LiveSnapshot:
    """Every user table's statistics and the sessions around it, keyed by `schema.name`."""

    tables: dict[str, TableStats] = field(default_factory=dict)
    by_name: dict[str, list[str]] = field(default_factory=dict)  # bare name → schema.name
    indexes: dict[str, str] = field(default_factory=dict)  # index (bare and qualified) → table
    long_transactions: list[SessionInfo] = field(default_factory=list)

    def find(self, name: str) -> TableStats:
        """The table a statement names (bare, qualified, or an index's name): its statistics,
        or `exists=False` (created by an earlier pending revision, or unknown)."""
        plain = name.replace('"', "")
        key = self.indexes.get(plain, plain)
        if key in self.tables:
            return self.tables[key]
        if "." not in key:
            found = self.by_name.get(key, [])
            if f"public.{key}" in found:
                return self.tables[f"public.{key}"]
            if len(found) == 1:
                return self.tables[found[0]]
        return TableStats(table=key, exists=False)


def read_live(
    conn: sa.Connection,
    *,
    redact: Callable[[str], str] = lambda s: s,
    long_after: float = LONG_TRANSACTION,
) -> LiveSnapshot:
    """Read the snapshot on `conn` (the target; a connection of the deployer's own)."""
    out = LiveSnapshot()
    by_oid: dict[int, TableStats] = {}
    try:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
        for oid, key, _schema, name, rows, size in conn.execute(_TABLES):
            stats = TableStats(table=key, rows=int(rows), bytes=int(size or 0))
            out.tables[key] = by_oid[int(oid)] = stats
            out.by_name.setdefault(str(name), []).append(key)
        for schema, name, table_oid in conn.execute(_INDEXES):
            table = by_oid.get(int(table_oid))
            if table is not None:
                out.indexes[f"{schema}.{name}"] = table.table
                out.indexes.setdefault(str(name), table.table)
        for oid, mode, granted, pid, app, user, state, age, query in conn.execute(_LOCKS):
            table = by_oid.get(int(oid)) if oid is not None else None
            if table is None:
                continue
            table.sessions.append(
                SessionInfo(
                    pid=int(pid or 0),
                    application_name=redact(app),
                    user=redact(user),
                    state=state,
                    transaction_seconds=round(float(age or 0), 1),
                    mode=mode,
                    granted=bool(granted),
                    query=_query(query, redact),
                )
            )
        for relid, phase in conn.execute(_VACUUM):
            table = by_oid.get(int(relid))
            if table is not None:
                table.autovacuum = str(phase)
        out.long_transactions = [
            SessionInfo(
                pid=int(pid),
                application_name=redact(app),
                user=redact(user),
                state=state,
                transaction_seconds=round(float(age or 0), 1),
                query=_query(query, redact),
            )
            for pid, app, user, state, age, query in conn.execute(_LONG, {"secs": long_after})
        ]
    finally:
        if conn.in_transaction():
            conn.rollback()
    return out


def _query(text: str, redact: Callable[[str], str]) -> str:
    one = " ".join(str(text or "").split())
    return redact(one if len(one) <= 120 else one[:119] + "…")
