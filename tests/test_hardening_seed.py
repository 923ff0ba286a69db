"""Issue 15, point 1: the seed is one transaction, provably (against a real PostgreSQL).

Transaction control in a seed.sql is refused before anything is migrated (exit 2, the file and
the line); in a seed.py, `commit()`/`rollback()` (SQLAlchemy's or the driver's) and transaction
statements raise; a commit that gets past that fails on the server (a deferred guard trigger);
a failed seed leaves no rows, and the report says "rolled back" only when it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.helpers import AlembicProject, Database, GitHubRunner, Run

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


@dataclass
class Seeder:
    """Deploys the `items` project with a seed the test writes."""

    items: AlembicProject
    deploy: Callable[..., Run]

    def sql(self, text: str | bytes) -> Run:
        """`text` as the project's seed.sql (bytes written as they are), `seed-path` naming it."""
        path = self.items.root / "seed.sql"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return self.deploy(self.items, **{"run-seed": "true", "seed-path": str(path)})

    def py(self, source: str) -> Run:
        """`source` as the project's seed.py (the default seed path)."""
        (self.items.root / "seed.py").write_text(source)
        return self.deploy(self.items, **{"run-seed": "true"})


@pytest.fixture
def seed(items: AlembicProject, deploy: Callable[..., Run]) -> Seeder:
    return Seeder(items, deploy)


def _refused_before_migrating(run: Run, database: Database, message: str) -> None:
    """Exit 2 naming `message`, and nothing migrated."""
    assert run.returncode == 2, run.output
    assert message in run.output
    assert _revision(database) is None  # nothing migrated


def _report(github: GitHubRunner) -> dict:
    return json.loads((github.workspace / "db-deploy-report.json").read_text())


def _rolled_back(run: Run, database: Database, github: GitHubRunner, message: str | None) -> None:
    """Exit 1, no row left, "rolled back" said (and `message`, if any) and reported."""
    assert run.returncode == 1, run.output
    assert database.scalar("SELECT count(*) FROM items") == 0, run.output
    assert "seed failed and was rolled back" in run.output
    if message:
        assert message in run.output, run.output
    assert _report(github)["seed"]["rolled_back"] is True


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
    ("reindex-option", "REINDEX (VERBOSE, CONCURRENTLY) TABLE items;", 1, "REINDEX CONCURRENTLY"),
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
    seed: Seeder,
    database: Database,
    github: GitHubRunner,
    sql: str,
    line: int,
    what: str,
) -> None:
    run = seed.sql(sql)
    _refused_before_migrating(run, database, f"seed.sql: line {line}: ")
    assert what in run.output
    assert "Traceback" not in run.output
    report = _report(github)
    assert report["status"] == "failed"


def test_sql_not_utf8_is_refused_before_migrating(seed: Seeder, database: Database) -> None:
    run = seed.sql(b"INSERT INTO items VALUES (1);\n-- caf\xe9 latin-1\n")
    _refused_before_migrating(run, database, "seed.sql: line 2: not UTF-8")


def test_sql_that_does_not_parse_is_refused_before_migrating(
    seed: Seeder, database: Database
) -> None:
    run = seed.sql("INSERT INTO items VALUES (1);\n\\i other.sql\nINSERT INTO items VALUES (2);\n")
    _refused_before_migrating(run, database, "seed.sql: line 2: not valid SQL")


def test_sql_keywords_inside_strings_and_bodies_are_not_transaction_control(
    seed: Seeder, database: Database
) -> None:
    """A real parser: `COMMIT;` in a string, a comment or a dollar-quoted body is data, and an
    option read as the server reads it (`CONCURRENTLY false` runs in the transaction)."""
    run = seed.sql(
        "CREATE TABLE notes (t text);\n"
        "REINDEX (CONCURRENTLY false) TABLE items;\n"
        "INSERT INTO notes VALUES ('COMMIT; ROLLBACK;');  -- COMMIT;\n"
        "/* BEGIN; */ INSERT INTO items VALUES (1);\n"
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
        "INSERT INTO items SELECT pg_temp.f() + 1;\n"
        "SAVEPOINT a;\nINSERT INTO items VALUES (3);\nROLLBACK TO SAVEPOINT a;\n"
        "SAVEPOINT b;\nINSERT INTO items VALUES (4);\nRELEASE b;\n"
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3
    assert database.scalar("SELECT t FROM notes") == "COMMIT; ROLLBACK;"


def test_sql_failure_leaves_no_rows_and_names_the_line(
    seed: Seeder, database: Database, github: GitHubRunner
) -> None:
    run = seed.sql("INSERT INTO items VALUES (1),(2),(3);\n\nINSERT INTO items VALUES ('bad');\n")
    assert run.returncode == 1, run.output
    assert "rolled back" in run.output and "seed.sql line 3" in run.output
    assert database.scalar("SELECT count(*) FROM items") == 0


def test_sql_procedure_that_commits_cannot_commit(seed: Seeder, database: Database) -> None:
    """COMMIT inside a procedure or a DO block: the server refuses it in our transaction."""
    run = seed.sql(
        "INSERT INTO items VALUES (1);\n"
        "DO $$ BEGIN INSERT INTO items VALUES (2); COMMIT; END $$;\n"
        "INSERT INTO items VALUES (3);\n"
    )
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
    seed: Seeder, database: Database, github: GitHubRunner, case: str
) -> None:
    call, message = PY_CASES[case]
    run = seed.py(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1), (2), (3)'))\n"
        f"    {call}\n"
        "    connection.execute(sa.text(\"INSERT INTO items VALUES ('bad')\"))\n"
    )
    _rolled_back(run, database, github, message)
    if case in {"sa-commit", "sa-rollback"}:
        assert "seed.py line 5" in run.output


