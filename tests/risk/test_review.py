"""The risk review against a live database: sizes and open transactions weigh the findings, the
live read takes no lock, accepted findings and the gate, the fallback without a rehearsal,
redaction, and the level function's two ends (an empty table, a 10 GB table behind a
20-minute transaction)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer.alembic_project import find_project
from deployer.errors import ConfigError
from deployer.results.risk import RiskResult, SessionInfo, TableStats
from deployer.risk import RiskGateError, gate, review
from deployer.risk.level import weigh
from deployer.risk.live import read_live
from deployer.risk.rules import RULES, check_revision
from tests.helpers import AlembicProject, Database, EmbeddedServer

GB = 1024**3


def _review(
    project: AlembicProject,
    database: Database,
    pg_server: EmbeddedServer | None,
    **kw: object,
) -> RiskResult:
    deployer_project = find_project(project.root, project.root.parent)
    with database.engine.connect() as live:
        return review(
            deployer_project,
            heads=kw.pop("heads", []),  # type: ignore[arg-type]
            live=live,
            target_url=database.url,
            scratch_server_url=pg_server.url() if pg_server else "",
            lock_timeout=kw.pop("lock_timeout", 5.0),  # type: ignore[arg-type]
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


def test_a_schema_copy_that_cannot_lock_falls_back_and_says_so(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    holder: Callable[[str], None],
) -> None:
    database.execute("CREATE TABLE t (id int PRIMARY KEY, x int)")
    project = make_project()
    project.add("f1", 'op.create_index("ix_t_x", "t", ["x"])')
    holder("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    result = _review(project, database, pg_server)
    assert not result.rehearsed
    assert "pg_dump" in result.note
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
