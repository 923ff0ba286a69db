"""Seed and smoke steps through the CLI, on a real server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import AlembicProject, Database, GitHubRunner, Run

SCHEMA = """
op.create_table('kinds', sa.Column('code', sa.Text, primary_key=True), sa.Column('label', sa.Text))
op.create_table('items', sa.Column('id', sa.Integer, primary_key=True),
                sa.Column('kind', sa.Text, sa.ForeignKey('kinds.code')))
"""

SEED_PY = """
import sqlalchemy as sa

def seed(connection):
    connection.execute(sa.text(
        "INSERT INTO kinds (code, label) VALUES ('a', 'Alpha'), ('b', 'Beta') "
        "ON CONFLICT (code) DO UPDATE SET label = excluded.label "
        "WHERE kinds.label IS DISTINCT FROM excluded.label"))
    connection.execute(sa.text(
        "INSERT INTO items (id, kind) VALUES (1, 'a'), (2, 'b'), (3, 'b') ON CONFLICT DO NOTHING"))
"""


@pytest.fixture
def seeded_project(project: AlembicProject) -> AlembicProject:
    project.add("0001_schema", SCHEMA, "op.drop_table('items')\nop.drop_table('kinds')")
    (project.root / "seed.py").write_text(SEED_PY)
    return project


def test_seed_runs_after_migrations_with_row_deltas(
    seeded_project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    run = deploy(seeded_project, **{"run-seed": "true"})
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3
    out = github.outputs()
    assert out["seeded"] == "true"
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    deltas = {t["table"]: t for t in report["seed"]["tables"]}
    assert deltas["public.kinds"]["inserted"] == 2
    assert deltas["public.items"]["inserted"] == 3
    assert report["seed"]["totals"] == {"inserted": 5, "updated": 0, "deleted": 0}
    assert "5 inserted" in github.summary()


def test_second_seed_changes_nothing(
    seeded_project: AlembicProject, github: GitHubRunner, deploy
) -> None:
    assert deploy(seeded_project, **{"run-seed": "true"}).returncode == 0
    run = deploy(seeded_project, **{"run-seed": "true"})
    assert run.returncode == 0, run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["seed"]["totals"] == {"inserted": 0, "updated": 0, "deleted": 0}
    assert report["status"] == "noop"  # nothing was pending


def test_seed_not_run_unless_asked(
    seeded_project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    assert deploy(seeded_project).returncode == 0
    assert database.scalar("SELECT count(*) FROM items") == 0
    assert github.outputs()["seeded"] == "false"


def test_sql_seed(seeded_project: AlembicProject, database: Database, deploy) -> None:
    sql = seeded_project.root / "seed.sql"
    sql.write_text(
        "INSERT INTO kinds VALUES ('z', '100% zed');\nINSERT INTO items VALUES (9, 'z');\n"
    )
    run = deploy(seeded_project, **{"run-seed": "true", "seed-path": str(sql)})
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT label FROM kinds") == "100% zed"


def test_seed_that_raises_is_rolled_back(
    seeded_project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    (seeded_project.root / "seed.py").write_text(
        SEED_PY + "\n    raise RuntimeError('catalog source unavailable')\n"
    )
    run = deploy(seeded_project, **{"run-seed": "true"})
    assert run.returncode == 1
    out = github.outputs()
    assert out["failed-step"] == "seed"
    assert out["seeded"] == "false"
    assert "catalog source unavailable" in out["error"]
    assert database.version() == {"0001_schema"}  # the migrations stay: a known revision
    assert database.scalar("SELECT count(*) FROM kinds") == 0  # the seed's rows are gone
    assert "Traceback" not in run.output


def test_missing_seed_file_changes_nothing(
    seeded_project: AlembicProject, database: Database, deploy
) -> None:
    run = deploy(seeded_project, **{"run-seed": "true", "seed-path": "nope/seed.py"})
    assert run.returncode == 2
    assert "seed file" in run.stdout and "does not exist" in run.stdout
    assert database.tables() == set()


def test_production_seed_refused(
    seeded_project: AlembicProject, database: Database, deploy
) -> None:
    run = deploy(seeded_project, **{"run-seed": "true", "environment": "production"})
    assert run.returncode == 2
    assert "allow-production-seed" in run.stdout
    assert database.tables() == set()
    run = deploy(
        seeded_project,
        **{"run-seed": "true", "environment": "production", "allow-production-seed": "true"},
    )
    assert run.returncode == 0, run.output


def test_smoke_expectations_and_extensions(
    seeded_project: AlembicProject, github: GitHubRunner, deploy
) -> None:
    run = deploy(
        seeded_project,
        **{
            "run-seed": "true",
            "smoke-expect": "kinds>=2\npublic.items>=3",
            "required-extensions": "plpgsql>=1.0",
        },
    )
    assert run.returncode == 0, run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert [x["ok"] for x in report["smoke"]["expectations"]] == [True, True]
    # Counting stops at N: never more rows than the expectation asks for.
    assert [x["counted"] for x in report["smoke"]["expectations"]] == [2, 3]


@pytest.mark.parametrize(
    "inputs,problem",
    [
        ({"smoke-expect": "items>=4"}, "expected items >= 4 rows, found 3"),
        ({"smoke-expect": "ghosts>=1"}, "expected ghosts >= 1 rows, no such table"),
        ({"required-extensions": "vector"}, "extension vector required, not installed"),
        # The security preflight would refuse an unavailable version first: test the smoke step's own check.
        (
            {"required-extensions": "plpgsql>=99", "security-preflight": "false"},
            "extension plpgsql >= 99 required, version 1.0",
        ),
    ],
)
def test_smoke_failures(
    seeded_project: AlembicProject,
    github: GitHubRunner,
    deploy,
    inputs: dict[str, str],
    problem: str,
) -> None:
    run = deploy(seeded_project, **{"run-seed": "true", **inputs})
    assert run.returncode == 1
    out = github.outputs()
    assert out["failed-step"] == "smoke"
    assert problem in out["error"]
    assert out["current-revision"] == "0001_schema"


def test_unreadable_table_fails_smoke(
    project: AlembicProject, database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    project.add(
        "0001_t",
        "op.create_table('open_t', sa.Column('id', sa.Integer))\n"
        "op.create_table('secret_t', sa.Column('id', sa.Integer))",
    )
    role = f"ro_{database.name}"  # roles are cluster-wide: one per test, per xdist worker
    database.execute(f"CREATE ROLE {role} LOGIN")
    try:
        assert (
            run_cli(
                "--database-url", database.url, "--migrations-path", str(project.root)
            ).returncode
            == 0
        )
        database.execute(f"GRANT SELECT ON open_t, alembic_version TO {role}")
        url = database.url.replace("postgres@", f"{role}@")
        run = run_cli("smoke", "--database-url", url, env=github.env, cwd=github.workspace)
        assert run.returncode == 1
        out = github.outputs()
        assert out["smoke-failed"] == "1"
        assert "public.secret_t is not readable" in out["error"]
    finally:
        database.execute(f"DROP OWNED BY {role}")
        database.execute(f"DROP ROLE {role}")


def test_large_tables_are_estimated_not_counted(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add(
        "0001_big",
        "op.create_table('big', sa.Column('id', sa.Integer))\n"
        "op.execute('INSERT INTO big SELECT generate_series(1, 25000)')\n"
        "op.execute('ANALYZE big')",
    )
    run = deploy(project)
    assert run.returncode == 0, run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    big = next(t for t in report["smoke"]["tables"] if t["name"] == "big")
    assert big["estimated"] is True
    assert 20_000 <= big["rows"] <= 30_000
    assert f"| public.big | ~{big['rows']:,} |" in github.summary()


def test_vector_index_advice(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add(
        "0001_vec",
        """
        op.execute('CREATE EXTENSION IF NOT EXISTS vector')
        op.execute('CREATE TABLE docs (id int, embedding vector(3))')
        op.execute("INSERT INTO docs SELECT g, ARRAY[random(), random(), random()]::vector "
                   "FROM generate_series(1, 20000) g")
        op.execute('ANALYZE docs')
        op.execute('CREATE INDEX docs_embedding_idx ON docs USING ivfflat '
                   '(embedding vector_cosine_ops) WITH (lists = 200)')
        op.execute('CREATE INDEX docs_hnsw_idx ON docs USING hnsw (embedding vector_l2_ops)')
    """,
    )
    run = deploy(project, **{"required-extensions": "vector>=0.5"})
    assert run.returncode == 0, run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    idx = {v["name"]: v for v in report["smoke"]["vector_indexes"]}
    assert idx["docs_embedding_idx"]["method"] == "ivfflat"
    assert idx["docs_embedding_idx"]["lists"] == 200
    assert idx["docs_embedding_idx"]["recommended_lists"] == 20
    assert "SET (lists = 20)" in idx["docs_embedding_idx"]["advice"]
    assert idx["docs_hnsw_idx"]["method"] == "hnsw" and idx["docs_hnsw_idx"]["size_bytes"] > 0
    assert any(
        line.startswith("::warning") and "docs_embedding_idx" in line
        for line in run.stdout.splitlines()
    )
    assert "REINDEX INDEX CONCURRENTLY" in github.summary()


def test_seed_command_alone(
    seeded_project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    deploy,
) -> None:
    assert deploy(seeded_project).returncode == 0
    run = run_cli(
        "seed",
        "--database-url",
        database.url,
        "--migrations-path",
        str(seeded_project.root),
        env=github.env,
        cwd=github.workspace,
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3


def test_status_command(
    seeded_project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    seeded_project.add("0002_more", "op.create_table('more', sa.Column('id', sa.Integer))")
    args = ("status", "--database-url", database.url, "--migrations-path", str(seeded_project.root))
    run = run_cli(*args, env=github.env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["pending-count"] == "2"
    assert out["head-revision"] == "0002_more"
    assert database.tables() == set()  # status never creates the version table
    assert "0001_schema" in github.summary()


def test_report_paths_outside_github(
    seeded_project: AlembicProject, database: Database, run_cli: Callable[..., Run], tmp_path: Path
) -> None:
    run = run_cli(
        "deploy",
        "--database-url",
        database.url,
        "--migrations-path",
        str(seeded_project.root),
        "--summary-file",
        str(tmp_path / "s.md"),
        "--output-file",
        str(tmp_path / "out.txt"),
        "--report-file",
        str(tmp_path / "r.json"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "db-deploy deploy: success" in run.stdout  # the terminal report
    assert "::group::" not in run.output  # no workflow commands outside GitHub
    assert "1 revision(s) applied" in (tmp_path / "s.md").read_text()
    from tests.helpers import parse_env_file

    assert parse_env_file((tmp_path / "out.txt").read_text())["applied-count"] == "1"
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "success"


def test_unanalysed_and_partitioned_tables_are_not_misreported(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add(
        "0001_big",
        """
        op.execute('CREATE TABLE raw_events (id int)')
        op.execute('INSERT INTO raw_events SELECT generate_series(1, 30000)')
        op.execute('CREATE TABLE measurements (id int, at date) PARTITION BY RANGE (at)')
        op.execute("CREATE TABLE measurements_2025 PARTITION OF measurements "
                   "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
        op.execute("CREATE TABLE measurements_2026 PARTITION OF measurements "
                   "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        op.execute("INSERT INTO measurements SELECT g, DATE '2025-06-01' + (g % 400) "
                   "FROM generate_series(1, 40000) g")
    """,
    )
    run = deploy(project)
    assert run.returncode == 0, run.output
    tables = {
        t["name"]: t
        for t in json.loads((github.workspace / "db-deploy-report.json").read_text())["smoke"][
            "tables"
        ]
    }
    # Never analysed: only a lower bound is known, and it says so.
    assert tables["raw_events"]["lower_bound"] is True
    assert tables["raw_events"]["rows"] == 10_001
    assert "| public.raw_events | ≥10,001 |" in github.summary()
    assert "measurements_2025" not in tables  # partitions are read through their parent
    database.execute("ANALYZE raw_events")
    database.execute("ANALYZE measurements_2025")
    database.execute("ANALYZE measurements_2026")
    run = deploy(project)
    assert run.returncode == 0, run.output
    tables = {
        t["name"]: t
        for t in json.loads((github.workspace / "db-deploy-report.json").read_text())["smoke"][
            "tables"
        ]
    }
    assert tables["raw_events"] == {
        **tables["raw_events"],
        "rows": 30000,
        "estimated": True,
        "lower_bound": False,
    }
    # The parent's estimate is the sum of its leaves'.
    assert 35_000 <= tables["measurements"]["rows"] <= 45_000
    assert tables["measurements"]["estimated"] is True


def test_a_deploy_that_only_seeds_is_not_a_noop(
    seeded_project: AlembicProject, github: GitHubRunner, deploy
) -> None:
    assert deploy(seeded_project).returncode == 0
    run = deploy(seeded_project, **{"run-seed": "true"})
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "success"  # the seed changed rows
    assert deploy(seeded_project, **{"run-seed": "true"}).returncode == 0
    assert github.outputs()["status"] == "noop"  # nothing pending, the seed changed nothing


def test_emptied_large_table_counts_zero(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    project.add(
        "0001_big",
        "op.execute('CREATE TABLE big AS SELECT generate_series(1, 30000) id')\n"
        "op.execute('ANALYZE big')\nop.execute('DELETE FROM big')",
    )
    assert deploy(project).returncode == 0
    tables = {
        t["name"]: t
        for t in json.loads((github.workspace / "db-deploy-report.json").read_text())["smoke"][
            "tables"
        ]
    }
    assert tables["big"]["rows"] == 0 and tables["big"]["estimated"] is False


def test_seed_command_without_migrations_is_quiet(
    tmp_path: Path, database: Database, github: GitHubRunner, run_cli: Callable[..., Run]
) -> None:
    database.execute("CREATE TABLE notes (body text)")
    (github.workspace / "seed.sql").write_text("INSERT INTO notes VALUES ('hello');\n")
    env = github.with_inputs(
        **{
            "database-url": database.url,
            "command": "seed",
            "seed-path": "seed.sql",
            "security-preflight": "false",
        }
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM notes") == 1
    assert "::warning" not in run.stdout


def _many_tables(database: Database, n: int) -> None:
    database.execute(
        f"DO $$ BEGIN FOR i IN 1..{n} LOOP "
        "EXECUTE format('CREATE TABLE t%s (id int)', lpad(i::text, 3, '0')); "
        "EXECUTE format('INSERT INTO t%s SELECT generate_series(1, %s)', "
        "lpad(i::text, 3, '0'), i % 7); "
        "END LOOP; END $$"
    )


def test_smoke_shares_the_reads_of_many_tables_between_sessions(database: Database) -> None:
    """Above PARALLEL_MIN tables the helper session reads its share at the same time, with the
    same results as one session alone."""
    from deployer.steps.smoke import PARALLEL_MIN, SmokeOptions, smoke

    n = PARALLEL_MIN + 30
    _many_tables(database, n)
    seen: dict[int, list[str]] = {}

    def note(conn, cursor, statement, *_: object) -> None:
        seen.setdefault(id(conn), []).append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", note)
    try:
        with database.engine.connect() as one, database.engine.connect() as two:
            shared = smoke(one, SmokeOptions(lock_timeout=2), helpers=[two])
            alone = smoke(one)
            assert not one.in_transaction() and not two.in_transaction()
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", note)
    assert [(t.name, t.rows, t.ok) for t in shared.tables] == [
        (t.name, t.rows, t.ok) for t in alone.tables
    ]
    assert {t.name: t.rows for t in shared.tables} == {f"t{i:03d}": i % 7 for i in range(1, n + 1)}
    reads = {k: [s for s in v if "UNION ALL" in s] for k, v in seen.items()}
    assert len([k for k, v in reads.items() if v]) == 2  # both sessions read tables
    assert all(
        any("set_config('lock_timeout'" in s for s in v) for k, v in seen.items() if reads[k]
    )


def test_smoke_leaves_out_a_helper_acting_as_another_role(database: Database) -> None:
    """Smoke proves what the deploy role reads: a helper session on which env.py ran SET ROLE
    reads nothing."""
    from deployer.steps.smoke import PARALLEL_MIN, smoke

    _many_tables(database, PARALLEL_MIN + 5)
    database.execute("CREATE ROLE smoke_other")
    seen: dict[int, list[str]] = {}

    def note(conn, cursor, statement, *_: object) -> None:
        seen.setdefault(id(conn), []).append(statement)

    try:
        with database.engine.connect() as one, database.engine.connect() as two:
            two.execute(sa.text("SET ROLE smoke_other"))
            two.commit()
            sa.event.listen(database.engine, "before_cursor_execute", note)
            result = smoke(one, helpers=[two])
            sa.event.remove(database.engine, "before_cursor_execute", note)
            assert not any("UNION ALL" in q for q in seen.get(id(two), []))
            assert any("UNION ALL" in q for q in seen[id(one)])
            assert all(t.ok for t in result.tables)
    finally:
        database.execute("DROP ROLE smoke_other")


def test_smoke_does_not_hang_on_a_locked_table(database: Database) -> None:
    """A table held in ACCESS EXCLUSIVE by another session (in the helper's share, with a
    vector index) fails after lock_timeout, named, and every other table is still read."""
    from deployer.steps.smoke import PARALLEL_MIN, SmokeOptions, smoke

    n = PARALLEL_MIN + 10
    _many_tables(database, n)
    database.execute("CREATE EXTENSION IF NOT EXISTS vector")
    database.execute(f"ALTER TABLE t{n:03d} ADD COLUMN v vector(3)")
    database.execute(f"CREATE INDEX t{n:03d}_v ON t{n:03d} USING hnsw (v vector_l2_ops)")
    with database.engine.connect() as holder:
        holder.execute(sa.text(f"LOCK TABLE t{n:03d} IN ACCESS EXCLUSIVE MODE"))
        with database.engine.connect() as one, database.engine.connect() as two:
            result = smoke(one, SmokeOptions(lock_timeout=0.3), helpers=[two])
        holder.rollback()
    failed = [t for t in result.tables if not t.ok]
    assert [t.name for t in failed] == [f"t{n:03d}"]
    assert "lock timeout" in failed[0].error
    assert sum(t.ok for t in result.tables) == n - 1
    assert f"public.t{n:03d} is not readable" in "; ".join(result.problems)


def test_smoke_does_without_a_helper_that_is_gone(database: Database) -> None:
    """A helper session the server has dropped shares nothing; the smoke still reads it all."""
    from deployer.steps.smoke import PARALLEL_MIN, SmokeOptions, smoke

    n = PARALLEL_MIN + 5
    _many_tables(database, n)
    with database.engine.connect() as one, database.engine.connect() as two:
        pid = two.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        two.commit()
        database.scalar("SELECT pg_terminate_backend(:pid)", pid=pid)
        result = smoke(one, SmokeOptions(lock_timeout=2), helpers=[two])
    assert len(result.tables) == n and all(t.ok for t in result.tables)
