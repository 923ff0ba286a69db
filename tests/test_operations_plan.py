"""`plan` (deploy in dry-run mode) as a pull request runs it: what deploy would apply, with the
SQL of each revision from Alembic's offline mode, in the summary and as outputs; nothing changes;
the exit codes of a plan that cannot be made."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable

import pytest

from tests.helpers import AlembicProject, Database, GitHubRunner, Run, alembic_upgrade

A = ("op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))", "op.drop_table('a')")
B = (
    "op.create_table('b', sa.Column('id', sa.Integer, primary_key=True), sa.Column('note', sa.Text))",
    "op.drop_table('b')",
)
IDX = ("op.create_index('b_note_idx', 'b', ['note'])", "op.drop_index('b_note_idx', 'b')")


@pytest.fixture
def gh(deploy: Callable[..., Run], github: GitHubRunner) -> Callable[..., Run]:
    """A pull_request run, as the db-plan workflow makes it."""
    github.env.update(GITHUB_EVENT_NAME="pull_request", GITHUB_REF="refs/pull/7/merge")
    return functools.partial(deploy, command="plan")


def test_plan_lists_pending_revisions_with_their_sql(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", *A, message="create a")
    alembic_upgrade(project.root, database)
    project.add("0002_b", *B, message="create b")
    project.add("0003_idx", *IDX, message="index b.note")
    before = database.rows(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1"
    )
    run = gh(project)
    assert run.returncode == 0, run.output
    # Nothing changed: not the schema, not the version, not even the tool's own schema.
    assert database.version() == {"0001_a"}
    assert database.tables() == {"a", "alembic_version"}
    assert (
        database.rows("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1")
        == before
    )

    out = github.outputs()
    assert out["status"] == "success"
    assert out["applied-count"] == "0"
    assert out["pending-count"] == "2"
    assert out["previous-revision"] == "0001_a" and out["head-revision"] == "0003_idx"
    assert json.loads(out["pending-revisions"]) == [
        {"revision": "0002_b", "description": "create b"},
        {"revision": "0003_idx", "description": "index b.note"},
    ]
    sql = out["plan-sql"]
    assert sql.index("-- 0002_b") < sql.index("CREATE TABLE b") < sql.index("-- 0003_idx")
    assert "CREATE INDEX b_note_idx ON b (note)" in sql
    assert "UPDATE alembic_version SET version_num='0003_idx'" in sql
    # each revision's SQL is its own transaction, BEGIN to COMMIT (Alembic writes the next
    # revision's BEGIN before its marker: it is moved back where it belongs)
    for part in sql.split("-- ")[1:]:
        body = part.split("\n", 1)[1].strip()
        assert body.startswith("BEGIN;") and body.endswith("COMMIT;"), body

    summary = github.summary()
    assert "2 revision(s) would be applied" in summary and "(dry run)" in summary
    assert "<code>0002_b</code> SQL" in summary and "```sql" in summary
    assert "CREATE INDEX b_note_idx ON b (note)" in summary
    assert "### Security preflight" in summary  # the cheap checks ran first, read-only
    assert "refs/pull/7/merge" in summary


def test_plan_with_nothing_pending(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", *A)
    alembic_upgrade(project.root, database)
    run = gh(project)
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["status"] == "noop"
    assert out["pending-count"] == "0"
    assert json.loads(out["pending-revisions"]) == []
    assert out["plan-sql"] == ""
    assert "0 revision(s) would be applied" in github.summary()


def test_plan_exit_codes(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", *A)
    # 2: a target the migrations do not have.
    run = gh(project, target="0099_nope")
    assert run.returncode == 2, run.output
    assert "unknown target revision" in github.outputs()["error"]
    # 3: nobody listens there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = gh(
        project,
        **{"database-url": f"postgresql://u:pw@127.0.0.1:{port}/db", "connect-retries": "1"},
    )
    assert run.returncode == 3, run.output
    assert github.outputs()["failed-step"] == "preflight"
    # 2: two heads, a merge is missing (a configuration error, nothing changed).
    project.add("0002_l", A[0].replace("'a'", "'l'"), down="0001_a")
    project.add("0002_r", A[0].replace("'a'", "'r'"), down="0001_a")
    run = gh(project)
    assert run.returncode == 2, run.output
    assert "2 heads" in github.outputs()["error"]
    assert database.tables() == set()
