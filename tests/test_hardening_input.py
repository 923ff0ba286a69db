"""Issue 15, point 10: all input is checked before anything changes (real PostgreSQL).

Numbers out of range, a seed file that is not UTF-8 or does not parse (tests/test_hardening_seed
.py), a `history-schema` that is the version table's schema: exit 2, one line, and the database
exactly as it was (no version table, no tables, no history schema).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.helpers import AlembicProject, Database, GitHubRunner

ITEMS = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True))"


def _untouched(database: Database, *schemas: str) -> None:
    with database.engine.connect() as conn:
        tables = (
            conn.execute(
                sa.text(
                    "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            )
            .scalars()
            .all()
        )
        names = set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars().all())
    assert tables == [], tables
    assert "db_deploy" not in names
    for schema in schemas:
        assert schema in names  # made by the test, still there, still empty


CASES = [
    ("smoke-expect", "items>=99999999999999999999999", "is out of range"),
    ("smoke-expect", "items>=9223372036854775808", "is out of range"),
    ("smoke-expect", "items>=" + "9" * 5000, "is out of range"),
    ("deploy-lock-wait", "99999999999999999999999", "at most 2147483s"),
    ("connect-timeout", "1000h", "at most 2147483s"),
    ("slack-timeout", "99999999999999999999999s", "at most 2147483s"),
    ("lock-timeout", "99999999999999999999999", "at most 2147483s"),
    ("history-schema", "public", "apart from the version table"),
    ("history-schema", "information_schema", "apart from the version table"),
    ("history-schema", "pg_history", "reserved by PostgreSQL"),
    ("history-schema", "h" * 64, "63-byte limit"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"), CASES, ids=[f"{c[0]}-{c[1][:24]}" for c in CASES]
)
def test_bad_values_are_refused_before_anything_changes(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    deploy,
    name: str,
    value: str,
    message: str,
) -> None:
    project.add("0001_items", ITEMS, "op.drop_table('items')")
    run = deploy(project, **{name: value})
    assert run.returncode == 2, run.output
    assert f"invalid {name}: " in run.output and message in run.output
    assert "Traceback" not in run.output
    errors = [ln for ln in run.stdout.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1, errors
    _untouched(database)


def test_the_largest_bigint_is_accepted(
    project: AlembicProject, database: Database, deploy
) -> None:
    project.add("0001_items", ITEMS, "op.drop_table('items')")
    run = deploy(project, **{"smoke-expect": "items>=9223372036854775807"})
    assert run.returncode == 1, run.output  # checked by the smoke: 0 rows, not a server error
    assert "out of range" not in run.output
    assert "items" in run.output


def test_history_schema_that_is_env_pys_version_table_schema_is_refused(
    project: AlembicProject, database: Database, deploy
) -> None:
    with database.engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA app_meta"))
    env_py = project.root / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "transaction_per_migration=PER_MIGRATION)",
            "transaction_per_migration=PER_MIGRATION, version_table_schema='app_meta')",
        )
    )
    project.add("0001_items", ITEMS, "op.drop_table('items')")
    run = deploy(project, **{"history-schema": "app_meta"})
    assert run.returncode == 2, run.output
    assert "invalid history-schema: 'app_meta' is the version table's schema" in run.output
    _untouched(database, "app_meta")
    # And with the history elsewhere, the same project deploys.
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT version_num FROM app_meta.alembic_version") == "0001_items"
