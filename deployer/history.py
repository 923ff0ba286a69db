"""The deploy history: what was applied, by whom, from which script — and proof it wasn't edited.

`<history-schema>.db_deploy_history` (schema `db_deploy` by default, never beside Alembic's
version table: autogenerate would propose dropping it) records every applied revision with the
SHA-256 of its script file. Before a deploy applies anything, every revision the database already
has is checked against its recorded checksum: an edited migration fails the run (exit 1) unless
`allow-edited-migrations` accepts and re-records it. Revisions applied before the history existed
are baselined (recorded with kind `baseline`) without failing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer.errors import StepFailed
from deployer.results import HistoryEntry, IntegrityReport, Telemetry

if TYPE_CHECKING:
    from alembic.script import Script

    from deployer.alembic_project import AlembicProject

Entry = tuple[str, str, str, float | None]  # revision, kind, checksum, seconds

TABLE = "db_deploy_history"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def checksum(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def exists(conn: sa.Connection, schema: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{_q(schema)}.{TABLE}"}
        ).scalar()
    )


def ensure(conn: sa.Connection, schema: str) -> None:
    """Create the schema and table on first use (idempotent, committed at once)."""
    if exists(conn, schema):  # one round trip; the caller's transaction goes on
        return
    conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}"))
    conn.execute(
        sa.text(
            f"""
            CREATE TABLE IF NOT EXISTS {_q(schema)}.{TABLE} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                revision text NOT NULL,
                kind text NOT NULL CHECK (kind IN ('upgrade', 'downgrade', 'baseline',
                                                   'accepted-edit')),
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                seconds double precision,
                tool_version text NOT NULL DEFAULT '',
                actor text NOT NULL DEFAULT '',
                sha text NOT NULL DEFAULT '',
                run_url text NOT NULL DEFAULT ''
            )
            """
        )
    )
    conn.execute(
        sa.text(
            f"CREATE INDEX IF NOT EXISTS {TABLE}_revision_idx ON {_q(schema)}.{TABLE} (revision, id)"
        )
    )
    conn.commit()


def entry(script: Script, upgrade: bool, seconds: float | None) -> Entry:
    """The history entry of a revision just applied (or reverted): its script's checksum now."""
    kind = "upgrade" if upgrade else "downgrade"
    return (
        script.revision,
        kind,
        checksum(script.path),
        None if seconds is None else round(seconds, 4),
    )


def record(
    conn: sa.Connection,
    schema: str,
    entries: list[Entry],
    *,
    telemetry: Telemetry,
) -> None:
    """Insert entries `(revision, kind, checksum, seconds)` on `conn`, inside whatever transaction
    it is in (the migration's own: an entry commits or rolls back with its revision). Several
    go as one executemany, which psycopg sends as one pipeline, not a round trip per row."""
    if not entries:
        return
    rows = [
        {
            "r": revision,
            "k": kind,
            "c": digest,
            "s": seconds,
            "v": telemetry.tool_version,
            "a": telemetry.actor,
            "sha": telemetry.sha,
            "u": telemetry.run_url,
        }
        for revision, kind, digest, seconds in entries
    ]
    conn.execute(
        sa.text(
            f"INSERT INTO {_q(schema)}.{TABLE} (revision, kind, checksum, seconds, tool_version, "
            "actor, sha, run_url) VALUES (:r, :k, :c, :s, :v, :a, :sha, :u)"
        ),
        rows if len(rows) > 1 else rows[0],
    )


def latest_checksums(conn: sa.Connection, schema: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            f"SELECT DISTINCT ON (revision) revision, checksum FROM {_q(schema)}.{TABLE} "
            "WHERE kind <> 'downgrade' ORDER BY revision, id DESC"
        )
    )
    return dict(rows.all())


def verify(
    conn: sa.Connection,
    schema: str,
    project: AlembicProject,
    heads: list[str],
    *,
    allow_edited: bool,
    telemetry: Telemetry,
    write: bool = True,
) -> IntegrityReport:
    """Check every applied revision's script against its recorded checksum. Baselines what the
    history lacks; raises StepFailed (exit 1) on an edited script unless `allow_edited`.
    `write=False` (a dry run): the same verdict, nothing written."""
    applied = sorted(project.ancestors(heads)) if heads else []
    recorded = latest_checksums(conn, schema)
    report = IntegrityReport(checked=len(applied), baselined=[], accepted=[])
    edited: list[tuple[str, str, str]] = []
    baseline: list[Entry] = []
    for rev in applied:
        now = checksum(project.revision(rev).path)
        before = recorded.get(rev)
        if before is None:
            report.baselined.append(rev)  # type: ignore[union-attr]
            baseline.append((rev, "baseline", now, None))
        elif before != now:
            edited.append((rev, before, now))
    if write:
        record(conn, schema, baseline, telemetry=telemetry)
    if edited and not allow_edited:
        conn.rollback()
        details = "; ".join(f"{r}: recorded {b[:12]}…, now {n[:12]}…" for r, b, n in edited)
        raise StepFailed(
            f"{len(edited)} already applied migration(s) changed since they ran ({details}). "
            "Restore the original file(s), or set allow-edited-migrations: true to accept them",
            step="migrate",
            detail=str([{"revision": r, "recorded": b, "current": n} for r, b, n in edited]),
        )
    if not write:
        conn.rollback()
        report.accepted = [rev for rev, _, _ in edited]
        return report
    record(
        conn,
        schema,
        [(rev, "accepted-edit", now, None) for rev, _, now in edited],
        telemetry=telemetry,
    )
    report.accepted = [rev for rev, _, _ in edited]
    conn.commit()
    return report


def read(conn: sa.Connection, schema: str, limit: int = 20) -> list[HistoryEntry]:
    if not exists(conn, schema):
        return []
    rows = conn.execute(
        sa.text(
            f"SELECT revision, kind, checksum, applied_at, seconds, tool_version, actor, sha, "
            f"run_url FROM {_q(schema)}.{TABLE} ORDER BY id DESC LIMIT :n"
        ),
        {"n": limit},
    ).all()
    if conn.in_transaction():
        conn.rollback()
    return [
        HistoryEntry(
            revision=r[0],
            kind=r[1],
            checksum=r[2],
            applied_at=r[3].isoformat(timespec="seconds")
            if isinstance(r[3], datetime)
            else str(r[3]),
            seconds=r[4],
            tool_version=r[5],
            actor=r[6],
            sha=r[7],
            run_url=r[8],
        )
        for r in rows
    ]
