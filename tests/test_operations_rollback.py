"""`rollback` against a real server: Alembic downgrades under the deploy lock with deploy's
per-revision report, every refusal (exit 2, nothing changed), a failing downgrade (exit 1) and a
held lock (exit 3)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer import db
from deployer.steps.rollback import irreversible
from tests.helpers import AlembicProject, Database, GitHubRunner, Run, alembic_upgrade

A = ("op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))", "op.drop_table('a')")
B = ("op.create_table('b', sa.Column('id', sa.Integer))", "op.drop_table('b')")
C = ("op.add_column('b', sa.Column('name', sa.Text))", "op.drop_column('b', 'name')")


@pytest.fixture
def gh(deploy: Callable[..., Run]) -> Callable[..., Run]:
    """`deploy` with this module's command (fresh file-command files for every run)."""
    return functools.partial(deploy, command="rollback")


def chain(project: AlembicProject, database: Database) -> AlembicProject:
    project.add("0001_a", *A, message="create a")
    project.add("0002_b", *B, message="create b")
    project.add("0003_name", *C, message="b.name")
    alembic_upgrade(project.root, database)
    return project


def columns(database: Database, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(database.engine).get_columns(table)}


def test_rollback_one_revision_reports_like_deploy(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="-1")
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}
    assert columns(database, "b") == {"id"}
    out = github.outputs()
    assert out["status"] == "success"
    assert out["previous-revision"] == "0003_name"
    assert out["current-revision"] == "0002_b"
    assert out["head-revision"] == "0003_name"
    assert out["pending-count"] == "1"
    [reverted] = json.loads(out["applied"])
    assert reverted["revision"] == "0003_name" and reverted["description"] == "b.name"
    summary = github.summary()
    assert "### Rollback" in summary
    assert "Reverted 1 revision(s), newest first: `0003_name`" in summary
    assert "`0003_name` to `0002_b`" in summary
    assert "::group::rollback" in run.stdout and "reverted 0003_name" in run.stdout


def test_rollback_to_a_revision_and_to_base(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="0001_a")
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"} and "b" not in database.tables()
    assert [a["revision"] for a in json.loads(github.outputs()["applied"])] == [
        "0003_name",
        "0002_b",
    ]
    run = gh(project, target="base")
    assert run.returncode == 0, run.output
    assert database.version() == set() and "a" not in database.tables()
    assert github.outputs()["current-revision"] == ""


def test_rollback_to_the_current_revision_is_a_noop(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="0003_name")
    assert run.returncode == 0, run.output
    assert github.outputs()["status"] == "noop"
    assert "Nothing to revert" in github.summary()


