"""Issue 15, point 11: files written in the workspace belong to the workspace's owner.

The runner runs a container action as root, with the workspace owned by the runner's user on
the host (uid 1001). What db-deploy writes there (the JSON report, the summary and outputs files
asked for, a backup and its checksum sidecar, the folders made for them) is given to the
workspace folder's owner; a backup stays private to that owner (0600). Proved by running as
root against a workspace owned by uid 1001, then reading and deleting everything as uid 1001
(`setpriv`, util-linux), against a real PostgreSQL and a real pg_dump.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from tests.helpers import AlembicProject, Database, GitHubRunner, Run
from tests.helpers.scenarios import OWNER, as_owner, assert_owned, needs_root_and_setpriv
from tests.helpers.scenarios import owned_runner_fixture as owned_runner_fixture

pytestmark = needs_root_and_setpriv


def _everything(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def _add_table_a(project: AlembicProject) -> None:
    project.add(
        "0001_a",
        "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))",
        "op.drop_table('a')",
    )


def test_what_a_root_run_writes_in_the_workspace_is_the_owners(
    project: AlembicProject,
    database: Database,
    owned_runner: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    _add_table_a(project)
    ws = owned_runner.workspace
    inputs = {
        "database-url": database.url,
        "migrations-path": str(project.root),
        "backup-before": "true",
        "backup-path": "artefacts/backups/",
        "report-file": "artefacts/reports/db-deploy-report.json",
    }
    run = run_cli(
        "--summary-file",
        "artefacts/summary/summary.md",
        "--output-file",
        "artefacts/summary/outputs.env",
        env=owned_runner.with_inputs(**inputs),
        cwd=ws,
    )
    assert run.returncode == 0, run.output
    written = _everything(ws)
    names = {p.relative_to(ws).as_posix() for p in written}
    assert "artefacts/reports/db-deploy-report.json" in names
    assert "artefacts/summary/summary.md" in names and "artefacts/summary/outputs.env" in names
    dumps = [p for p in written if p.suffix == ".dump"]
    assert len(dumps) == 1 and Path(str(dumps[0]) + ".sha256").exists()
    assert_owned(written)
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600  # a dump stays private

    # As the workspace's owner: everything reads, and everything goes.
    files = " ".join(f"'{p.relative_to(ws)}'" for p in written if p.is_file())
    check = as_owner(f"cat {files} > /dev/null; rm -rf artefacts; test ! -e artefacts", ws)
    assert check.returncode == 0, check.stderr
    assert not (ws / "artefacts").exists()


def test_backup_command_as_root_leaves_the_owner_able_to_upload_and_clean(
    project: AlembicProject,
    database: Database,
    owned_runner: GitHubRunner,
    run_cli: Callable[..., Run],
) -> None:
    """`command: backup` with the default path: `backups/` and the dump are the owner's."""
    _add_table_a(project)
    ws = owned_runner.workspace
    env = owned_runner.with_inputs(
        command="backup", **{"database-url": database.url, "migrations-path": str(project.root)}
    )
    run = run_cli(env=env, cwd=ws)
    assert run.returncode == 0, run.output
    folder = ws / "backups"
    assert folder.stat().st_uid == OWNER
    check = as_owner(
        'for f in backups/* db-deploy-report.json; do cat "$f" > /dev/null; done; '
        "rm -rf backups db-deploy-report.json",
        ws,
    )
    assert check.returncode == 0, check.stderr
    assert _everything(ws) == []


def test_files_outside_the_workspace_are_left_alone(
    project: AlembicProject,
    database: Database,
    owned_runner: GitHubRunner,
    run_cli: Callable[..., Run],
    tmp_path: Path,
) -> None:
    _add_table_a(project)
    report = tmp_path / "elsewhere" / "report.json"
    env = owned_runner.with_inputs(
        **{
            "database-url": database.url,
            "migrations-path": str(project.root),
            "report-file": str(report),
        }
    )
    run = run_cli(env=env, cwd=owned_runner.workspace)
    assert run.returncode == 0, run.output
    assert report.stat().st_uid == 0 and report.parent.stat().st_uid == 0
