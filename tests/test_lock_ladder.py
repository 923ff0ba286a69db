"""The lock ladder (issue 19): migrations take their locks with short, growing lock_timeouts,
retried after jittered waits within a budget, so that application queries never queue behind a
waiting ALTER for longer than one rung; everything else the deploy does never waits for a lock
the application holds. Each behaviour on the real server, with a blocker held open; no timing
is asserted (the latency goal lives in the traffic benchmark)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from deployer import db
from tests.helpers import (
    AlembicProject,
    Database,
    GitHubRunner,
    Run,
    app_url_env,
    write_alembic_project,
)
from tests.helpers.pgcluster import PLAIN_ROLE, SPECIAL_ROLE, ClusterDatabase
from tests.helpers.runner import wait_for
from tests.helpers.scenarios import report

TABLE_A = (
    "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))\n"
    "op.execute('INSERT INTO a SELECT generate_series(1, 10)')"
)
TABLE_B = "op.create_table('b', sa.Column('id', sa.Integer))"
# A revision that shows, while it waits for its lock, the lock_timeout its session has: in
# pg_stat_activity's application_name (set in the transaction: undone with the attempt).
ALTER_A = """
op.execute("SELECT set_config('application_name', 'ladder ' || current_setting('lock_timeout'), false)")
op.add_column('a', sa.Column('x', sa.Integer))
"""
WAITING = """
SELECT a.application_name, l.waitstart FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
WHERE a.datname = current_database() AND NOT l.granted
"""


def alone(github: GitHubRunner, statement: str = "") -> list[dict]:
    """The lock attempts of the statements retried alone (scope `statement …`), those of the
    statement beginning with `statement`."""
    tries = report(github)["migrate"]["lock_attempts"]
    return [t for t in tries if t["scope"].startswith(f"statement {statement}")]


def in_autocommit_block(statement: str) -> str:
    """A revision's upgrade running `statement` outside a transaction (Alembic's block)."""
    return f"with op.get_context().autocommit_block():\n    op.execute({statement!r})"


@pytest.fixture
def blocker(database: Database) -> Iterator[sa.Connection]:
    """The application's long transaction (a session of its own, in AUTOCOMMIT so that the
    test says where its transaction begins and ends)."""
    engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("SET application_name = 'the-app'"))
        yield conn
        conn.execute(sa.text("ROLLBACK"))


def hold(conn: sa.Connection, *statements: str) -> int:
    """Open a transaction on `conn` running `statements`; returns its pid."""
    conn.execute(sa.text("BEGIN"))
    for statement in statements:
        conn.execute(sa.text(statement))
    return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


class Watcher:
    """Polls, on a session of its own, what waits for a lock in the test's database: the
    application names of waiting sessions (the rungs an ALTER_A revision shows)."""

    def __init__(self, database: Database) -> None:
        self.engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.seen: list[str] = []
        self.waits: set[object] = set()  # one per wait (its start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.wait(0.01):
                for name, start in conn.execute(sa.text(WAITING)):
                    self.waits.add(start)
                    if not self.seen or self.seen[-1] != name:
                        self.seen.append(name)

    def rungs(self) -> list[str]:
        return [n.removeprefix("ladder ") for n in self.seen if n.startswith("ladder ")]

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def no_lock_waits(database: Database) -> bool:
    return not database.scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = current_database() AND NOT l.granted"
    )


def gave_up_naming(run: Any, github: GitHubRunner, pid: int) -> list[dict]:
    """Assert the deploy gave up on its lock attempts, every one timed out, naming session
    `pid` as the blocker (error, last attempt); returns the attempts."""
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["error-class"] == "lock-timeout"
    assert out["failed-step"] == "migrate"
    assert f"blocked by pid {pid}" in out["error"], out["error"]
    assert "gave up after" in out["error"] and "lock-wait-budget" in out["error"]
    tries = report(github)["migrate"]["lock_attempts"]
    assert len(tries) >= 2 and all(t["timed_out"] for t in tries)
    assert tries[-1]["blocker_pid"] == pid
    return tries


@dataclass
class Blocked:
    """A project whose next deploy waits for the blocker's open transaction (see `blocked`)."""

    project: AlembicProject
    database: Database
    deploy: Callable[..., Any]
    blocker: sa.Connection
    pid: int  # the blocker's

    def deploy_until(
        self, released: Callable[[Watcher], bool], what: str, **inputs: str
    ) -> tuple[Any, Watcher]:
        """Deploy with `inputs` while a Watcher watches the lock waits; the blocker's
        transaction ends (ROLLBACK) once `released(watcher)` holds. Returns the run and the
        watcher."""

        def release() -> None:
            wait_for(lambda: released(watcher), what=what, timeout=120)
            self.blocker.execute(sa.text("ROLLBACK"))

        with Watcher(self.database) as watcher:
            thread = threading.Thread(target=release)
            thread.start()
            run = self.deploy(self.project, **inputs)
            thread.join()
        return run, watcher


