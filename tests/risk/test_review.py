"""The risk review against a live database: sizes and open transactions weigh the findings, the
live read takes no lock, accepted findings and the gate, the fallback without a rehearsal,
redaction, and the level function's two ends (an empty table, a 10 GB table behind a
20-minute transaction)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer.alembic_project import find_project
from deployer.errors import ConfigError
from deployer.results.risk import RiskResult, SessionInfo, TableStats
from deployer.risk import RiskGateError, gate
from deployer.risk.level import weigh
from deployer.risk.live import read_live
from deployer.risk.rules import RULES, check_revision
from tests.helpers import AlembicProject, Database, EmbeddedServer
from tests.helpers.risk import review_live

GB = 1024**3


def _review(
    project: AlembicProject,
    database: Database,
    pg_server: EmbeddedServer | None,
    **kw: object,
) -> RiskResult:
    return review_live(
        find_project(project.root, project.root.parent),
        database,
        pg_server,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def holder(database: Database) -> Iterator[Callable[[str], None]]:
    """Run SQL in a transaction left open on another session until the test ends."""
    conns: list[sa.Connection] = []

    def hold(sql: str) -> None:
        conn = database.engine.connect()
        conns.append(conn)
        conn.execute(sa.text(sql))

    yield hold
    for conn in conns:
        conn.rollback()
        conn.close()


# --------------------------------------------------------------------------- levels


def test_an_access_exclusive_rewrite_of_an_empty_table_is_low() -> None:
    level, outage = weigh(
        "column-type-rewrite",
        "AccessExclusiveLock",
        "rewrite",
        TableStats(table="public.t", rows=0, bytes=0),
        lock_timeout=5,
    )
    assert level == "low"
    assert "under 1 s" in outage


def test_a_rewrite_of_ten_gigabytes_behind_a_twenty_minute_transaction_is_high() -> None:
    stats = TableStats(
        table="public.events",
        rows=80_000_000,
        bytes=10 * GB,
        sessions=[SessionInfo(pid=4711, mode="RowExclusiveLock", transaction_seconds=1200)],
    )
    level, outage = weigh(
        "column-type-rewrite", "AccessExclusiveLock", "rewrite", stats, lock_timeout=5
    )
    assert level == "high"
    assert "about 4 min of blocked reads and writes on public.events (10.0 GB rewritten" in outage
    assert "pid 4711" in outage and "transaction open 20 min" in outage
    assert "lock_timeout 5 s" in outage


def test_a_concurrent_index_build_is_low_whatever_the_size() -> None:
    level, _ = weigh(
        "index-not-concurrent",
        "ShareUpdateExclusiveLock",
        "build",
        TableStats(table="public.t", bytes=100 * GB),
        lock_timeout=5,
    )
    assert level == "low"


def test_every_rule_has_a_lock_a_reason_and_a_safe_way_with_sql() -> None:
    for rule in RULES.values():
        assert rule.why and rule.safe, rule.id
    assert {
        "index-not-concurrent",
        "drop-index-not-concurrent",
        "reindex-not-concurrent",
        "fk-not-valid",
        "check-not-valid",
        "set-not-null",
        "column-type-rewrite",
        "volatile-default",
        "unique-without-index",
        "drop-column",
        "drop-table",
        "rename-column",
        "rename-table",
        "vacuum-full",
        "cluster",
        "concurrently-in-transaction",
    } <= set(RULES)


def test_rules_follow_begin_and_commit_in_offline_text() -> None:
    sql = "CREATE INDEX CONCURRENTLY i ON t (x)"
    assert [h.rule for h in check_revision([(f"BEGIN; {sql}; COMMIT;", None)])] == [
        "concurrently-in-transaction"
    ]


# --------------------------------------------------------------------------- live database


def test_the_live_read_takes_no_lock_on_a_table_held_access_exclusive(
    database: Database, holder: Callable[[str], None]
) -> None:
    database.execute("CREATE TABLE busy (id int PRIMARY KEY, x int)")
    database.execute("INSERT INTO busy SELECT g, g FROM generate_series(1, 5000) g")
    database.execute("ANALYZE busy")
    holder("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
    started = time.monotonic()
    with database.engine.connect() as conn:
        snapshot = read_live(conn)
        mine = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE l.pid = pg_backend_pid() AND c.relname = 'busy'"
            )
        ).scalar()
    assert time.monotonic() - started < 2  # it did not wait (lock_timeout would have failed it)
    assert mine == 0
    busy = snapshot.find("busy")
    assert busy.exists and busy.table == "public.busy"
    assert 4000 <= busy.rows <= 6000 and busy.bytes > 100_000
    assert [s.mode for s in busy.sessions] == ["AccessExclusiveLock"]


def test_a_big_table_with_an_open_transaction_on_it_is_high_with_the_outage_stated(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    holder: Callable[[str], None],
) -> None:
    database.execute("CREATE TABLE events (id int PRIMARY KEY, n int, payload text)")
    database.execute(
        "INSERT INTO events SELECT g, g, repeat('x', 200) FROM generate_series(1, 200000) g"
    )
    database.execute("ANALYZE events")
    database.execute("CREATE TABLE quiet (id int PRIMARY KEY, n int)")
    project = make_project()
    project.add("a1", 'op.alter_column("quiet", "n", type_=sa.BigInteger())')
    project.add("a2", 'op.alter_column("events", "n", type_=sa.BigInteger())')
    # An application's transaction, open and idle, that wrote to the table.
    holder("INSERT INTO events VALUES (0, 0, 'open')")
    time.sleep(0.2)
    result = _review(project, database, pg_server)
    assert result.rehearsed, result.note
    quiet = next(r for r in result.revisions if r.revision == "a1")
    assert [(f.rule, f.level) for f in quiet.findings] == [("column-type-rewrite", "low")]
    events = next(r for r in result.revisions if r.revision == "a2")
    rules = {f.rule: f for f in events.findings}
    assert set(rules) == {"column-type-rewrite", "lock-contention"}
    rewrite = rules["column-type-rewrite"]
    assert rewrite.lock == "AccessExclusiveLock" and "rewrote the table" in rewrite.measured
    assert rewrite.level in ("medium", "high")
    assert "blocked reads and writes on public.events" in rewrite.outage
    assert "RowExclusiveLock" in rewrite.outage and "queues behind it" in rewrite.outage
    assert rules["lock-contention"].source == "live"
    assert rules["lock-contention"].level in ("medium", "high")
    assert result.level in ("medium", "high")
    stats = next(t for t in result.tables if t.table == "public.events")
    assert 150_000 <= stats.rows <= 250_000 and stats.bytes > 20 * 1024**2
    out = result.outputs()
    assert {"revision", "rule", "level", "table", "message"} <= set(out[0])
    assert out[0]["level"] == result.level  # highest first


def test_a_python_revision_reading_data_is_rehearsed_and_its_sql_shown(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    database.execute("CREATE TABLE people (id int PRIMARY KEY, name text)")
    project = make_project()
    path = project.add(
        "p1",
        """
        bind = op.get_bind()
        count = bind.execute(sa.text("SELECT count(*) FROM people")).scalar()
        op.add_column("people", sa.Column("seen", sa.Integer(), server_default=str(count)))
        op.create_index("ix_people_name", "people", ["name"])
        """,
    )
    result = _review(project, database, pg_server)
    entry = result.revisions[0]
    sqls = [s.sql for s in entry.statements]
    assert any(s.startswith("SELECT count(*) FROM people") for s in sqls)
    assert any(s.startswith("ALTER TABLE people ADD COLUMN seen") for s in sqls)
    index = next(f for f in entry.findings if f.rule == "index-not-concurrent")
    assert index.path == str(path) or Path(index.path).resolve() == path.resolve()
    assert path.read_text().splitlines()[index.line - 1].strip().startswith("op.create_index")


def test_without_a_scratch_server_the_rules_read_the_offline_sql(
    make_project: Callable[..., AlembicProject], database: Database
) -> None:
    database.execute("CREATE TABLE t (id int PRIMARY KEY, x int)")
    project = make_project()
    project.add("o1", 'op.create_index("ix_t_x", "t", ["x"])')
    result = _review(project, database, None)
    assert not result.rehearsed
    assert "not rehearsed" in result.note
    assert [f.rule for f in result.findings] == ["index-not-concurrent"]


RICH_SCHEMA = """
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.positive AS int DEFAULT 1 NOT NULL CHECK (VALUE > 0);
CREATE TYPE app.pair AS (a int, b text);
CREATE TYPE app.floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE app.counter START 100 INCREMENT 5;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated := now(); RETURN NEW; END $$;
CREATE FUNCTION app.double(x int) RETURNS int LANGUAGE sql IMMUTABLE RETURN x * 2;
CREATE FUNCTION app.pct(x text) RETURNS text LANGUAGE sql AS $$ SELECT format('%s%%', x) $$;
CREATE TABLE app.users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text COLLATE "C" NOT NULL UNIQUE,
  mood app.mood DEFAULT 'ok',
  score app.positive,
  twice int GENERATED ALWAYS AS (app.double(score)) STORED,
  n int DEFAULT nextval('app.counter'),
  updated timestamptz,
  CHECK (email LIKE '%@%')
);
ALTER SEQUENCE app.counter OWNED BY app.users.n;
CREATE TABLE app.orders (
  id serial PRIMARY KEY,
  user_id bigint REFERENCES app.users (id) ON DELETE CASCADE,
  total numeric(10, 2) NOT NULL DEFAULT 0,
  during tstzrange
);
ALTER TABLE app.orders ADD CONSTRAINT total_positive CHECK (total >= 0) NOT VALID;
CREATE INDEX orders_user ON app.orders (user_id) WHERE total > 0;
CREATE INDEX users_lower ON app.users (lower(email));
CREATE TABLE app.events (id int, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
ALTER TABLE app.events ADD PRIMARY KEY (id, at);
CREATE INDEX events_payload ON app.events USING gin (payload);
CREATE TABLE app.base (id int, note text);
CREATE TABLE app.child (extra int) INHERITS (app.base);
CREATE UNLOGGED TABLE app.cache (k text PRIMARY KEY, v bytea);
CREATE VIEW app.active_users AS SELECT id, email FROM app.users WHERE mood <> 'sad';
CREATE VIEW app.user_orders AS SELECT u.email, o.total FROM app.active_users u JOIN app.orders o ON o.user_id = u.id;
CREATE MATERIALIZED VIEW app.totals AS SELECT user_id, sum(total) AS total FROM app.orders GROUP BY user_id;
CREATE UNIQUE INDEX totals_user ON app.totals (user_id);
CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email) EXECUTE FUNCTION app.touch();
CREATE TABLE app.wide (
  specific_name text, "Mixed Case" int CHECK ("Mixed Case" > 0) NO INHERIT, during tstzrange,
  EXCLUDE USING gist (during WITH &&)
);
CREATE INDEX wide_desc ON app.wide ("Mixed Case" DESC NULLS LAST, specific_name text_pattern_ops)
  INCLUDE (during) WHERE specific_name <> 'specific_catalog';
