"""`restore` against a real server with real pg_dump/pg_restore: the round trip (backup, damage,
restore gives back the same rows and schema), the confirmation, the checksum, the archive
checks, dry runs, an atomic failure, and what is deliberately kept (the deploy history, relations
newer than the backup)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployer.steps.drift import compare, snapshot
from deployer.steps.restore import parse_toc, read_header
from tests.helpers import AlembicProject, Database, GitHubRunner, Run, alembic_upgrade

SCHEMA = """
op.execute("CREATE EXTENSION IF NOT EXISTS vector")
op.execute("CREATE TYPE mood AS ENUM ('calm', 'busy')")
op.execute("CREATE TABLE orgs (id int PRIMARY KEY, name text NOT NULL DEFAULT 'acme', mood mood)")
op.execute(
    "CREATE TABLE notes (id serial PRIMARY KEY, org_id int NOT NULL REFERENCES orgs (id), "
    "body text, embedding vector(3))"
)
op.create_index('notes_org_id_idx', 'notes', ['org_id'])
op.execute("CREATE SCHEMA reporting")
op.execute(
    "CREATE VIEW reporting.note_counts AS SELECT org_id, count(*) AS n FROM notes GROUP BY org_id"
)
"""
DATA = """
op.execute("INSERT INTO orgs (id, name, mood) SELECT g, 'org ' || g, 'calm' FROM generate_series(1, 30) g")
op.execute("INSERT INTO notes (org_id, body, embedding) SELECT 1 + g % 30, 'n' || g, '[1,2,3]' FROM generate_series(1, 200) g")
"""


@pytest.fixture
def gh(deploy: Callable[..., Run]) -> Callable[..., Run]:
    """The shared `deploy` (fresh file-command files for every run)."""
    return deploy


def counts(database: Database) -> dict[str, int]:
    return {
        t: int(database.scalar(f"SELECT count(*) FROM {t}"))  # type: ignore[arg-type]
        for t in ("orgs", "notes", "alembic_version")
    }


def schema_of(database: Database, history: str = "db_deploy") -> dict[str, str]:
    with database.engine.connect() as conn:
        return snapshot(conn, history_schema=history).objects


@pytest.fixture
def backed_up(project: AlembicProject, database: Database, github: GitHubRunner, gh) -> Path:
    """A database at 0002 with data, and its backup (taken by the backup command)."""
    project.add(
        "0001_schema",
        SCHEMA,
        "op.execute('DROP SCHEMA reporting CASCADE')\n"
        "op.drop_table('notes')\nop.drop_table('orgs')\nop.execute('DROP TYPE mood')",
    )
    project.add(
        "0002_data", DATA, "op.execute('DELETE FROM notes')\nop.execute('DELETE FROM orgs')"
    )
    alembic_upgrade(project.root, database)
    run = gh(project, command="backup", **{"backup-path": "backups/"})
    assert run.returncode == 0, run.output
    return github.workspace / github.outputs()["backup-file"]


def test_round_trip_restores_rows_and_schema(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, backed_up: Path
) -> None:
    rows, schema = counts(database), schema_of(database)
    # A later revision (a table, and the version moves on), then damage of every kind.
    project.add(
        "0003_tags", "op.create_table('tags', sa.Column('id', sa.Integer))", "op.drop_table('tags')"
    )
    alembic_upgrade(project.root, database)
    database.execute("DELETE FROM notes WHERE id % 2 = 0")
    database.execute("UPDATE orgs SET name = 'damaged'")
    database.execute("ALTER TABLE orgs ADD COLUMN extra int")
    database.execute("ALTER TABLE orgs ALTER COLUMN name DROP DEFAULT")
    database.execute("DROP INDEX notes_org_id_idx")
    database.execute("DROP VIEW reporting.note_counts")
    database.execute("ALTER TYPE mood ADD VALUE 'angry'")
    assert counts(database) != rows and schema_of(database) != schema

    run = gh(
        project,
        command="restore",
        **{"backup-path": str(backed_up), "confirm-restore": database.name},
    )
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["status"] == "success"
    assert out["restored-revision"] == "0002_data"
    assert out["current-revision"] == "0002_data" and out["head-revision"] == "0003_tags"
    assert counts(database) == rows
    assert database.scalar("SELECT count(*) FROM orgs WHERE name = 'damaged'") == 0
    after = schema_of(database)
    # Everything the backup held is back exactly; the newer table is left in place, and said so.
    extra = {k for k in after if "tags" in k}
    assert extra == {"table public.tags", "column public.tags.id"}
    assert {k: v for k, v in after.items() if k not in extra} == schema
    summary = github.summary()
    assert "### Restore" in summary and "`0003_tags` → `0002_data`" in summary
    assert "public.tags" in summary and "::warning" in run.stdout
    assert "extension vector: extension already installed" in summary
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["restore"]["left_in_place"] == ["public.tags"]
    assert report["restore"]["tables"] == 3  # orgs, notes, alembic_version


def test_restore_keeps_the_deploy_history(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, backed_up: Path
) -> None:
    database.execute("CREATE SCHEMA IF NOT EXISTS db_deploy")
    database.execute("CREATE TABLE IF NOT EXISTS db_deploy.audit (what text)")
    database.execute("INSERT INTO db_deploy.audit VALUES ('after the backup')")
    run = gh(
        project,
        command="restore",
        **{"backup-path": str(backed_up), "confirm-restore": database.name},
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT what FROM db_deploy.audit") == "after the backup"


def test_restore_refusals_change_nothing(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, backed_up: Path
) -> None:
    database.execute("DELETE FROM notes")
    path = str(backed_up)

    def refused(expect: str, **inputs: str) -> None:
        run = gh(project, command="restore", **inputs)
        assert run.returncode == 2, run.output
        assert expect in github.outputs()["error"], github.outputs()["error"]
        assert database.scalar("SELECT count(*) FROM notes") == 0

    refused("set confirm-restore", **{"backup-path": path})
    refused("nothing was restored", **{"backup-path": path, "confirm-restore": "production"})
    refused("needs backup-path", **{"confirm-restore": database.name})
    refused("does not exist", **{"backup-path": "nope.dump", "confirm-restore": database.name})

    # A damaged file: the checksum no longer matches.
    bad = backed_up.with_name("tampered.dump")
    data = bytearray(backed_up.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    bad.with_name("tampered.dump.sha256").write_text(
        backed_up.with_name(backed_up.name + ".sha256").read_text()
    )
    refused("checksum mismatch", **{"backup-path": str(bad), "confirm-restore": database.name})
    # No sidecar: never restore an unverified file.
    bad.with_name("tampered.dump.sha256").unlink()
    refused("no checksum file", **{"backup-path": str(bad), "confirm-restore": database.name})
    # Two dumps in a folder: which one?
    refused(
        "2 .dump files", **{"backup-path": str(backed_up.parent), "confirm-restore": database.name}
    )


def test_not_an_archive_is_refused(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, tmp_path: Path
) -> None:
    import hashlib

    plain = github.workspace / "backup.dump"
    plain.write_text("-- a plain SQL dump\nDROP TABLE users;\n")
    plain.with_name("backup.dump.sha256").write_text(
        hashlib.sha256(plain.read_bytes()).hexdigest() + "  backup.dump\n"
    )
    run = gh(
        project,
        command="restore",
        **{"backup-path": "backup.dump", "confirm-restore": database.name},
    )
    assert run.returncode == 2, run.output
    assert "not a pg_dump custom-format archive" in github.outputs()["error"]


def test_dry_run_verifies_and_changes_nothing(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, backed_up: Path
) -> None:
    database.execute("DELETE FROM notes")
    # A folder with exactly one dump (an artifact downloaded by actions/download-artifact).
    run = gh(
        project,
        command="restore",
        **{
            "backup-path": str(backed_up.parent),
            "confirm-restore": database.name,
            "dry-run": "true",
        },
    )
    assert run.returncode == 0, run.output
    assert database.scalar("SELECT count(*) FROM notes") == 0
    assert "Dry run: " in github.summary() and "verified, nothing restored" in github.summary()
    assert github.outputs()["restored-revision"] == ""


@pytest.fixture
def owner_role(database: Database, admin_engine: sa.Engine) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
    yield name
    with database.engine.begin() as conn:
        conn.execute(sa.text(f'REASSIGN OWNED BY "{name}" TO postgres'))
        conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))


def test_failed_restore_is_rolled_back_whole(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    gh,
    backed_up: Path,
    owner_role: str,
    pg_server,
) -> None:
    """A role that may read and write but not drop the tables: pg_restore fails part-way, and
    its single transaction leaves the database exactly as it was (exit 1)."""
    database.execute("DELETE FROM notes WHERE id > 100")
    for sql in (
        f'GRANT CONNECT, TEMP ON DATABASE "{database.name}" TO "{owner_role}"',
        f'GRANT USAGE, CREATE ON SCHEMA public, reporting TO "{owner_role}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA public, reporting TO "{owner_role}"',
    ):
        database.execute(sql)
    before = schema_of(database), counts(database)
    url = f"postgresql://{owner_role}@/{database.name}?host={pg_server.dir}"
    run = gh(
        project,
        command="restore",
        **{"backup-path": str(backed_up), "confirm-restore": database.name, "database-url": url},
    )
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "restore"
    assert "rolled back (the database is unchanged)" in out["error"]
    assert "must be owner" in out["error"]
    assert (schema_of(database), counts(database)) == before


def test_archive_header_and_toc(backed_up: Path) -> None:
    header = read_header(backed_up)
    assert header.database.startswith("t_")
    assert header.server_major == 18 and header.pg_dump_major == 18
    from deployer import pgtools
    from deployer.steps.restore import filter_toc, list_archive

    entries = parse_toc(list_archive(pgtools.find_tool("pg_restore", 18), backed_up))
    kinds = {(e.desc, e.schema, e.tag) for e in entries if e.desc}
    assert ("TABLE", "public", "orgs") in kinds
    assert ("TABLE DATA", "public", "notes") in kinds
    assert ("VIEW", "reporting", "note_counts") in kinds
    assert ("EXTENSION", "-", "vector") in kinds
    listing, skipped = filter_toc(
        entries, history_schema="reporting", installed_extensions={"vector"}
    )
    assert "extension vector: extension already installed" in skipped
    assert "schema reporting: the deploy history is kept" in skipped
    commented = [
        line for line in listing.splitlines() if line.startswith(";") and "; " in line[1:6]
    ]
    assert any("VIEW reporting note_counts" in line for line in commented)
    assert not any("TABLE public orgs" in line for line in commented)


def test_compare_sees_what_restore_must_repair(database: Database) -> None:
    """The schema comparison the round trip relies on is not blind."""
    database.execute("CREATE TABLE t (id int PRIMARY KEY, name text DEFAULT 'x')")
    before = schema_of(database)
    database.execute("ALTER TABLE t ALTER COLUMN name SET DEFAULT 'y'")
    with database.engine.connect() as conn:
        after = snapshot(conn, history_schema="db_deploy")
    from deployer.steps.drift import Catalog

    [diff] = compare(after, Catalog(objects=before, extension_versions={}, server_version="18"))
    assert diff.kind == "column" and diff.name == "public.t.name" and diff.change == "differs"