def blocked(
    project: AlembicProject,
    database: Database,
    deploy: Callable[..., Any],
    blocker: sa.Connection,
    *revisions: tuple[str, str],
    holding: tuple[str, ...] = ("SELECT count(*) FROM a",),
) -> Blocked:
    """0001_a (table `a`, 10 rows) deployed, then `revisions` (name, upgrade) added but not
    deployed, and the blocker's transaction opened with `holding` (by default a read of `a`:
    ACCESS SHARE, as any query holds)."""
    project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    for name, upgrade in revisions:
        project.add(name, upgrade)
    return Blocked(project, database, deploy, blocker, hold(blocker, *holding))


@contextmanager
def each_statement(
    database: Database, blocker: sa.Connection, retry: db.LockRetry, *, autocommit: bool = True
) -> Iterator[sa.Connection]:
    """Table `a` read by the blocker's open transaction; a connection (AUTOCOMMIT unless told)
    with lock_timeout 100 ms under `db.lock_ladder(retry, each_statement=True)`, its first
    attempt begun."""
    database.execute("CREATE TABLE a (id int)")
    hold(blocker, "SELECT count(*) FROM a")
    engine = database.engine
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn, db.lock_ladder(retry, each_statement=True):
        conn.execute(sa.text("SET lock_timeout = 100"))
        retry.begin()
        yield conn


# --------------------------------------------------------------------------- the ladder itself


def test_rungs_climb_capped_by_lock_timeout_and_the_last_repeats() -> None:
    ladder = db.LockLadder(rungs=(0.1, 0.2, 0.4), cap=0.3)
    assert [ladder.timeout(n) for n in range(1, 7)] == [0.1, 0.2, 0.3, 0.3, 0.3, 0.3]
    assert db.LockLadder(rungs=(0.1,), cap=None).timeout(5) == 0.1
    assert ladder.max_attempts is None  # the budget alone ends them
    assert db.LockLadder(rungs=(0.1, 0.2), repeats=3).max_attempts == 5  # lock-retries 3