CREATE UNIQUE INDEX wide_c ON app.wide (specific_name COLLATE "C") NULLS NOT DISTINCT;
CREATE TABLE app.tags (name text) PARTITION BY LIST (lower(name));
CREATE TABLE app.tags_a PARTITION OF app.tags FOR VALUES IN ('a');
CREATE TABLE app.hashed (id int) PARTITION BY HASH (id);
CREATE TABLE app.hashed_0 PARTITION OF app.hashed FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TRIGGER wide_audit AFTER INSERT OR UPDATE OF specific_name ON app.wide
  FOR EACH STATEMENT EXECUTE FUNCTION app.touch('x', 'y''z');
CREATE TABLE public.items (id int PRIMARY KEY, name text);
"""
RELATIONS = """
    SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v') AND n.nspname IN ('app', 'public') ORDER BY 1
"""
# What a migration meets on the copy as on the live database.
SHAPE = {
    "columns": """
        SELECT table_schema, table_name, column_name, data_type, udt_name, is_nullable,
               column_default, is_identity, is_generated, generation_expression, collation_name
        FROM information_schema.columns WHERE table_schema IN ('app', 'public')""",
    "constraints": """
        SELECT n.nspname, c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid),
               k.convalidated
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('app', 'public')""",
    "indexes": "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
    "WHERE schemaname IN ('app', 'public')",
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relispartition,
               pg_get_expr(c.relpartbound, c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('app', 'public') AND c.relkind <> 'i'""",
    "types": """
        SELECT n.nspname, t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod),
               t.typnotnull, t.typdefault,
               (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum
                WHERE enumtypid = t.oid)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'app' AND t.typtype IN ('e', 'd', 'r', 'c')""",
    # (a WHEN clause names OLD and NEW: it is not read, the trigger is made without it)
    "triggers": "SELECT tgname, tgrelid::regclass::text, tgtype, tgfoid::regproc::text "
    "FROM pg_trigger WHERE NOT tgisinternal",
    "inherits": "SELECT inhrelid::regclass::text, inhparent::regclass::text FROM pg_inherits",
    "sequences": "SELECT schemaname, sequencename, start_value, increment_by FROM pg_sequences "
    "WHERE schemaname IN ('app', 'public')",
    # A view's dependencies are the live ones: what a migration drops or alters under it
    # fails (or cascades) the same way.
    "view-dependencies": """
        SELECT DISTINCT r.ev_class::regclass::text, d.refobjid::regclass::text, a.attname
        FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass
          AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid <> r.ev_class
        LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        JOIN pg_namespace n ON n.oid = (SELECT relnamespace FROM pg_class WHERE oid = r.ev_class)
        WHERE n.nspname = 'app'""",
}


