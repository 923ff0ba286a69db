"""Risk review: what `risk-review: true` adds to `db-deploy plan`, and what it touches.

Issue 18 (point 7): the review of a 20-revision plan adds at most a few seconds, and nothing of
it touches the target's data or takes a lock on it. On the embedded server, a target database
at the head of a generated chain of BASE tables (bench/chain.py), ROWS rows in each (ANALYZEd),
and a project with 20 more revisions pending on those tables, risky and safe (an index without
CONCURRENTLY, a volatile default, SET NOT NULL, a foreign key and a UNIQUE constraint without
NOT VALID, a type change that rewrites, drops and renames, a Python backfill, and as many safe
ones: CONCURRENTLY in an autocommit block, NOT VALID then VALIDATE, new tables, comments).

`db-deploy plan` runs with `--risk-review false` and `--risk-review true` in turn (which goes
first alternates), the scratch database on the same server (`--scratch-database-url`, as the
plan workflow's PostgreSQL service). While each plan runs, another session samples `pg_locks`
every few milliseconds for locks on the target's tables held by any other session; after it,
`pg_stat_user_tables` of the target is compared with before (sequential and index scans, rows
written): the review must not scan or write them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import chain
from bench.proc import VENV_BIN, deployer_env, run
from bench.server import Server
from bench.stats import fmt_s, fmt_x, summary

BASE = 20  # tables of the target, from the generated chain
ROWS = 20_000  # rows in each
PENDING = 20
SAMPLE_S = 0.005

#: The pending revisions: (what, upgrade body). `t(i)` is table i of the chain.
REVISIONS: list[tuple[str, str]] = [
    ("index without CONCURRENTLY", 'op.create_index("ix_t0001_updated", "t0001", ["updated_at"])'),
    (
        "index CONCURRENTLY in an autocommit block",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_t0002_updated", "t0002", ["updated_at"], '
        "postgresql_concurrently=True)",
    ),
    ("nullable column", 'op.add_column("t0003", sa.Column("note", sa.Text()))'),
    (
        "volatile default",
        'op.add_column("t0004", sa.Column("token", postgresql.UUID(), '
        'server_default=sa.text("gen_random_uuid()")))',
    ),
    (
        "constant default, NOT NULL",
        'op.add_column("t0006", sa.Column("flag", sa.Boolean(), nullable=False, '
        "server_default=sa.false()))",
    ),
    (
        "SET NOT NULL",
        'op.alter_column("t0007", "updated_at", existing_type=sa.DateTime(timezone=True), '
        "nullable=False)",
    ),
    (
        "foreign key without NOT VALID",
        'op.add_column("t0008", sa.Column("owner_id", postgresql.UUID()))\n'
        'op.create_foreign_key("fk_t0008_owner", "t0008", "t0001", ["owner_id"], ["id"])',
    ),
    (
        "check NOT VALID",
        'op.execute("ALTER TABLE t0009 ADD CONSTRAINT ck_t0009_name '
        "CHECK (btrim(name) <> '') NOT VALID\")",
    ),
    (
        "VALIDATE in its own revision",
        'op.execute("ALTER TABLE t0009 VALIDATE CONSTRAINT ck_t0009_name")',
    ),
    (
        "type change that rewrites",
        'op.alter_column("t0011", "tenant_id", type_=sa.Text(), '
        'existing_type=postgresql.UUID(), postgresql_using="tenant_id::text")',
    ),
    ("UNIQUE constraint", 'op.create_unique_constraint("uq_t0012_name", "t0012", ["name"])'),
    ("drop column", 'op.drop_column("t0013", "attributes")'),
    ("rename column", 'op.alter_column("t0014", "name", new_column_name="title")'),
    (
        "new table with an index",
        'op.create_table("audit_log", sa.Column("id", sa.BigInteger(), primary_key=True), '
        'sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()")), '
        'sa.Column("what", sa.Text()))\n'
        'op.create_index("ix_audit_log_at", "audit_log", ["at"])',
    ),
    ("comment", "op.execute(\"COMMENT ON TABLE t0016 IS 'tenants'\")"),
    (
        "Python read (new table)",
        'n = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_log")).scalar()\n'
        "op.execute(f\"COMMENT ON TABLE audit_log IS '{n} rows at creation'\")",
    ),
    ("drop index without CONCURRENTLY", 'op.drop_index("ix_t0017_name", table_name="t0017")'),
    (
        "Python backfill under the ADD's lock",
        'op.add_column("t0018", sa.Column("rank", sa.Integer()))\n'
        "bind = op.get_bind()\n"
        'for (i,) in bind.execute(sa.text("SELECT id FROM t0018 LIMIT 10")):\n'
        '    bind.execute(sa.text("UPDATE t0018 SET rank = 1 WHERE id = :i"), {"i": i})',
    ),
    (
        "nullable column, default now()",
        'op.add_column("t0019", sa.Column("seen_at", sa.DateTime(timezone=True), '
        'server_default=sa.text("now()")))',
    ),
    (
        "new table with a foreign key",
        'op.create_table("t0001_notes", sa.Column("id", sa.BigInteger(), primary_key=True), '
        'sa.Column("t0001_id", postgresql.UUID(), sa.ForeignKey("t0001.id")))',
    ),
]
assert len(REVISIONS) == PENDING


def _pending_source(k: int, what: str, body: str) -> str:
    i = BASE + k + 1
    rev, down = chain.revision_id(i), chain.revision_id(i - 1)
    upgrade = "\n".join(f"    {line}" for line in body.splitlines())
    return (
        f'"""{what}\n\nRevision ID: {rev}\nRevises: {down}\n"""\n\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        "from sqlalchemy.dialects import postgresql\n\n"
        f'revision = "{rev}"\n'
        f'down_revision = "{down}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade() -> None:\n{upgrade}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def _plan_cmd(project: Path, url: str, scratch: str, review: bool, report: Path) -> list[str]:
    return [
        str(VENV_BIN / "db-deploy"),
        "plan",
        "--database-url",
        url,
        "--migrations-path",
        str(project),
        "--scratch-database-url",
        scratch,
        "--risk-review",
        "true" if review else "false",
        "--report-file",
        str(report),
    ]


def _tables_stats(url: str) -> dict[str, tuple[int, int, int]]:
    """seq_scan, idx_scan and rows written of each of the target's tables (a fresh session, so
    no cached statistics snapshot)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, coalesce(idx_scan, 0), n_tup_ins + n_tup_upd + n_tup_del "
            "FROM pg_stat_user_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def _settle(server: Server, dbname: str) -> None:
    """Wait until no other session is on `dbname` (an exiting backend flushes its statistics),
    then a little more."""
    deadline = time.monotonic() + 10
    with server.admin() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (dbname,),
            ).fetchone()
            if not row or row[0] == 0:
                break
            time.sleep(0.05)
    time.sleep(1.2)