def test_waits_are_jittered_short_and_capped() -> None:
    ladder = db.LockLadder(first_wait=0.25, max_wait=2.0)
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (9, 2.0)]:
        waits = {ladder.wait(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(waits) > 1  # jittered


def test_the_budget_and_lock_retries_end_the_attempts() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    def attempts(ladder: db.LockLadder) -> list[float]:
        retry = db.LockRetry(ladder, sleep=sleep, clock=lambda: now[0])
        while True:
            retry.begin()
            now[0] += retry.current  # the attempt waits its whole rung
            retry.end(timed_out=True, where="0002")
            if retry.wait() is None:
                return [a.lock_timeout for a in retry.attempts]

    by_budget = attempts(db.LockLadder(rungs=(0.1, 0.2), budget=10.0))
    assert by_budget[:3] == [0.1, 0.2, 0.2] and len(by_budget) > 3
    assert now[0] < 10.0 + 0.2  # no attempt starts after the budget
    now[0] = 0.0
    assert attempts(db.LockLadder(rungs=(0.1, 0.2), budget=600.0, repeats=2)) == [
        0.1,
        0.2,
        0.2,
        0.2,
    ]
    assert max(slept) <= 2.0


# --------------------------------------------------------------------------- against a blocker


def test_each_attempt_has_its_rung_and_the_deploy_goes_through_once_the_blocker_ends(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    held = blocked(project, database, deploy, blocker, ("0002_alter", ALTER_A))
    pid = held.pid
    run, watcher = held.deploy_until(
        lambda w: len(set(w.rungs())) >= 3,
        "three rungs",
        **{"lock-timeout-ladder": "200ms, 400ms, 600ms"},
    )
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_alter"}
    # Each attempt's lock_timeout, seen from outside while it waited on the blocker.
    assert watcher.rungs()[:3] == ["200ms", "400ms", "600ms"]
    tries = report(github)["migrate"]["lock_attempts"]
    assert [t["lock_timeout"] for t in tries[:3]] == [0.2, 0.4, 0.6]
    assert all(t["timed_out"] for t in tries[:-1]) and not tries[-1]["timed_out"]
    assert {t["where"] for t in tries[:-1]} == {"0002_alter"}
    assert all(t["wait"] > 0 for t in tries[:-1])
    assert pid in {t["blocker_pid"] for t in tries}
    named = next(t for t in tries if t["blocker_pid"] == pid)
    assert named["blocker_application"] == "the-app" and named["blocker_query_age"] > 0
    assert "hit lock_timeout" in github.summary()
    assert "Lock attempts" in github.summary()
    assert [a["revision"] for a in json.loads(github.outputs()["applied"])] == ["0002_alter"]


def test_spent_budget_fails_cleanly_naming_the_blocker_and_leaves_no_query_queued(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    pid = blocked(project, database, deploy, blocker, ("0002_alter", ALTER_A)).pid
    # The application keeps querying the hot table meanwhile (no lock_timeout of its own):
    # its queries queue behind a waiting ALTER for at most one rung, then go on.
    stop, done, errors = threading.Event(), [0], []

    def application() -> None:
        with database.engine.connect() as conn:
            conn.execute(sa.text("SET application_name = 'app-reader'"))
            while not stop.is_set():
                try:
                    conn.execute(sa.text("SELECT count(*) FROM a")).scalar()
                    conn.commit()
                    done[0] += 1
                except sa.exc.DBAPIError as exc:
                    errors.append(str(exc))
                    return

    app = threading.Thread(target=application, daemon=True)
    app.start()
    try:
        run = deploy(
            project, **{"lock-timeout-ladder": "100ms, 200ms", "lock-wait-budget": "1500ms"}
        )
        # Given up: nothing waits for a lock any more (no query left queued behind us) …
        wait_for(lambda: no_lock_waits(database), what="no lock waits", timeout=5)
        before = done[0]
        wait_for(lambda: done[0] > before + 5, what="the application's queries", timeout=30)
    finally:
        stop.set()
        app.join(timeout=30)
    assert errors == []
    tries = gave_up_naming(run, github, pid)
    assert [t["lock_timeout"] for t in tries[:2]] == [0.1, 0.2]
    assert database.version() == {"0001_a"}
    assert "x" not in {c["name"] for c in sa.inspect(database.engine).get_columns("a")}
    assert f"pid {pid}" in run.stdout  # the terminal's attempt lines


def test_a_blocker_of_a_statement_sent_on_the_driver_s_own_cursor_is_named(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    """A revision that runs its ALTER on the driver's cursor, where SQLAlchemy sees nothing:
    the watch asks the server what its sessions wait for all the same."""
    raw_alter = (
        "cursor = op.get_bind().connection.driver_connection.cursor()\n"
        "cursor.execute('ALTER TABLE a ADD COLUMN x integer')"
    )
    pid = blocked(project, database, deploy, blocker, ("0002_raw", raw_alter)).pid
    run = deploy(project, **{"lock-timeout-ladder": "200ms, 300ms", "lock-wait-budget": "1500ms"})
    gave_up_naming(run, github, pid)
    assert database.version() == {"0001_a"}


def test_a_blocker_is_named_when_the_deploy_role_cannot_see_what_env_py_waits_for(
    github: GitHubRunner, run_cli: Callable[..., Run], cluster_db: ClusterDatabase
) -> None:
    """env.py migrates as app_plain, a member of the deploy role app_special, which may not see
    app_plain's waits in pg_stat_activity (NULL there): the watch names the blocker all the
    same."""
    project = write_alembic_project(github.workspace / "migrations")
    (project.root / "env.py").write_text(
        app_url_env(configure_kw=", transaction_per_migration=True")
    )
    # What the deploy role reads: the version table (its own, app_plain writes it as a member)
    # and table `a` (app_plain's, read by the smoke).
    with psycopg.connect(cluster_db.url()) as owner:
        owner.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    project.add("0001_a", f"{TABLE_A}\nop.execute('GRANT SELECT ON a TO {SPECIAL_ROLE}')")

    def deploy(**inputs: str) -> Run:
        github.output_file.write_text("")
        env = github.with_inputs(
            **{"database-url": cluster_db.url(), "migrations-path": "migrations", **inputs}
        )
        env["MYAPP_DATABASE_URL"] = cluster_db.url(role=PLAIN_ROLE, scheme="postgresql+psycopg")
        return run_cli(env=env, cwd=github.workspace)

    first = deploy()
    assert first.returncode == 0, first.output
    project.add("0002_alter", "op.add_column('a', sa.Column('x', sa.Integer))")
    with cluster_db.cluster.connect(cluster_db.name) as blocker:  # the superuser's transaction
        blocker.execute("SELECT count(*) FROM a")
        pid = blocker.info.backend_pid
        run = deploy(**{"lock-timeout-ladder": "200ms, 300ms", "lock-wait-budget": "1500ms"})
        blocker.rollback()
    gave_up_naming(run, github, pid)


def test_an_env_py_with_its_own_engine_gets_each_rung_too(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    """An env.py that builds its engine from sqlalchemy.url: each attempt's rung reaches its
    sessions through their settings (PGOPTIONS), and a timed-out attempt is retried there."""
    env_py = project.root / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            'connection = config.attributes.get("connection")', "connection = None"
        )
    )
    held = blocked(project, database, deploy, blocker, ("0002_alter", ALTER_A))
    run, watcher = held.deploy_until(
        lambda w: len(set(w.rungs())) >= 2, "two rungs", **{"lock-timeout-ladder": "250ms, 500ms"}
    )
    assert run.returncode == 0, run.output
    assert watcher.rungs()[:2] == ["250ms", "500ms"]
    tries = report(github)["migrate"]["lock_attempts"]
    assert [t["lock_timeout"] for t in tries[:2]] == [0.25, 0.5]
    assert held.pid in {t["blocker_pid"] for t in tries}  # env.py's sessions are watched too
    assert database.version() == {"0002_alter"}


@pytest.mark.parametrize("per_migration", [True, False], ids=["per-revision", "whole-upgrade"])
def test_a_retried_upgrade_runs_each_revision_once(
    make_project: Callable[..., AlembicProject],
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
    per_migration: bool,
) -> None:
    """Per-revision transactions: the committed revision is not run again. One transaction
    for the whole upgrade: it is rolled back and retried whole."""
    project = make_project(per_migration=per_migration)
    held = blocked(project, database, deploy, blocker, ("0002_b", TABLE_B), ("0003_alter", ALTER_A))
    run, _ = held.deploy_until(
        lambda w: len(w.rungs()) >= 2,
        "a retried attempt",
        **{"lock-timeout-ladder": "150ms, 300ms"},
    )
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_alter"} and "b" in database.tables()
    applied = [a["revision"] for a in json.loads(github.outputs()["applied"])]
    assert applied == ["0002_b", "0003_alter"]
    tries = report(github)["migrate"]["lock_attempts"]
    assert {t["where"] for t in tries if t["timed_out"]} == {"0003_alter"}
    history = [
        r[0]
        for r in database.rows(
            "SELECT revision FROM db_deploy.db_deploy_history WHERE kind = 'upgrade' ORDER BY id"
        )
    ]
    assert history == ["0001_a", "0002_b", "0003_alter"]


# --------------------------------------------------------------------------- outside a transaction

INDEX_A_ID = "op.create_index('ix_a_id', 'a', ['id'])"
PARTITIONED = (
    "op.execute('CREATE TABLE p (id int) PARTITION BY RANGE (id)')\n"
    "op.execute('CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100)')\n"
    "op.execute('CREATE INDEX ix_p_id ON p (id)')"
)
TEXT_COLUMN = "op.add_column('a', sa.Column('note', sa.Text()))"  # a TOAST table for a
SCHEMA_S = (
    "op.execute('CREATE SCHEMA s')\n"
    "op.execute('CREATE TABLE s.c (id int)')\n"
    "op.execute('CREATE INDEX ix_c_id ON s.c (id)')"
)

# spelling: (what 0001 also creates, the statement, the index it builds, what a retry drops in
# public; for a whole table with a TOAST table, its copy of the TOAST index too)
CONCURRENT_BUILDS = {
    "plain": ("", "CREATE INDEX CONCURRENTLY ix_a_id ON a (id)", "ix_a_id", ["public.ix_a_id"]),
    # what the parser reads, not the text's first word: a comment before it, other spellings
    "commented": (
        "",
        "-- the lookups need it\n/* built online */ create unique index concurrently "
        "if not exists ix_a_id on public . a using btree (id)",
        "ix_a_id",
        ["public.ix_a_id"],
    ),
    "quoted": (
        "",
        'CREATE INDEX CONCURRENTLY "Ix A" ON "public"."a" (id)',
        "Ix A",
        ['public."Ix A"'],
    ),
    # the server names it (a_id_idx each time: the leftover is dropped before the retry); the
    # invalid index the table had before is not the statement's
    "unnamed": ("", "CREATE INDEX CONCURRENTLY ON a (id)", "a_id_idx", ["public.a_id_idx"]),
    # a name with % (which SQLAlchemy escapes as %% for the driver): as the server reads it
    "percent": (
        "op.execute('CREATE TABLE \"a%b\" (id int)')",
        'CREATE INDEX CONCURRENTLY ON "a%b" (id)',
        "a%b_id_idx",
        ['public."a%b_id_idx"'],
    ),
    # REINDEX CONCURRENTLY leaves its copies, named …_ccnew
    "reindex-index": (
        INDEX_A_ID,
        "REINDEX INDEX CONCURRENTLY ix_a_id",
        "ix_a_id",
        ["public.ix_a_id_ccnew"],
    ),
    "reindex-table": (
        f"{INDEX_A_ID}\n{TEXT_COLUMN}",
        "reindex (verbose, concurrently false) table concurrently public.a",  # the last counts
        "ix_a_id",
        ["public.a_pkey_ccnew1", "public.ix_a_id_ccnew"],  # the bystander took …_ccnew
    ),
    # the copies are the partitions' indexes'
    "reindex-partitioned": (
        PARTITIONED,
        "REINDEX TABLE CONCURRENTLY p",
        "ix_p_id",
        ["public.p1_id_idx_ccnew"],
    ),
    # a schema's tables
    "reindex-schema": (SCHEMA_S, "REINDEX SCHEMA CONCURRENTLY s", "ix_c_id", ["s.ix_c_id_ccnew"]),
    # the whole database, a table at a time (which comes first is the server's choice): the
    # copies of that table's indexes
    "reindex-database": ("", "REINDEX DATABASE CONCURRENTLY", "a_pkey_ccnew", None),
}
# An invalid index the statement did not leave (a build that failed before), on table a, named
# as a REINDEX copy of a's primary key would be: kept, whatever its name.
BYSTANDER = "a_pkey_ccnew"


@pytest.mark.parametrize("spelling", list(CONCURRENT_BUILDS))
def test_a_failed_concurrent_index_build_is_dropped_before_its_retry(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
    spelling: str,
) -> None:
    """CREATE INDEX CONCURRENTLY (and REINDEX … CONCURRENTLY) waits for every older snapshot:
    an application's long REPEATABLE READ transaction makes it fail on lock_timeout
    (lock-timeout, the cap: its lock does not queue the application's queries), leaving an
    invalid index (REINDEX: invalid copies, on the partitions of a partitioned table, and of
    the TOAST table's index). The statement is retried alone; what it left is dropped before
    each retry and named; when the budget is spent, nothing it left is left behind, and an
    invalid index it did not leave is kept. Once the blocker is gone the index builds. The
    statement is read by PostgreSQL's parser: a leading comment, lower case, a quoted name, all
    the same."""
    setup, statement, name, dropped = CONCURRENT_BUILDS[spelling]
    project.add(
        "0001_a",
        "\n".join([TABLE_A, "op.create_table('other', sa.Column('id', sa.Integer))", setup]),
    )
    assert deploy(project).returncode == 0
    autocommit = database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with autocommit as conn, pytest.raises(sa.exc.IntegrityError):  # duplicates: left invalid
        conn.execute(sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {BYSTANDER} ON a ((id % 2))"))
    project.add(
        "0002_index",
        in_autocommit_block(statement),
    )
    hold(blocker, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT * FROM other")
    run = deploy(project, **{"lock-timeout": "300ms", "lock-wait-budget": "2s"})
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "lock-timeout"
    tries = alone(github)
    assert len(tries) >= 2 and all(t["timed_out"] for t in tries)
    assert {t["lock_timeout"] for t in tries} == {0.3}  # the cap, not the ladder's rungs
    for t in tries[1:]:
        names = t["dropped_index"].split(", ")
        toast = [d for d in names if d.startswith("pg_toast.")]
        if dropped is None:  # copies of the indexes of whichever table came first
            assert names and all(d.endswith("_ccnew") for d in names), names
            continue
        assert [d for d in names if not d.startswith("pg_toast.")] == dropped
        assert len(toast) == (TEXT_COLUMN in setup), names
    invalid = "SELECT relname FROM pg_index JOIN pg_class ON oid = indexrelid WHERE NOT indisvalid"
    assert [r[0] for r in database.rows(invalid)] == [BYSTANDER]
    assert (dropped or [tries[-1]["dropped_index"].split(", ")[0]])[0] in github.summary()
    blocker.execute(sa.text("ROLLBACK"))
    assert deploy(project).returncode == 0
    assert [r[0] for r in database.rows(invalid)] == [BYSTANDER]
    built = "SELECT count(*) FROM pg_indexes WHERE indexname = :n"
    assert database.scalar(built, n=name) == 1


def test_a_concurrent_detach_left_pending_is_finalized(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    """`DETACH PARTITION … CONCURRENTLY` commits a first transaction (the partition marked
    pending detach), then waits for every query that may see the partition: behind an
    application's open read of the table it hits lock_timeout, and the statement itself can
    never run again ("already pending detach"). Each retry, in this run or the next, completes
    it with `… FINALIZE` instead, which waits alike."""
    project.add("0001_a", "\n".join([TABLE_A, PARTITIONED]))
    assert deploy(project).returncode == 0
    project.add(
        "0002_detach", in_autocommit_block("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY")
    )
    pending = "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'p1'::regclass"
    hold(blocker, "SELECT count(*) FROM p")
    run = deploy(project, **{"lock-timeout": "300ms", "lock-wait-budget": "1500ms"})
    assert run.returncode == 1, run.output
    assert github.outputs()["error-class"] == "lock-timeout", github.outputs()["error"]
    tries = alone(github, "ALTER TABLE p DETACH")
    assert len(tries) >= 2 and all(t["timed_out"] for t in tries)
    assert database.rows(pending) == [(True,)]  # left for the next run to finish
    blocker.execute(sa.text("ROLLBACK"))
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.rows(pending) == []  # detached
    assert database.version() == {"0002_detach"}


def test_env_connection_autocommit_retries_each_statement_alone(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    """`env-connection: autocommit`: each statement is its own transaction, so the one that
    hits lock_timeout is retried alone, climbing the rungs (the revision's earlier statements
    committed and are not run again)."""
    before_then_alter = (
        "op.create_table('before', sa.Column('id', sa.Integer))\n"
        "op.add_column('a', sa.Column('x', sa.Integer))"
    )
    held = blocked(project, database, deploy, blocker, ("0002_alter", before_then_alter))
    run, _ = held.deploy_until(
        lambda w: len(w.waits) >= 2,
        "two lock waits",
        **{"env-connection": "autocommit", "lock-timeout-ladder": "200ms, 400ms, 600ms"},
    )
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_alter"} and "before" in database.tables()
    tries = report(github)["migrate"]["lock_attempts"]
    statement = alone(github, "ALTER TABLE a ADD COLUMN x")
    assert len(statement) >= 2
    assert [t["lock_timeout"] for t in statement[:2]] == [0.2, 0.4]
    assert all(t["timed_out"] for t in statement[:-1]) and not statement[-1]["timed_out"]
    assert held.pid in {t["blocker_pid"] for t in statement}
    # The statement was retried, not the revision: one attempt of the upgrade, which went through.
    assert [t["timed_out"] for t in tries if t["scope"] == "upgrade"] == [False]


def test_a_statement_outside_a_transaction_climbs_the_ladder_alone(
    database: Database, blocker: sa.Connection
) -> None:
    """`env-connection: autocommit`: each statement is its own transaction, so a statement
    that hits lock_timeout is retried alone (SQLAlchemy's `do_execute` event, on the same
    cursor), at the next rung; the first try pays no extra round trip."""

    def release(seconds: float) -> None:  # the ladder's wait: the blocker ends during the third
        if len(retry.attempts) == 2:
            blocker.execute(sa.text("ROLLBACK"))

    retry = db.LockRetry(db.LockLadder(rungs=(0.1, 0.2, 0.3), budget=60.0), sleep=release)
    with each_statement(database, blocker, retry) as conn:
        conn.execute(sa.text("ALTER TABLE a ADD COLUMN y int"))
        shown = conn.execute(sa.text("SHOW lock_timeout")).scalar()
    assert [(t.lock_timeout, t.timed_out) for t in retry.attempts] == [
        (0.1, True),
        (0.2, True),
        (0.3, False),
    ]
    assert shown == "300ms"
    assert all(t.scope == "statement ALTER TABLE a ADD COLUMN y int" for t in retry.attempts)
    assert "y" in {c["name"] for c in sa.inspect(database.engine).get_columns("a")}


def test_statements_in_a_transaction_are_left_to_the_attempt(
    database: Database, blocker: sa.Connection
) -> None:
    """Inside a transaction a lock timeout is not retried statement by statement (the
    transaction is rolled back and the attempt retried whole): the error goes through."""
    retry = db.LockRetry(db.LockLadder(rungs=(0.1,), budget=60.0))
    with each_statement(database, blocker, retry, autocommit=False) as conn:
        with pytest.raises(sa.exc.OperationalError) as caught:
            conn.execute(sa.text("ALTER TABLE a ADD COLUMN y int"))
        assert db.is_lock_timeout(caught.value)
    assert retry.attempts == []


# --------------------------------------------------------------------------- nothing else queues


def test_nothing_but_the_migrations_waits_for_the_applications_locks(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy: Callable[..., object],
    blocker: sa.Connection,
) -> None:
    """The deploy lock, the history writes, the smoke's reads, the security checks and the
    risk review's live reads, with the application holding the strongest locks its queries
    take (ROW EXCLUSIVE, rows FOR UPDATE, an advisory lock) on every kind of object they touch:
    the application's table, the version table, the history table. The deploy of a revision
    that touches none of them completes while that transaction is still open, so none of them
    asked for a mode conflicting with the application's (and as conflicts are symmetric, no
    application query can queue behind a lock they hold); nothing was seen waiting."""
    blocked(
        project,
        database,
        deploy,
        blocker,
        ("0002_b", TABLE_B),
        holding=(
            "LOCK TABLE a IN ROW EXCLUSIVE MODE",
            "SELECT * FROM a FOR UPDATE",
            "LOCK TABLE alembic_version IN ROW EXCLUSIVE MODE",
            "LOCK TABLE db_deploy.db_deploy_history IN ROW EXCLUSIVE MODE",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_xact_lock(1, 2)",
        ),
    )
    with Watcher(database) as watcher:
        run = deploy(
            project,
            **{
                "smoke-expect": "a>=10",
                "security-preflight": "true",
                "lock-timeout": "60s",
                "lock-wait-budget": "60s",
            },
        )
    assert run.returncode == 0, run.output
    assert watcher.seen == []
    assert database.version() == {"0002_b"}
    assert "b" in database.tables()
    # The application's transaction is still there, its locks held all along.
    assert database.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'the-app' "
        "AND state = 'idle in transaction'"
    )


def test_the_attempts_in_the_summary_the_terminal_and_the_json() -> None:
    from deployer.render import markdown, terminal
    from deployer.results import MigrateResult, RunResult, Telemetry
    from deployer.results.run import LockAttempt

    tries = [
        LockAttempt(1, 0.1, True, where="0002_alter", blocker_pid=123, wait=0.2),
        LockAttempt(2, 0.3, True, scope="statement CREATE INDEX …", dropped_index="public.ix"),
        LockAttempt(3, 0.2, False),
    ]
    tries[0].blocker_application, tries[0].blocker_query_age = "the-app", 12.5
    m = MigrateResult(applied=[], lock_attempts=tries)
    summary = "\n".join(markdown.migrations(m, rollback=False))
    assert "Lock attempts: 3, 2 hit lock_timeout" in summary
    assert (
        "| 1 | 0002_alter | 100 ms | ⏱️ lock_timeout | 123 | the-app | 12.5 s | 0.20 s |" in summary
    )
    assert "`public.ix`" in summary
    lines = terminal.lock_attempts(m)
    assert "blocked by pid 123 (the-app, 12.5s)" in lines[1]
    assert "dropped invalid index public.ix" in lines[2]
    run = RunResult(command="deploy", telemetry=Telemetry.from_env())
    run.migrate = m
    first = run.to_dict()["migrate"]["lock_attempts"][0]
    assert first == {
        "attempt": 1,
        "lock_timeout": 0.1,
        "timed_out": True,
        "scope": "upgrade",
        "where": "0002_alter",
        "seconds": 0.0,
        "blocker_pid": 123,
        "blocker_application": "the-app",
        "blocker_query_age": 12.5,
        "wait": 0.2,
        "dropped_index": "",
    }
    assert markdown.lock_attempts(MigrateResult(lock_attempts=[LockAttempt(1, 0.1)])) == []


def test_a_transaction_block_opened_by_hand_is_left_to_the_attempt(
    database: Database, blocker: sa.Connection
) -> None:
    """On an AUTOCOMMIT connection, a `BEGIN` sent by hand opens a transaction block: its
    statements are not retried alone (the block is aborted by the error)."""
    retry = db.LockRetry(db.LockLadder(rungs=(0.1,), budget=60.0))
    with each_statement(database, blocker, retry) as conn:
        conn.execute(sa.text("BEGIN"))
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("ALTER TABLE a ADD COLUMN y int"))
        conn.execute(sa.text("ROLLBACK"))
    assert retry.attempts == []