def _shape(url: str) -> dict[str, set[tuple]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return {
                k: {tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in rows}
                for k, rows in ((k, conn.execute(sa.text(q)).all()) for k, q in SHAPE.items())
            }
    finally:
        engine.dispose()


def test_the_schema_copy_is_the_live_schema_as_migrations_meet_it(
    database: Database, pg_server: EmbeddedServer
) -> None:
    """Tables, columns (types, defaults, identity, generated, collation), constraints (NOT
    VALID kept), indexes, partitions, inheritance, types, sequences, triggers, and views with
    the live dependencies, copied from the catalog."""
    from deployer.risk.rehearse import copy_schema, scratch_database

    database.execute(RICH_SCHEMA)
    with scratch_database(pg_server.url()) as scratch:
        left_out = copy_schema(None, database.url, scratch)
        assert left_out == ["the WHEN of trigger users_touch on app.users"]
        live, copy = _shape(database.url), _shape(scratch)
    for what in SHAPE:
        assert copy[what] == live[what], what
    assert len(live["view-dependencies"]) >= 6 and len(live["constraints"]) >= 8


def test_the_schema_copy_takes_no_lock_on_the_target(
    make_project: Callable[..., AlembicProject], database: Database, pg_server: EmbeddedServer
) -> None:
    """Issue 18.7: every table, partition, view and materialized view of the target held in
    ACCESS EXCLUSIVE by another session (what any lock request of the review would queue
    behind), and the review still copies the whole schema, rehearses, and weighs the
    contention; meanwhile no session of the review ever holds or waits for a lock on a
    relation of the target (pg_locks, polled from a third session)."""
    database.execute(RICH_SCHEMA)
    project = make_project()
    project.add("f1", 'op.create_index("ix_items_name", "items", ["name"])')
    relations = [r[0] for r in database.rows(RELATIONS)]
    held = database.engine.connect()  # one session, so the refresh reads what it locked
    held.execute(sa.text(f"LOCK TABLE {', '.join(relations)} IN ACCESS EXCLUSIVE MODE"))
    held.execute(sa.text("REFRESH MATERIALIZED VIEW app.totals"))  # LOCK TABLE refuses it
    holder_pids = [int(held.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())]
    seen: list[tuple] = []
    stop = threading.Event()

    def watch() -> None:
        with database.engine.connect() as conn:
            while not stop.is_set():
                seen.extend(
                    conn.execute(
                        sa.text(
                            "SELECT l.pid, l.relation::regclass::text, l.mode, l.granted "
                            "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE l.database = (SELECT oid FROM pg_database "
                            "WHERE datname = current_database()) "
                            "AND n.nspname IN ('app', 'public') "
                            "AND l.pid <> pg_backend_pid() AND NOT l.pid = ANY(:holders)"
                        ),
                        {"holders": holder_pids},
                    ).all()
                )
                conn.rollback()
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = time.monotonic()
        result = _review(project, database, pg_server, lock_timeout=1.0)
        took = time.monotonic() - started
    finally:
        stop.set()
        watcher.join()
        held.rollback()
        held.close()
    assert result.rehearsed, result.note
    assert "1 object(s) of the live schema not copied" in result.note, result.note
    assert "the WHEN of trigger users_touch on app.users" in result.note
    assert seen == []
    assert took < 30
    rules = {f.rule for f in result.findings}
    assert "index-not-concurrent" in rules and "lock-contention" in rules


# --------------------------------------------------------------------------- accept, gate


def test_an_accepted_finding_is_shown_as_accepted_and_does_not_count(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    database.execute("CREATE TABLE t (id int PRIMARY KEY, x int)")
    project = make_project()
    path = project.add("c1", 'op.create_index("ix_t_x", "t", ["x"])')
    path.write_text(
        path.read_text() + '\ndb_deploy_accept = {"index-not-concurrent": "t is tiny"}\n'
    )
    result = _review(project, database, pg_server)
    (finding,) = result.findings
    assert finding.accepted == "t is tiny"
    assert result.level == "none"
    gate(result, "low")  # accepted: no gate


def test_an_unknown_rule_id_in_db_deploy_accept_is_refused(
    make_project: Callable[..., AlembicProject], database: Database
) -> None:
    project = make_project()
    path = project.add("u1", "pass")
    path.write_text(path.read_text() + '\ndb_deploy_accept = {"no-such-rule": "why"}\n')
    with pytest.raises(ConfigError, match="unknown rule id 'no-such-rule'") as exc:
        _review(project, database, None)
    assert exc.value.exit_code == 2


def test_the_gate_stops_at_the_level_asked(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    database.execute("CREATE TABLE t (id int PRIMARY KEY, x int)")
    project = make_project()
    project.add("g1", 'op.create_index("ix_t_x", "t", ["x"], postgresql_concurrently=True)')
    result = _review(project, database, pg_server)
    assert result.level == "high"  # CONCURRENTLY in a transaction fails the deploy
    gate(result, "none")
    with pytest.raises(RiskGateError, match="concurrently-in-transaction") as exc:
        gate(result, "high")
    assert exc.value.exit_code == 1 and exc.value.error_class == "risk-gate"
    assert database.tables() == {"t"}  # nothing applied to the target


def test_statements_are_redacted(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    from deployer.redact import Redactor

    project = make_project()
    project.add(
        "s1",
        """
        op.execute("CREATE TABLE secretive (id int, note text DEFAULT 'hunter2-token')")
        op.execute("ALTER TABLE secretive RENAME TO secretive2")
        """,
    )
    database.execute("CREATE TABLE keep (id int)")
    result = _review(project, database, pg_server, redact=Redactor(["hunter2-token"]))
    text = repr(result)
    assert "hunter2-token" not in text
    assert "***" in text


def test_twenty_revisions_review_in_a_few_seconds(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    project = make_project()
    for i in range(20):
        database.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY, x int)")
        project.add(f"b{i:02d}", f'op.add_column("t{i}", sa.Column("y", sa.Integer()))')
    started = time.perf_counter()
    result = _review(project, database, pg_server)
    assert len(result.revisions) == 20 and result.rehearsed
    assert time.perf_counter() - started < 15  # generous: a shared, loaded test machine


def test_an_env_py_that_connects_elsewhere_is_stopped_before_sending_anything(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database.execute("CREATE TABLE t (id int PRIMARY KEY, x int)")
    project = make_project()
    project.add("e1", 'op.create_index("ix_t_x", "t", ["x"])')
    env = project.root / "env.py"
    # An env.py that ignores the connection and URL it is given, and reads its own variable.
    env.write_text(
        env.read_text()
        .replace('connection = config.attributes.get("connection")', "connection = None")
        .replace(
            "engine = engine_from_config(config.get_section(config.config_ini_section, {}),\n"
            '                                prefix="sqlalchemy.", poolclass=pool.NullPool)',
            "import os, sqlalchemy\n"
            '    engine = sqlalchemy.create_engine(os.environ["APP_DB_URL"], poolclass=pool.NullPool)',
        )
    )
    assert "APP_DB_URL" in env.read_text()
    monkeypatch.setenv("APP_DB_URL", database.url.replace("postgresql://", "postgresql+psycopg://"))
    result = _review(project, database, pg_server)
    assert not result.rehearsed
    assert "instead of the scratch copy" in result.note
    assert [f.rule for f in result.findings] == ["index-not-concurrent"]  # the rules still ran
    assert database.rows("SELECT indexname FROM pg_indexes WHERE tablename = 't'") == [("t_pkey",)]


def test_a_harmless_alter_behind_an_open_transaction_is_a_contention_finding(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    holder: Callable[[str], None],
) -> None:
    """squawk sees nothing wrong with ADD COLUMN; the live database shows the lock queue it
    would start."""
    database.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    project = make_project()
    project.add("h1", 'op.add_column("orders", sa.Column("note", sa.Text()))')
    holder("SELECT * FROM orders")  # a reader, idle in its transaction
    result = _review(project, database, pg_server)
    (finding,) = result.findings
    assert (finding.rule, finding.source, finding.table) == (
        "lock-contention",
        "live",
        "public.orders",
    )
    assert finding.lock == "AccessExclusiveLock" and finding.level == "medium"
    assert "AccessShareLock" in finding.message and "queues behind it" in finding.outage
    assert finding.statement.startswith("ALTER TABLE orders ADD COLUMN note")


def test_a_statement_is_the_revisions_by_what_the_parser_reads_not_by_its_words(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    holder: Callable[[str], None],
) -> None:
    """The rehearsal leaves Alembic's own statements on the version table out, as PostgreSQL's
    parser reads them: a revision's ALTER whose comment names the version table is still the
    revision's, measured, and its lock weighed against the live sessions."""
    database.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    project = make_project()
    project.add(
        "w1",
        'op.execute("-- unlike alembic_version, orders is ours\\n'
        'ALTER TABLE orders ADD COLUMN note text")',
    )
    holder("SELECT * FROM orders")
    result = _review(project, database, pg_server)
    (entry,) = result.revisions
    (statement,) = entry.statements
    assert statement.sql.endswith("orders is ours ALTER TABLE orders ADD COLUMN note text")
    assert [lock.mode for lock in statement.locks] == ["AccessExclusiveLock"]
    (finding,) = result.findings
    assert (finding.rule, finding.table) == ("lock-contention", "public.orders")


def test_a_required_column_on_a_table_with_rows_is_high(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
) -> None:
    """The scratch copy is empty, so the rehearsal passes; the live row count says the deploy
    would fail."""
    database.execute("CREATE TABLE users (id int PRIMARY KEY)")
    database.execute("INSERT INTO users SELECT generate_series(1, 1000)")
    database.execute("ANALYZE users")
    project = make_project()
    project.add("n1", 'op.add_column("users", sa.Column("email", sa.Text(), nullable=False))')
    result = _review(project, database, pg_server)
    (finding,) = result.findings
    assert (finding.rule, finding.level) == ("not-null-without-default", "high")
    assert "the revision fails" in finding.outage