def test_dry_run_plans_and_changes_nothing(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="-2", **{"dry-run": "true", "environment": "production"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0003_name"}
    assert "would revert 2 revision(s), newest first: `0003_name`, `0002_b`" in github.summary()
    assert github.outputs()["applied-count"] == "0"


def test_refusals_are_exit_2_and_change_nothing(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)

    def refused(expect: str, **inputs: str) -> None:
        run = gh(project, **inputs)
        assert run.returncode == 2, run.output
        out = github.outputs()
        assert expect in out["error"], out["error"]
        assert out["failed-step"] == "rollback"
        assert database.version() == {"0003_name"} and columns(database, "b") == {"id", "name"}

    refused("rollback needs a target")  # target defaults to heads
    refused("rollback needs a target", target="head")
    refused("unknown target revision", target="0042_nope")
    refused(
        "refusing to roll back the production environment",
        target="-1",
        environment="production",
    )
    # Going up is deploy's job.
    assert gh(project, target="0001_a").returncode == 0
    run = gh(project, target="0003_name")
    assert run.returncode == 2, run.output
    assert "rollback only downgrades" in github.outputs()["error"]
    assert database.version() == {"0001_a"}


def test_production_with_confirmation(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="-1", environment="production", **{"confirm-rollback": "true"})
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}


@pytest.mark.parametrize(
    ("downgrade", "reason"),
    [
        ("pass", "its downgrade() is empty"),
        ('"""Nothing to do."""', "its downgrade() is empty"),
        ("raise NotImplementedError('one way only')", "its downgrade() raises NotImplementedError"),
        (
            "op.execute('SELECT 1')\nraise NotImplementedError",
            "its downgrade() raises NotImplementedError",
        ),
    ],
)
def test_revision_without_a_real_downgrade_is_refused(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    gh,
    downgrade: str,
    reason: str,
) -> None:
    project.add("0001_a", *A)
    project.add("0002_b", B[0], downgrade)
    project.add("0003_name", *C)
    alembic_upgrade(project.root, database)
    run = gh(project, target="0001_a")
    assert run.returncode == 2, run.output
    error = github.outputs()["error"]
    assert "rollback refused, nothing was changed" in error
    assert f"0002_b (0002_b.py): {reason}" in error
    assert database.version() == {"0003_name"} and columns(database, "b") == {"id", "name"}
    if downgrade == "pass":
        # One step back does not pass through it: allowed.
        assert gh(project, target="-1").returncode == 0
        assert database.version() == {"0002_b"}


def test_merge_revision_with_empty_downgrade_is_fine(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", *A)
    project.add(
        "0002_l",
        "op.add_column('a', sa.Column('l', sa.Integer))",
        "op.drop_column('a', 'l')",
        down="0001_a",
    )
    project.add(
        "0002_r",
        "op.add_column('a', sa.Column('r', sa.Integer))",
        "op.drop_column('a', 'r')",
        down="0001_a",
    )
    project.add("0003_merge", "pass", "pass", down=("0002_l", "0002_r"))
    alembic_upgrade(project.root, database)
    run = gh(project, target="0001_a")
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"} and columns(database, "a") == {"id"}


def test_failing_downgrade_is_exit_1_at_the_last_committed_revision(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", *A)
    project.add("0002_b", B[0], "op.execute('DROP TABLE no_such_table')")
    project.add("0003_name", *C)
    alembic_upgrade(project.root, database)
    run = gh(project, target="0001_a")
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "rollback"
    assert "revision 0002_b failed to downgrade" in out["error"]
    assert "no_such_table" in out["error"]
    # Per-revision transactions: 0003 was reverted and committed, 0002 was not.
    assert database.version() == {"0002_b"}
    assert out["current-revision"] == "0002_b"
    assert "database left at 0002_b" in out["error"]


def test_held_deploy_lock_is_exit_3(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    key = db.lock_key(database.name, ".alembic_version")
    with database.engine.connect() as holder:
        assert holder.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        run = gh(project, target="-1", **{"deploy-lock-wait": "1s"})
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    assert run.returncode == 3, run.output
    assert "another deploy of this database is running" in github.outputs()["error"]
    assert database.version() == {"0003_name"}


def test_backup_before_rollback(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    chain(project, database)
    run = gh(project, target="-1", **{"backup-before": "true"})
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["backup-revision"] == "0003_name"
    assert (github.workspace / out["backup-file"]).is_file()
    assert "### Backup before the rollback" in github.summary()
    assert database.version() == {"0002_b"}


def test_irreversible_reads_the_syntax_tree(tmp_path: Path) -> None:
    def check(body: str, up: str = "op.drop_table('x')") -> str:
        path = tmp_path / "rev.py"
        path.write_text(f"def upgrade():\n    {up}\n\n\ndef downgrade():\n{body}\n")
        return irreversible(path)

    assert check("    op.drop_table('y')") == ""
    assert (
        check("    ...")
        == "its downgrade() is empty (pass): the changes of its upgrade() would stay"
    )
    assert check("    pass", up="pass") == ""  # a no-op revision
    assert check("    if True:\n        raise NotImplementedError") == ""  # a decision, not a stub
    assert check("    raise NotImplementedError()") == "its downgrade() raises NotImplementedError"
    (tmp_path / "nodown.py").write_text("def upgrade():\n    pass\n")
    assert irreversible(tmp_path / "nodown.py") == "it has no downgrade() function"