#: What marks a session as pg_dump's (its application name is the deployer's): the queries it
#: sends to take its locks and set up its snapshot.
PG_DUMP_MARKS = ("LOCK TABLE", "REPEATABLE READ", "pg_catalog.set_config", "tableoid")


class _LockSampler:
    """Samples, from its own session, the locks other sessions hold on the target's tables,
    and the queries of every other session on the target (to tell pg_dump's from the rest)."""

    def __init__(self, server: Server, dbname: str) -> None:
        self.server, self.dbname = server, dbname
        self.locks: dict[int, set[tuple[str, str]]] = {}  # pid -> {(table, mode)}
        self.queries: dict[int, set[str]] = {}  # pid -> query beginnings seen
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        # pg_locks lists every database's locks (by oid): this session is on the target, to
        # resolve the names of its own tables.
        locks = (
            "SELECT l.pid, c.relname, l.mode FROM pg_locks l "
            "JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE l.locktype = 'relation' "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND n.nspname = 'public' AND c.relkind IN ('r', 'p') "
            "AND l.pid <> pg_backend_pid()"
        )
        queries = (
            "SELECT pid, left(query, 60) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query <> ''"
        )
        with psycopg.connect(self.server.url(self.dbname), autocommit=True) as conn:
            while not self._stop.is_set():
                for pid, table, mode in conn.execute(locks).fetchall():
                    self.locks.setdefault(int(pid), set()).add((str(table), str(mode)))
                for pid, query in conn.execute(queries).fetchall():
                    self.queries.setdefault(int(pid), set()).add(" ".join(str(query).split()))
                self.samples += 1
                self._stop.wait(SAMPLE_S)

    def holders(self) -> dict[tuple[str, str], set[str]]:
        """(who, mode) -> tables: who is `pg_dump (schema copy)` or `db-deploy`."""
        out: dict[tuple[str, str], set[str]] = {}
        for pid, held in self.locks.items():
            seen = self.queries.get(pid, set())
            dump = any(mark in q for q in seen for mark in PG_DUMP_MARKS)
            who = "pg_dump (schema copy)" if dump else "db-deploy"
            for table, mode in held:
                out.setdefault((who, mode), set()).add(table)
        return out