def test_python_seed_that_catches_the_refusal_still_cannot_commit(
    seed: Seeder, database: Database
) -> None:
    run = seed.py(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1)'))\n"
        "    try:\n"
        "        connection.commit()\n"
        "    except Exception:\n"
        "        pass\n"
        "    connection.execute(sa.text(\"INSERT INTO items VALUES ('bad')\"))\n"
    )
    assert run.returncode == 1, run.output
    assert database.scalar("SELECT count(*) FROM items") == 0


def test_python_seed_that_ends_the_transaction_behind_our_back_is_not_reported_rolled_back(
    seed: Seeder, database: Database, github: GitHubRunner
) -> None:
    """Past every guard (the raw cursor's ROLLBACK, then a commit of its own): the report says
    what may have happened, never "rolled back"."""
    run = seed.py(
        "def seed(connection):\n"
        "    cur = connection.connection.driver_connection.cursor()\n"
        "    cur.execute('INSERT INTO items VALUES (1)')\n"
        "    cur.execute('ROLLBACK')\n"
        "    cur.execute('INSERT INTO items VALUES (2)')\n"
        "    cur.execute('COMMIT')\n"
    )
    assert run.returncode == 1, run.output
    assert "was rolled back" not in run.output
    assert "may have committed part of its work" in run.output
    assert "rolled back" not in github.summary().split("### Seed", 1)[1].split("###", 1)[0]
    report = _report(github)
    assert report["seed"]["rolled_back"] is False
    assert database.scalar("SELECT count(*) FROM items") == 1  # what it did commit, truly


