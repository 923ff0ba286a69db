"""The migrate step's fast path (`fast-path`, steps/fast_path.py): a revision's DDL and plain SQL
held and sent together, identical databases both ways (compared by pg_dump, data included),
statements that cannot be held run one by one in their place with the reason reported, and a
failure that leaves a known revision."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    REPO,
    AlembicProject,
    Database,
    EmbeddedServer,
    GitHubRunner,
    create_database,
    drop_database,
)
from pgcluster import bin_dir

# Literals the rendering must carry exactly: percent signs (SQLAlchemy doubles them for psycopg),
# a tab (Alembic's own --sql output turns tabs into spaces), backslashes (standard strings),
# quotes, a newline, non-ASCII, and a statement ending in a `--` comment.
TRICKY = "50% off\t'quoted' \\n back\\slash\nnew line ünï €"

EDGE_CASES = [
    (
        "0001_types",
        """
        op.create_table(
            'item',
            sa.Column('id', sa.Integer, primary_key=True),
            sa.Column('label', sa.Text, server_default=sa.text("'100%'")),
            sa.Column('price', sa.Numeric(10, 2)),
            sa.Column('born', sa.Date),
            sa.Column('ok', sa.Boolean),
            sa.Column('tags', sa.dialects.postgresql.ARRAY(sa.Text)),
            sa.Column('doc', sa.dialects.postgresql.JSONB),
        )
        op.create_index('item_label', 'item', ['label'], postgresql_where=sa.text("label LIKE '%x%'"))
        """,
    ),
    (
        "0002_rows",
        f"""
        item = sa.table(
            'item', sa.column('id', sa.Integer), sa.column('label', sa.Text),
            sa.column('price', sa.Numeric), sa.column('born', sa.Date), sa.column('ok', sa.Boolean),
        )
        op.bulk_insert(item, [
            {{'id': 1, 'label': {TRICKY!r}, 'price': Decimal('9.99'), 'born': date(2024, 2, 29), 'ok': True}},
            {{'id': 2, 'label': None, 'price': None, 'born': None, 'ok': False}},
        ])
        op.execute("UPDATE item SET tags = ARRAY['a%b', 'c'] WHERE id = 1 -- a trailing comment")
        op.execute(item.update().where(item.c.id == 2).values(label='two %% two'))
        """,
    ),
    (
        "0003_function",
        """
        op.execute('''
            CREATE FUNCTION item_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.label := coalesce(NEW.label, '0%');  -- statements inside the body
                RETURN NEW;
            END $$
        ''')
        op.execute("CREATE TRIGGER item_touch BEFORE INSERT ON item FOR EACH ROW EXECUTE FUNCTION item_touch()")
        op.execute("INSERT INTO item (id) VALUES (3)")
        op.execute("INSERT INTO item (id, label) VALUES (4, NULL)")
        op.add_column('item', sa.Column('note', sa.Text, comment="it's 100% a comment"))
        """,
    ),
]


BothWays = Callable[[AlembicProject | Path], tuple[dict, dict]]


@pytest.fixture
def both_ways(
    pg_server: EmbeddedServer,
    admin_engine: sa.Engine,
    database: Database,
    github: GitHubRunner,
    deploy,
) -> Iterator[BothWays]:
    """Deploy a project the normal way (to a second database) and with the fast path (to the
    test's): both must succeed and leave the same pg_dump. Returns both reports' `migrate`."""
    other = create_database(pg_server, admin_engine)

    def run(root: AlembicProject | Path) -> tuple[dict, dict]:
        normal = deploy(root, **{"database-url": other.url})
        assert normal.returncode == 0, normal.output
        normal_report = report(github)["migrate"]
        fast = deploy(root, **{"fast-path": "true"})
        assert fast.returncode == 0, fast.output
        assert dump(database) == dump(other)
        return normal_report, report(github)["migrate"]

    try:
        yield run
    finally:
        drop_database(admin_engine, other)


def dump(db: Database) -> str:
    """pg_dump of everything but the deploy history (timestamps, durations)."""
    proc = subprocess.run(
        [
            str(bin_dir() / "pg_dump"),
            "--no-owner",
            "--exclude-schema=db_deploy",
            "--dbname",
            db.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return "\n".join(
        line
        for line in proc.stdout.splitlines()
        if not line.startswith("\\restrict") and not line.startswith("\\unrestrict")
    )


def report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def add_edge_cases(project: AlembicProject) -> None:
    for rev, body in EDGE_CASES:
        project.add(rev, body, imports="from datetime import date\nfrom decimal import Decimal")


@pytest.mark.parametrize("source", ["edge-cases", "reference-schema"])
def test_fast_path_builds_the_same_database_as_the_normal_path(
    source: str, project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    if source == "edge-cases":
        add_edge_cases(project)
        root: AlembicProject | Path = project
        expected = [rev for rev, _ in EDGE_CASES]
    else:
        root = REPO / "migrations"
        expected = sorted(p.stem for p in (REPO / "migrations" / "versions").glob("0*.py"))

    normal, m = both_ways(root)
    assert not normal["fast_path"] and not any(a["fast_path"] for a in normal["applied"])
    assert m["fast_path"] is True
    if source == "edge-cases":  # bulk_insert and an update with values: bound, one by one
        assert m["fallbacks"] == {"0002_rows": "a statement with parameters"}
        expected.remove("0002_rows")
    else:
        assert m["fallbacks"] == {}
    assert [a["revision"] for a in m["applied"] if a["fast_path"]] == expected
    if source == "edge-cases":
        assert database.scalar("SELECT label FROM item WHERE id = 1") == TRICKY
        assert database.scalar("SELECT label FROM item WHERE id = 2") == "two %% two"
        assert database.scalar("SELECT label FROM item WHERE id = 3") == "100%"
        assert database.scalar("SELECT label FROM item WHERE id = 4") == "0%"


MIXED = [
    ("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))"),
    (
        # a read on the connection itself sees the inserts held before it
        "0002_reads",
        """
        op.execute('INSERT INTO a VALUES (1), (2), (3)')
        count = op.get_bind().execute(sa.text('SELECT count(*) FROM a')).scalar()
        op.execute(f'INSERT INTO a VALUES ({count * 10})')
        total = context.get_bind().execute(sa.text('SELECT sum(n) FROM a')).scalar()
        op.execute(f'INSERT INTO a VALUES ({total})')
        if not op.get_context().as_sql:  # the revision runs online, once
            op.execute('INSERT INTO a VALUES (7)')
        """,
    ),
    ("0003_enum", "op.execute(\"CREATE TYPE mood AS ENUM ('ok')\")"),
    (
        "0004_autocommit",
        """
        with op.get_context().autocommit_block():
            op.execute("ALTER TYPE mood ADD VALUE 'great'")
        op.create_index('a_n', 'a', ['n'])
        """,
    ),
    (
        # values are bound, never written inline: Python-side defaults, floats
        "0005_values",
        """
        t = sa.Table('a', sa.MetaData(), sa.Column('n', sa.Integer, default=5),
                     sa.Column('x', sa.Float))
        op.add_column('a', sa.Column('x', sa.Float))
        op.bulk_insert(t, [{'x': 0.30000000000000004}, {'x': float('nan')}])
        """,
    ),
    (
        # an Enum type created once by its first table (Alembic's memo spans revisions)
        "0006_enum_b",
        "op.create_table('b', sa.Column('f', sa.Enum('x', 'y', name='feeling')))",
    ),
    ("0007_enum_c", "op.create_table('c', sa.Column('f', sa.Enum('x', 'y', name='feeling')))"),
    (
        # the server parses a whole query before running it: SET runs on its own
        "0008_set",
        """
        op.execute("SET LOCAL standard_conforming_strings = off")
        op.execute("CREATE TABLE s AS SELECT 'a\\\\tb'::text AS v")
        """,
    ),
    (
        "0009_commit",
        """
        op.execute('INSERT INTO a VALUES (100)')
        op.execute('COMMIT')
        op.execute('INSERT INTO a VALUES (101)')
        """,
    ),
]


@pytest.mark.parametrize("per_migration", [True, False], ids=["per-revision", "one-transaction"])
def test_statements_that_cannot_be_held_run_one_by_one_in_their_place(
    per_migration: bool,
    make_project,
    database: Database,
    github: GitHubRunner,
    both_ways: BothWays,
) -> None:
    """Reads on the connection, autocommit_block(), bound values, SET and COMMIT: each such
    statement runs the normal way after what was held before it is sent, with the reason
    reported; the database ends as the normal path leaves it (pg_dump, data included), with a
    transaction per revision or one for the whole upgrade."""
    project = make_project(per_migration=per_migration)
    for rev, body in MIXED:
        project.add(rev, body, imports="from alembic import context")

    _, m = both_ways(project)
    assert database.version() == {"0009_commit"}
    assert sorted(r[0] for r in database.rows("SELECT n FROM a WHERE n IS NOT NULL")) == [
        1, 2, 3, 5, 5, 7, 30, 36, 100, 101,
    ]  # fmt: skip
    assert database.scalar("SELECT x FROM a WHERE x < 1") == 0.30000000000000004
    assert database.scalar("SELECT v FROM s") == "a\tb"  # a tab: parsed after the SET
    assert m["fallbacks"] == {
        "0004_autocommit": "a statement outside a transaction (after a commit, or in "
        "autocommit_block)",
        "0005_values": "a statement with parameters",
        "0008_set": "a setting that changes how SQL is read",
        "0009_commit": "transaction control or SET",
    }
    fast = {a["revision"] for a in m["applied"] if a["fast_path"]}
    assert fast == {"0001_a", "0002_reads", "0003_enum", "0006_enum_b", "0007_enum_c"}
    summary = github.summary()
    assert "Fast path: 5 of 9 applied revision(s)" in summary
    assert "`0005_values`: a statement with parameters" in summary


def test_a_failing_revision_on_the_fast_path_leaves_the_last_committed_one(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """Per-revision transactions: the failing revision's statements, sent together, roll back
    together; the database stays at the revision before, which the outputs name."""
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add(
        "0002_bad",
        """
        op.create_table('b', sa.Column('n', sa.Integer))
        op.execute('INSERT INTO a VALUES (1)')
        op.execute('INSERT INTO missing VALUES (1)')
        """,
    )
    project.add("0003_never", "op.create_table('c', sa.Column('n', sa.Integer))")

    run = deploy(project, **{"fast-path": "true"})
    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output
    assert database.version() == {"0001_a"}
    assert database.tables() == {"a", "alembic_version"}
    assert database.scalar("SELECT count(*) FROM a") == 0
    out = github.outputs()
    assert out["failed-step"] == "migrate"
    assert out["current-revision"] == "0001_a"
    assert 'relation "missing" does not exist' in out["error"]
    m = report(github)["migrate"]
    assert m["failed_revision"] == "0002_bad"
    assert [a["revision"] for a in m["applied"]] == ["0001_a"]
    assert m["fallbacks"] == {}  # the failing statements were held and sent together


@pytest.mark.parametrize("fast_path", ["false", "true"])
def test_a_parameter_without_a_value_fails_the_same_way_on_both_paths(
    fast_path: str, project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """Rendered inline, a bound parameter without a value would become NULL: the fast path
    leaves that revision to the normal way, which refuses it."""
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add("0002_unbound", "op.execute(sa.text('INSERT INTO a VALUES (:n)'))")

    run = deploy(project, **{"fast-path": fast_path})
    assert run.returncode == 1, run.output
    assert database.version() == {"0001_a"}
    assert database.scalar("SELECT count(*) FROM a") == 0
    assert "A value is required for bind parameter 'n'" in github.outputs()["error"]
    if fast_path == "true":
        m = report(github)["migrate"]
        assert m["fallbacks"] == {"0002_unbound": "a statement with bound parameters"}


@pytest.mark.parametrize("fast_path", ["false", "true"])
def test_a_held_statement_that_fails_before_a_rollback_fails_the_revision(
    fast_path: str, project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """The held statements are sent before the revision's own commit or rollback; a failure
    there fails the revision as the normal path does, and leaves the connection usable."""
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add(
        "0002_bad", "op.execute('INSERT INTO missing VALUES (1)')\nop.get_bind().rollback()"
    )

    run = deploy(project, **{"fast-path": fast_path})
    assert run.returncode == 1, run.output
    assert database.version() == {"0001_a"}
    out = github.outputs()
    assert out["current-revision"] == "0001_a"  # read back on the same connection
    assert 'relation "missing" does not exist' in out["error"]
    m = report(github)["migrate"]
    assert m["fallbacks"] == {}  # on the fast path, the INSERT was held: sent by the rollback


def test_event_listeners_on_the_connection_turn_the_fast_path_off(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """An env.py that watches each statement (a guard, an audit log) keeps seeing each one."""
    env = project.root / "env.py"
    env.write_text(
        "from sqlalchemy import event\nSEEN = []\n\n"
        "def seen(conn, cursor, statement, *args):\n    SEEN.append(statement)\n\n"
        + env.read_text().replace(
            "        context.configure(connection=connection,",
            "        event.listen(connection, 'before_cursor_execute', seen)\n"
            "        context.configure(connection=connection,",
        )
    )
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")

    run = deploy(project, **{"fast-path": "true"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    m = report(github)["migrate"]
    assert m["fallbacks"] == {
        "0001_a": "SQLAlchemy before_cursor_execute listeners are set on the connection"
    }
    assert not any(a["fast_path"] for a in m["applied"])


def test_a_statement_in_a_savepoint_fails_where_it_stands(
    project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    """A revision that catches a failure and rolls back to its savepoint: the statement in the
    savepoint runs on its own, so it fails inside the `with`, as on the normal path."""
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add(
        "0002_try",
        """
        op.execute('INSERT INTO a VALUES (1)')
        try:
            with op.get_bind().begin_nested():
                op.execute('INSERT INTO missing VALUES (1)')
        except sa.exc.ProgrammingError:
            pass
        op.execute('INSERT INTO a VALUES (2)')
        """,
    )
    _, m = both_ways(project)
    assert sorted(r[0] for r in database.rows("SELECT n FROM a")) == [1, 2]
    assert m["fallbacks"] == {
        "0002_try": "it catches exceptions (a statement must fail where it stands)"
    }


def test_revisions_that_reach_around_the_operations_keep_their_order(
    project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    """exec_driver_sql sees what was held before it (it is sent first); a revision that uses a
    DBAPI cursor or catches exceptions holds nothing; a setting that changes how SQL is read,
    however it is set, stops the holding for the rest of its revision."""
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add(
        "0002_driver_sql",
        """
        op.execute('INSERT INTO a VALUES (1)')
        n = op.get_bind().exec_driver_sql('SELECT count(*) FROM a').scalar()
        op.execute(f'INSERT INTO a VALUES ({n + 10})')
        """,
    )
    project.add(
        "0003_cursor",
        """
        op.execute('INSERT INTO a VALUES (2)')
        cur = op.get_bind().connection.cursor()
        cur.execute('SELECT count(*) FROM a')
        op.execute(f'INSERT INTO a VALUES ({cur.fetchone()[0] + 20})')
        """,
    )
    project.add(
        "0004_catch",
        """
        op.execute('SAVEPOINT sp')
        try:
            op.execute('CREATE EXTENSION no_such_extension')
        except sa.exc.DBAPIError:
            op.execute('ROLLBACK TO SAVEPOINT sp')
        op.execute('INSERT INTO a VALUES (3)')
        """,
    )
    project.add(
        "0005_lexing",
        """
        op.execute("SELECT set_config('standard_conforming_strings', 'off', true)")
        op.execute("CREATE TABLE s AS SELECT 'a\\\\tb'::text AS v")
        """,
    )
    _, m = both_ways(project)
    assert sorted(r[0] for r in database.rows("SELECT n FROM a")) == [1, 2, 3, 11, 23]
    assert m["fallbacks"] == {
        "0003_cursor": "it reaches the database other than through its operations (cursor)",
        "0004_catch": "it catches exceptions (a statement must fail where it stands)",
        "0005_lexing": "a setting that changes how SQL is read",
    }
    assert {a["revision"] for a in m["applied"] if a["fast_path"]} == {"0001_a", "0002_driver_sql"}


def test_helpers_of_the_users_own_that_reach_around_the_operations_are_read(
    project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    """The user's own modules a revision uses are read too, transitively: a helper that counts
    rows on a DBAPI cursor (imported at the top, inside upgrade(), through another helper
    loaded or not yet loaded, as `import pkg.module`, held in a dict, in a namespace package)
    or that catches exceptions (reached by a relative import, in a package first imported
    inside upgrade()) turns holding off for that revision; a helper that only calls operations
    does not."""
    root = project.root
    (root / "alembic.ini").write_text(
        (root / "alembic.ini")
        .read_text()
        .replace("[alembic]\n", "[alembic]\nprepend_sys_path = %(here)s/helpers\n")
    )
    helpers = root / "helpers"
    helpers.mkdir()
    (helpers / "fp_count.py").write_text(
        "from alembic import op\n\n\n"
        "def count_rows(table):\n"
        "    cur = op.get_bind().connection.cursor()\n"
        "    cur.execute(f'SELECT count(*) FROM {table}')\n"
        "    return cur.fetchone()[0]\n"
    )
    (helpers / "fp_outer.py").write_text(
        "from fp_count import count_rows\n\n\ndef rows_in(table):\n    return count_rows(table)\n"
    )
    (helpers / "fp_late.py").write_text(
        "from alembic import op\n\n\n"
        "def rows_in(table):\n"
        "    return op.get_bind().connection.cursor().execute(\n"
        "        f'SELECT count(*) FROM {table}').fetchone()[0]\n"
    )
    (helpers / "fp_outer2.py").write_text((helpers / "fp_outer.py").read_text())
    (helpers / "fp_pkg").mkdir()
    (helpers / "fp_pkg" / "__init__.py").write_text("")
    (helpers / "fp_pkg" / "tools.py").write_text((helpers / "fp_late.py").read_text())
    (helpers / "fp_lookup.py").write_text(
        "from fp_count import count_rows\n\nHELPERS = {'count': count_rows}\n"
    )
    (helpers / "fp_rel").mkdir()
    (helpers / "fp_rel" / "__init__.py").write_text("")
    (helpers / "fp_rel" / "a.py").write_text(
        "from .b import count_rows\n\n\ndef rows_in(table):\n    return count_rows(table)\n"
    )
    (helpers / "fp_rel" / "b.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n\n"
        "def count_rows(table):\n"
        "    try:\n"
        "        return op.get_bind().execute(sa.text(f'SELECT count(*) FROM {table}')).scalar()\n"
        "    except sa.exc.DBAPIError:\n"
        "        raise\n"
    )
    (helpers / "fp_ns").mkdir()  # a namespace package: no __init__.py
    (helpers / "fp_ns" / "raw.py").write_text((helpers / "fp_count.py").read_text())
    (helpers / "fp_semi.py").write_text((helpers / "fp_count.py").read_text())
    (helpers / "fp_cont").mkdir()
    (helpers / "fp_cont" / "__init__.py").write_text("")
    (helpers / "fp_cont" / "raw.py").write_text((helpers / "fp_count.py").read_text())
    (helpers / "fp_ddl.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n\n"
        "def make_table(name):\n    op.create_table(name, sa.Column('n', sa.Integer))\n"
    )
    project.add("0001_a", "make_table('a')", imports="from fp_ddl import make_table")
    project.add(
        "0002_top",
        "op.execute('INSERT INTO a VALUES (1)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({count_rows('a') + 10})\")",
        imports="from fp_count import count_rows",
    )
    project.add(
        "0003_through",
        "op.execute('INSERT INTO a VALUES (2)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({fp_outer.rows_in('a') + 20})\")",
        imports="import fp_outer",
    )
    project.add(
        "0004_inside",
        "from fp_late import rows_in\n"
        "op.execute('INSERT INTO a VALUES (3)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({rows_in('a') + 30})\")",
    )
    project.add(
        "0005_inside_through",
        "import fp_outer2\n"
        "op.execute('INSERT INTO a VALUES (4)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({fp_outer2.rows_in('a') + 40})\")",
    )
    project.add(
        "0006_dotted",
        "op.execute('INSERT INTO a VALUES (5)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({fp_pkg.tools.rows_in('a') + 50})\")",
        imports="import fp_pkg.tools",
    )
    project.add(
        "0007_registry",
        "op.execute('INSERT INTO a VALUES (6)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({HELPERS['count']('a') + 60})\")",
        imports="from fp_lookup import HELPERS",
    )
    project.add(
        "0008_relative",
        "from fp_rel.a import rows_in\n"
        "op.execute('INSERT INTO a VALUES (7)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({rows_in('a') + 70})\")",
    )
    project.add(
        "0009_namespace",
        "op.execute('INSERT INTO a VALUES (8)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({fp_ns.raw.count_rows('a') + 80})\")",
        imports="import fp_ns.raw",
    )
    project.add(
        "0010_semicolon",
        "import os; from fp_semi import count_rows\n"
        "op.execute('INSERT INTO a VALUES (9)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({count_rows('a') + 90})\")",
    )
    project.add(
        "0011_continued",
        "from fp_cont import \\\n    raw\n"
        "op.execute('INSERT INTO a VALUES (10)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({raw.count_rows('a') + 100})\")",
    )
    _, m = both_ways(project)
    rows = sorted(r[0] for r in database.rows("SELECT n FROM a"))
    assert rows == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 23, 35, 47, 59, 71, 83, 95, 107, 119]
    cursor = "it reaches the database other than through its operations (cursor)"
    assert m["fallbacks"] == {
        "0002_top": f"{cursor}, in module fp_count, which it uses",
        "0003_through": f"{cursor}, in module fp_count, which it uses",
        "0004_inside": f"{cursor}, in module fp_late, which it uses",
        "0005_inside_through": f"{cursor}, in module fp_count, which it uses",
        "0006_dotted": f"{cursor}, in module fp_pkg.tools, which it uses",
        "0007_registry": f"{cursor}, in module fp_count, which it uses",
        "0008_relative": "it catches exceptions (a statement must fail where it stands), "
        "in module fp_rel.b, which it uses",
        "0009_namespace": f"{cursor}, in module fp_ns.raw, which it uses",
        "0010_semicolon": f"{cursor}, in module fp_semi, which it uses",
        "0011_continued": f"{cursor}, in module fp_cont.raw, which it uses",
    }
    assert {a["revision"] for a in m["applied"] if a["fast_path"]} == {"0001_a"}


def test_a_custom_operation_of_the_users_is_read_too(
    project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    """A custom operation (`Operations.implementation_for`) that reads on a DBAPI cursor:
    revisions reach it through `op`, so none of them holds anything."""
    root = project.root
    (root / "myops.py").write_text(
        "from alembic.operations import MigrateOperation, Operations\n\n\n"
        "@Operations.register_operation('insert_count')\n"
        "class InsertCount(MigrateOperation):\n"
        "    def __init__(self, table):\n"
        "        self.table = table\n\n"
        "    @classmethod\n"
        "    def insert_count(cls, operations, table):\n"
        "        return operations.invoke(cls(table))\n\n\n"
        "@Operations.implementation_for(InsertCount)\n"
        "def insert_count(operations, operation):\n"
        "    cur = operations.get_bind().connection.cursor()\n"
        "    cur.execute(f'SELECT count(*) FROM {operation.table}')\n"
        "    n = cur.fetchone()[0]\n"
        "    operations.execute(f'INSERT INTO {operation.table} VALUES ({n + 10})')\n"
    )
    env = root / "env.py"
    env.write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\nimport myops\n" + env.read_text()
    )
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add("0002_count", "op.execute('INSERT INTO a VALUES (1)')\nop.insert_count('a')")
    _, m = both_ways(project)
    assert sorted(r[0] for r in database.rows("SELECT n FROM a")) == [1, 11]
    reason = (
        "it reaches the database other than through its operations (cursor), "
        "in module myops, which it uses"
    )
    assert m["fallbacks"] == {"0001_a": reason, "0002_count": reason}


def test_a_helper_read_before_its_module_is_loaded_is_read_again_after(
    project: AlembicProject, database: Database, both_ways: BothWays
) -> None:
    """A module first reached before it is loaded shows only its text; once a revision has
    loaded it, its globals are read too: here they hand out a cursor helper that env.py
    registered, which the text does not name."""
    root = project.root
    (root / "fp_registry.py").write_text("REG = {}\n")
    (root / "fp_plugin.py").write_text(
        "from alembic import op\nfrom fp_registry import REG\n\n\n"
        "def count_rows(table):\n"
        "    cur = op.get_bind().connection.cursor()\n"
        "    cur.execute(f'SELECT count(*) FROM {table}')\n"
        "    return cur.fetchone()[0]\n\n\n"
        "REG['count_rows'] = count_rows\n"
    )
    (root / "fp_x.py").write_text("from fp_registry import REG\n\ncount_rows = REG['count_rows']\n")
    env = root / "env.py"
    env.write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\nimport fp_plugin\n" + env.read_text()
    )
    project.add("0001_a", "op.create_table('a', sa.Column('n', sa.Integer))")
    project.add("0002_load", "import fp_x\nop.execute('INSERT INTO a VALUES (1)')")
    project.add(
        "0003_use",
        "from fp_x import count_rows\n"
        "op.execute('INSERT INTO a VALUES (2)')\n"
        "op.execute(f\"INSERT INTO a VALUES ({count_rows('a') + 10})\")",
    )
    _, m = both_ways(project)
    assert sorted(r[0] for r in database.rows("SELECT n FROM a")) == [1, 2, 12]
    assert m["fallbacks"] == {
        "0003_use": "it reaches the database other than through its operations (cursor), "
        "in module fp_plugin, which it uses"
    }