def run_suite(
    server: Server, work: Path, repeat: int, say: Callable[[str], None]
) -> dict[str, Any]:
    folder = work / "risk"
    shutil.rmtree(folder, ignore_errors=True)
    project = chain.write_project(folder / "project", BASE, shared=True)
    target = server.create_database("risk")
    url = server.url(target)
    try:
        run(
            [str(VENV_BIN / "db-deploy"), "deploy", "--database-url", url,
             "--migrations-path", str(project)],
            env=deployer_env(),
            cwd=folder,
            log=folder / "base-deploy.log",
        ).check("base deploy of the risk target")  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(1, BASE + 1):
                conn.execute(
                    f"INSERT INTO {chain.table_name(i)} (tenant_id, name, updated_at) "
                    "SELECT gen_random_uuid(), 'row ' || g, CASE WHEN g % 2 = 0 THEN now() END "
                    f"FROM generate_series(1, {ROWS}) g"
                )
            conn.execute("ANALYZE")
        for k, (what, body) in enumerate(REVISIONS):
            i = BASE + k + 1
            (project / "versions" / f"{chain.revision_id(i)}_pending.py").write_text(
                _pending_source(k, what, body)
            )
        data_tables = {chain.table_name(i) for i in range(1, BASE + 1)}
        rounds: list[dict[str, float]] = []
        scans: dict[str, dict[str, int]] = {"off": {}, "on": {}}
        locks: dict[str, dict[tuple[str, str], set[str]]] = {"off": {}, "on": {}}
        samples = {"off": 0, "on": 0}
        risk: dict[str, Any] = {}
        for r in range(repeat):
            order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
            got: dict[str, float] = {}
            for mode in order:
                _settle(server, target)
                before = _tables_stats(url)
                report = folder / f"report-{mode}.json"
                report.unlink(missing_ok=True)
                cmd = _plan_cmd(project, url, server.url("postgres"), mode == "on", report)
                with _LockSampler(server, target) as sampler:
                    m = run(cmd, env=deployer_env(), cwd=folder, log=folder / f"plan-{mode}.log")
                m.check(f"db-deploy plan --risk-review {'true' if mode == 'on' else 'false'}")
                got[mode] = m.seconds
                for key, tables in sampler.holders().items():
                    locks[mode].setdefault(key, set()).update(tables)
                samples[mode] += sampler.samples
                _settle(server, target)
                after = _tables_stats(url)
                for table in data_tables:
                    b, a = before.get(table, (0, 0, 0)), after.get(table, (0, 0, 0))
                    for name, j in (("seq_scan", 0), ("idx_scan", 1), ("rows_written", 2)):
                        scans[mode][name] = scans[mode].get(name, 0) + a[j] - b[j]
                if mode == "on" and not risk:
                    doc = json.loads(report.read_text())
                    review = doc.get("risk") or {}
                    revs = review.get("revisions") or []
                    risk = {
                        "level": review.get("level"),
                        "findings": sum(len(v.get("findings") or []) for v in revs),
                        "rehearsed": review.get("rehearsed"),
                        "revisions": len(revs),
                        "failed_revisions": [v["revision"] for v in revs if v.get("error")],
                        "note": review.get("note", ""),
                    }
            got["added"] = got["on"] - got["off"]
            rounds.append(got)
            say(
                f"  risk round {r + 1}: plan {got['off']:.2f} s without the review, "
                f"{got['on']:.2f} s with it (+{got['added']:.2f} s)"
            )
    finally:
        server.drop_database(target)
    return {
        "base_tables": BASE,
        "rows_per_table": ROWS,
        "pending": PENDING,
        "seconds": {k: summary([r[k] for r in rounds]) for k in ("off", "on", "added")},
        "ratio": summary([r["on"] / r["off"] for r in rounds]),
        "review": risk,
        "table_stats_delta": scans,  # summed over the rounds
        "rounds": repeat,
        "locks": {
            mode: [
                {
                    "holder": who,
                    "mode": lock,
                    "tables": len(tables),
                    "data_tables": len(tables & data_tables),
                    "examples": sorted(tables)[:3],
                }
                for (who, lock), tables in sorted(locks[mode].items())
            ]
            for mode in ("off", "on")
        },
        "lock_samples": samples,
    }


def table(results: dict[str, Any]) -> list[str]:
    r = results.get("risk")
    if not r:
        return []
    s = r["seconds"]
    d = r["table_stats_delta"]
    n = r["rounds"]
    lines = [
        "",
        f"**Risk review** (`db-deploy plan`, {r['pending']} pending revisions over "
        f"{r['base_tables']} tables of {r['rows_per_table']:,} rows; seconds)",
        "",
        "| review off | review on | added | on / off |",
        "| ---: | ---: | ---: | ---: |",
        f"| {fmt_s(s['off'])} | {fmt_s(s['on'])} | {fmt_s(s['added'])} | {fmt_x(r['ratio'])} |",
        "",
        f"| review | seq scans | index scans | rows written | locks seen on the {r['base_tables']} "
        "data tables |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for mode in ("off", "on"):
        seen = "; ".join(
            f"{x['mode']} by {x['holder']} on {x['data_tables']} of them"
            + (
                f" (+{x['tables'] - x['data_tables']} other)"
                if x["tables"] > x["data_tables"]
                else ""
            )
            for x in r["locks"][mode]
        )
        lines.append(
            f"| {mode} | {d[mode].get('seq_scan', 0) / n:g} | {d[mode].get('idx_scan', 0) / n:g} | "
            f"{d[mode].get('rows_written', 0) / n:g} | {seen or 'none'} "
            f"({r['lock_samples'][mode]} samples) |"
        )
    return lines