def test_python_seed_success_commits_once(
    seed: Seeder, database: Database, github: GitHubRunner
) -> None:
    run = seed.py(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    with connection.begin_nested():\n"
        "        connection.execute(sa.text('INSERT INTO items VALUES (1), (2)'))\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (3)'))\n"
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM items") == 3
    report = _report(github)
    assert report["seed"]["totals"]["inserted"] == 3
    assert [t["table"] for t in report["seed"]["tables"]] == ["public.items"]


# A seed.py that opens a session of its own: its commits would be outside the deployer's
# transaction, so a failed seed could not be rolled back. Every way is refused before the session
# exists (or, for a program the seed starts, the session cannot write), so "rolled back" is true.
OWN_SESSION = {
    "psycopg-connect": (
        "import psycopg\n"
        "    with psycopg.connect(URL) as c:\n"
        "        c.execute('INSERT INTO items VALUES (10)')\n"
        "        c.commit()",
        "psycopg.connect() is not allowed in a seed (seed.py line 10)",
    ),
    "psycopg-autocommit": (
        "import psycopg\n"
        "    c = psycopg.Connection.connect(URL, autocommit=True)\n"
        "    c.execute('INSERT INTO items VALUES (10)')",
        "psycopg.connect() is not allowed",
    ),
    "psycopg-async": (
        "import asyncio, psycopg\n"
        "    async def other():\n"
        "        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as c:\n"
        "            await c.execute('INSERT INTO items VALUES (10)')\n"
        "    asyncio.run(other())",
        "psycopg.connect() is not allowed",
    ),
    "psycopg2-connect": (
        "from psycopg2 import connect\n"
        "    c = connect(URL)\n"
        "    c.cursor().execute('INSERT INTO items VALUES (10)')\n"
        "    c.commit()",
        "psycopg2.connect() is not allowed",
    ),
    "create-engine": (
        "e = sa.create_engine(URL.replace('postgresql://', 'postgresql+psycopg://'))\n"
        "    with e.begin() as c:\n"
        "        c.execute(sa.text('INSERT INTO items VALUES (10)'))",
        "a new SQLAlchemy connection",
    ),
    "create-engine-psycopg2": (
        "e = sa.create_engine(URL.replace('postgresql://', 'postgresql+psycopg2://'))\n"
        "    with e.begin() as c:\n"
        "        c.execute(sa.text('INSERT INTO items VALUES (10)'))",
        "is not allowed in a seed",
    ),
    "pooled-engine": (  # an engine whose pool already holds a connection (made at import)
        "with POOLED.begin() as c:\n        c.execute(sa.text('INSERT INTO items VALUES (10)'))",
        "a connection from an engine's pool",
    ),
    "connection-engine": (
        "with connection.engine.connect() as c:\n"
        "        c.execute(sa.text('INSERT INTO items VALUES (10)'))\n"
        "        c.commit()",
        "a new SQLAlchemy connection",
    ),
    "raw-connection": (
        "c = connection.engine.raw_connection()\n"
        "    c.cursor().execute('INSERT INTO items VALUES (10)')\n"
        "    c.commit()",
        "a new SQLAlchemy connection",
    ),
    "thread": (
        "import threading, psycopg\n"
        "    errors = []\n"
        "    def other():\n"
        "        try:\n"
        "            with psycopg.connect(URL, autocommit=True) as c:\n"
        "                c.execute('INSERT INTO items VALUES (10)')\n"
        "        except Exception as exc:\n"
        "            errors.append(exc)\n"
        "    t = threading.Thread(target=other)\n"
        "    t.start()\n"
        "    t.join()\n"
        "    if errors:\n"
        "        raise errors[0]",
        "psycopg.connect() is not allowed in a seed (seed.py line 13)",
    ),
    "python-socket": (  # what pg8000 or asyncpg do: a Python socket to the server
        "import socket, glob\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.connect(glob.glob(HOST + '/.s.PGSQL.*')[0])",
        "a socket to the database server is not allowed",
    ),
    "psql": (  # a program the seed starts: its session cannot write
        "import subprocess\n"
        "    subprocess.run(['psql', URL, '-v', 'ON_ERROR_STOP=1', '-c',\n"
        "                    'INSERT INTO items VALUES (10)'], check=True)",
        "returned non-zero exit status",
    ),
}


@pytest.mark.parametrize("case", list(OWN_SESSION))
def test_python_seed_cannot_open_a_session_of_its_own(
    seed: Seeder, database: Database, github: GitHubRunner, case: str
) -> None:
    """Issue 15.1, provably: whatever session the seed opens itself, nothing it wrote there is
    left after the seed fails, and the report says "rolled back" because it is true."""
    call, message = OWN_SESSION[case]
    host = database.url.split("host=", 1)[1].split("&", 1)[0]
    run = seed.py(
        "import sqlalchemy as sa\n\n"
        f"URL = {database.url!r}\nHOST = {host!r}\n"
        "POOLED = sa.create_engine(URL.replace('postgresql://', 'postgresql+psycopg://'))\n"
        "POOLED.connect().close()\n\n"
        "def seed(connection):\n"
        f"    {call}\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1), (2), (3)'))\n"
        "    connection.execute(sa.text(\"INSERT INTO items VALUES ('bad')\"))\n"
    )
    _rolled_back(run, database, github, message)
    assert "Traceback" not in run.output


def test_python_seed_that_catches_the_refusal_commits_only_its_own_work(
    seed: Seeder, database: Database
) -> None:
    """The refused session never existed: the seed goes on in the deployer's transaction."""
    run = seed.py(
        "import psycopg, sqlalchemy as sa\n\n"
        f"URL = {database.url!r}\n\n"
        "def seed(connection):\n"
        "    try:\n"
        "        psycopg.connect(URL, autocommit=True).execute('INSERT INTO items VALUES (10)')\n"
        "    except Exception as exc:\n"
        "        print('refused:', type(exc).__name__)\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1)'))\n"
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT array_agg(id) FROM items") == [1]
    # The deployer's own sessions after the seed (the smoke, the history) are not refused.
    assert database.scalar("SELECT count(*) FROM items") == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT dblink_exec('dbname=x', 'INSERT INTO items VALUES (1)');",
        "DO $$ BEGIN PERFORM public.dblink_exec('dbname=x', 'COMMIT'); END $$;",
        "INSERT INTO items SELECT * FROM dblink ('dbname=x', 'SELECT 1') AS t(id int);",
    ],
    ids=["dblink-exec", "in-a-do-block", "dblink-select"],
)
def test_sql_seed_using_dblink_is_refused_before_migrating(
    seed: Seeder, database: Database, sql: str
) -> None:
    """dblink runs SQL on a session of its own, which commits by itself."""
    run = seed.sql("INSERT INTO items VALUES (5);\n" + sql + "\n")
    _refused_before_migrating(run, database, "seed.sql: line 2: dblink (a session of its own")


def test_python_seed_sql_using_dblink_is_refused(seed: Seeder, database: Database) -> None:
    run = seed.py(
        "import sqlalchemy as sa\n\n"
        "def seed(connection):\n"
        "    connection.execute(sa.text('INSERT INTO items VALUES (1)'))\n"
        "    connection.execute(sa.text(\"SELECT dblink_exec('x', 'INSERT INTO items VALUES (2)')\"))\n"
    )
    assert run.returncode == 1, run.output
    assert "dblink (a session of its own" in run.output and "seed.py line 5" in run.output
    assert database.scalar("SELECT count(*) FROM items") == 0
