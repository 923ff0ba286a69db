"""Issue 15, point 1: the seed is one transaction, provably (against a real PostgreSQL).

Transaction control in a seed.sql is refused before anything is migrated (exit 2, the file and
the line); in a seed.py, `commit()`/`rollback()` (SQLAlchemy's or the driver's) and transaction
statements raise; a commit that gets past that fails on the server (a deferred guard trigger);
a failed seed leaves no rows, and the report says "rolled back" only when it was.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import AlembicProject, Database, GitHubRunner

SCHEMA = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True))"


@pytest.fixture
def items(project: AlembicProject) -> AlembicProject:
    project.add("0001_items", SCHEMA, "op.drop_table('items')")
    return project


def _revision(database: Database) -> object:
    try:
        return database.scalar("SELECT version_num FROM alembic_version")
    except Exception:  # noqa: BLE001 - no version table: nothing was migrated
        return None


SQL_REFUSED = [
    (
        "commit",
        "INSERT INTO items VALUES (1),(2),(3);\nCOMMIT;\nINSERT INTO items VALUES ('x');",
        2,
        "COMMIT",
    ),
    ("end", "INSERT INTO items VALUES (1);\n\n  end ;", 3, "COMMIT"),
    ("begin", "BEGIN;\nINSERT INTO items VALUES (1);", 1, "BEGIN"),
    (
        "start",
        "-- comment\nSTART TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
        2,
        "START TRANSACTION",
    ),
    ("rollback", "INSERT INTO items VALUES (1);\nROLLBACK;", 2, "ROLLBACK"),
    ("abort", "INSERT INTO items VALUES (1);\nabort work;", 2, "ROLLBACK"),
    (
        "release",
        "INSERT INTO items VALUES (1);\nRELEASE SAVEPOINT s;",
        2,
        "RELEASE SAVEPOINT s (no such savepoint",
    ),
    (
        "rollback-to",
        "INSERT INTO items VALUES (1);\nROLLBACK TO s;",
        2,
        "ROLLBACK TO SAVEPOINT s (no such savepoint",
    ),
    (
        "prepare",
        "INSERT INTO items VALUES (1);\nPREPARE TRANSACTION 'x';",
        2,
        "PREPARE TRANSACTION",
    ),
    (
        "released-twice",
        "SAVEPOINT a;\nRELEASE a;\nROLLBACK TO a;",
        3,
        "ROLLBACK TO SAVEPOINT a (no",
    ),
    ("commit-prepared", "COMMIT PREPARED 'x';", 1, "COMMIT PREPARED"),
    ("set-transaction", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;", 1, "SET TRANSACTION"),
    ("set-session", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;", 1, "SET SESSION"),
    ("commit-and-chain", "INSERT INTO items VALUES (5);\nCOMMIT AND CHAIN;", 2, "COMMIT"),
    ("vacuum", "INSERT INTO items VALUES (5);\nVACUUM items;", 2, "VACUUM"),
    ("concurrently", "CREATE INDEX CONCURRENTLY i ON items (id);", 1, "CONCURRENTLY"),
    (
        "lowercase-mixed",
        "insert into items values (1); CoMmIt; insert into items values (2);",
        1,
        "COMMIT",
    ),
]


@pytest.mark.parametrize(
    ("sql", "line", "what"), [c[1:] for c in SQL_REFUSED], ids=[c[0] for c in SQL_REFUSED]
)
def test_sql_transaction_control_is_refused_before_migrating(
    items: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    sql: str,
    line: int,
    what: str,
) -> None:
    path = items.root / "seed.sql"
    path.write_text(sql)
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 2, run.output
    assert f"seed.sql: line {line}: " in run.output
    assert what in run.output
    assert "Traceback" not in run.output
    assert _revision(database) is None  # nothing migrated
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["status"] == "failed"


def test_sql_not_utf8_is_refused_before_migrating(
    items: AlembicProject, database: Database, deploy
) -> None:
    path = items.root / "seed.sql"
    path.write_bytes(b"INSERT INTO items VALUES (1);\n-- caf\xe9 latin-1\n")
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 2, run.output
    assert "seed.sql: line 2: not UTF-8" in run.output
    assert _revision(database) is None


def test_sql_that_does_not_parse_is_refused_before_migrating(
    items: AlembicProject, database: Database, deploy
) -> None:
    path = items.root / "seed.sql"
    path.write_text("INSERT INTO items VALUES (1);\n\\i other.sql\nINSERT INTO items VALUES (2);\n")
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 2, run.output
    assert "seed.sql: line 2: not valid SQL" in run.output
    assert _revision(database) is None


def test_sql_keywords_inside_strings_and_bodies_are_not_transaction_control(
    items: AlembicProject, database: Database, deploy
) -> None:
    """A real parser: `COMMIT;` in a string, a comment or a dollar-quoted body is data."""
    path = items.root / "seed.sql"
    path.write_text(
        "CREATE TABLE notes (t text);\n"
        "INSERT INTO notes VALUES ('COMMIT; ROLLBACK;');  -- COMMIT;\n"
        "/* BEGIN; */ INSERT INTO items VALUES (1);\n"
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
        "INSERT INTO items SELECT pg_temp.f() + 1;\n"
        "SAVEPOINT a;\nINSERT INTO items VALUES (3);\nROLLBACK TO SAVEPOINT a;\n"
        "SAVEPOINT b;\nINSERT INTO items VALUES (4);\nRELEASE b;\n"
    )
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3
    assert database.scalar("SELECT t FROM notes") == "COMMIT; ROLLBACK;"


def test_sql_failure_leaves_no_rows_and_names_the_line(
    items: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    path = items.root / "seed.sql"
    path.write_text("INSERT INTO items VALUES (1),(2),(3);\n\nINSERT INTO items VALUES ('bad');\n")
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 1, run.output
    assert "rolled back" in run.output and "seed.sql line 3" in run.output
    assert database.scalar("SELECT count(*) FROM items") == 0


def test_sql_procedure_that_commits_cannot_commit(
    items: AlembicProject, database: Database, deploy
) -> None:
    """COMMIT inside a procedure or a DO block: the server refuses it in our transaction."""
    path = items.root / "seed.sql"
    path.write_text(
        "INSERT INTO items VALUES (1);\n"
        "DO $$ BEGIN INSERT INTO items VALUES (2); COMMIT; END $$;\n"
        "INSERT INTO items VALUES (3);\n"
    )
    run = deploy(items, **{"run-seed": "true", "seed-path": str(path)})
    assert run.returncode == 1, run.output
    assert "rolled back" in run.output
    assert database.scalar("SELECT count(*) FROM items") == 0


PY_CASES = {
    "sa-commit": ("connection.commit()", "connection.commit() is not allowed"),
    "sa-rollback": ("connection.rollback()", "connection.rollback() is not allowed"),
    "sql-commit": ("connection.execute(sa.text('COMMIT'))", "COMMIT is not allowed"),
    "driver-sql-commit": ("connection.exec_driver_sql('commit')", "COMMIT is not allowed"),
    "dbapi-commit": ("connection.connection.commit()", "is not allowed"),
    "driver-commit": ("connection.connection.driver_connection.commit()", "is not allowed"),
    "raw-cursor-commit": (
        "connection.connection.driver_connection.cursor().execute('COMMIT')",
        "tried to commit the deployer's transaction",
    ),
    "orm-session-commit": (
        "from sqlalchemy.orm import Session\n"
        "    s = Session(bind=connection)\n"
        "    s.execute(sa.text('INSERT INTO items VALUES (7)'))\n"
        "    s.commit()",
        None,
    ),
}


@pytest.mark.parametrize("case", list(PY_CASES))
def test_python_seed_cannot_commit_or_roll_back(
    items: AlembicProject, database: Database, github: GitHubRunner, deploy, case: str
) -> None:
    call, message = PY_CASES[case]
    (items.root / "seed.py").write_text(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1), (2), (3)'))\n"
        f"    {call}\n"
        "    connection.execute(sa.text(\"INSERT INTO items VALUES ('bad')\"))\n"
    )
    run = deploy(items, **{"run-seed": "true"})
    assert run.returncode == 1, run.output
    assert database.scalar("SELECT count(*) FROM items") == 0
    assert "seed failed and was rolled back" in run.output
    if message:
        assert message in run.output
    if case in {"sa-commit", "sa-rollback"}:
        assert "seed.py line 5" in run.output
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["seed"]["rolled_back"] is True


def test_python_seed_that_catches_the_refusal_still_cannot_commit(
    items: AlembicProject, database: Database, deploy
) -> None:
    (items.root / "seed.py").write_text(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1)'))\n"
        "    try:\n"
        "        connection.commit()\n"
        "    except Exception:\n"
        "        pass\n"
        "    connection.execute(sa.text(\"INSERT INTO items VALUES ('bad')\"))\n"
    )
    run = deploy(items, **{"run-seed": "true"})
    assert run.returncode == 1, run.output
    assert database.scalar("SELECT count(*) FROM items") == 0


def test_python_seed_that_ends_the_transaction_behind_our_back_is_not_reported_rolled_back(
    items: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    """Past every guard (the raw cursor's ROLLBACK, then a commit of its own): the report says
    what may have happened, never "rolled back"."""
    (items.root / "seed.py").write_text(
        "def seed(connection):\n"
        "    cur = connection.connection.driver_connection.cursor()\n"
        "    cur.execute('INSERT INTO items VALUES (1)')\n"
        "    cur.execute('ROLLBACK')\n"
        "    cur.execute('INSERT INTO items VALUES (2)')\n"
        "    cur.execute('COMMIT')\n"
    )
    run = deploy(items, **{"run-seed": "true"})
    assert run.returncode == 1, run.output
    assert "was rolled back" not in run.output
    assert "may have committed part of its work" in run.output
    assert "rolled back" not in github.summary().split("### Seed", 1)[1].split("###", 1)[0]
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["seed"]["rolled_back"] is False
    assert database.scalar("SELECT count(*) FROM items") == 1  # what it did commit, truly


def test_python_seed_success_commits_once(
    items: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    (items.root / "seed.py").write_text(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    with connection.begin_nested():\n"
        "        connection.execute(sa.text('INSERT INTO items VALUES (1), (2)'))\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (3)'))\n"
    )
    run = deploy(items, **{"run-seed": "true"})
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["seed"]["totals"]["inserted"] == 3
    assert [t["table"] for t in report["seed"]["tables"]] == ["public.items"]
