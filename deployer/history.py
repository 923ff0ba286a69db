"""The deploy history: what was applied, by whom, from which script — and proof it wasn't edited.

`<history-schema>.db_deploy_history` (schema `db_deploy` by default, never beside Alembic's
version table: autogenerate would propose dropping it) records every applied revision with two
checksums of its script file: `code_checksum`, of what the code does (deployer/checksums.py: line
endings, a BOM, comments, docstrings and layout left out), which is compared, and `checksum`, the
SHA-256 of its bytes, kept for audit. Before a deploy applies anything, every revision the
database already has is checked against its recorded code checksum: an edited migration fails the
run (exit 1) unless `allow-edited-migrations` accepts and re-records it. Rows written before code
checksums existed are compared by their bytes, and re-keyed with the code checksum when the bytes
still match. Revisions applied before the history existed are baselined (recorded with kind
`baseline`) without failing.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer.checksums import PREFIX, code_checksum, raw_checksum
from deployer.errors import StepFailed
from deployer.results import HistoryEntry, IntegrityReport, Telemetry
from deployer.sql import quote_ident

if TYPE_CHECKING:
    from alembic.script import Script

    from deployer.alembic_project import AlembicProject

Entry = tuple[str, str, "Checksums", float | None]  # revision, kind, checksums, seconds

TABLE = "db_deploy_history"


Checksums = tuple[str, str]  # (raw: SHA-256 of the bytes, code: deployer.checksums)


def checksums(path: str | Path, data: bytes | None = None) -> Checksums:
    """Of a revision file Alembic has imported (so it compiles: see `code_checksum`)."""
    if data is None:
        data = Path(path).read_bytes()
    return raw_checksum(data), code_checksum(path, data, compiles=True)


def exists(conn: sa.Connection, schema: str) -> bool:
    return bool(
        conn.execute(
            sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{quote_ident(schema)}.{TABLE}"}
        ).scalar()
    )


def ensure(conn: sa.Connection, schema: str) -> None:
    """Create the schema and table on first use, or add what a table of an older version lacks
    (idempotent, committed at once)."""
    state = conn.execute(
        sa.text(
            "SELECT to_regclass(:t) IS NOT NULL, EXISTS (SELECT FROM pg_attribute "
            "WHERE attrelid = to_regclass(:t) AND attname = 'code_checksum' AND NOT attisdropped)"
        ),
        {"t": f"{quote_ident(schema)}.{TABLE}"},
    ).one()
    if state[0] and state[1]:  # one round trip; the caller's transaction goes on
        return
    if state[0]:
        conn.execute(
            sa.text(
                f"ALTER TABLE {quote_ident(schema)}.{TABLE} ADD COLUMN IF NOT EXISTS code_checksum text"
            )
        )
        conn.commit()
        return
    conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
    conn.execute(
        sa.text(
            f"""
            CREATE TABLE IF NOT EXISTS {quote_ident(schema)}.{TABLE} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                revision text NOT NULL,
                kind text NOT NULL CHECK (kind IN ('upgrade', 'downgrade', 'baseline',
                                                   'accepted-edit')),
                checksum text NOT NULL,
                code_checksum text,
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
            f"CREATE INDEX IF NOT EXISTS {TABLE}_revision_idx ON {quote_ident(schema)}.{TABLE} (revision, id)"
        )
    )
    conn.commit()


def baseline(
    conn: sa.Connection,
    schema: str,
    project: AlembicProject,
    heads: list[str],
    *,
    telemetry: Telemetry,
) -> list[str]:
    """First use: create the history and record the revisions the database already has (kind
    `baseline`: applied before the history existed), committed. Returns them."""
    ensure(conn, schema)
    applied = sorted(project.ancestors(heads)) if heads else []
    record(
        conn,
        schema,
        [(rev, "baseline", checksums(project.revision(rev).path), None) for rev in applied],
        telemetry=telemetry,
    )
    conn.commit()
    return applied


def entry(
    script: Script, upgrade: bool, seconds: float | None, digests: Checksums | None = None
) -> Entry:
    """The history entry of a revision just applied (or reverted): its script's checksums
    (`digests`, when taken already, else now)."""
    kind = "upgrade" if upgrade else "downgrade"
    return (
        script.revision,
        kind,
        digests or checksums(script.path),
        None if seconds is None else round(seconds, 4),
    )


def record(
    conn: sa.Connection,
    schema: str,
    entries: list[Entry],
    *,
    telemetry: Telemetry,
) -> None:
    """Insert entries `(revision, kind, checksums, seconds)` on `conn`, inside whatever transaction
    it is in (the migration's own: an entry commits or rolls back with its revision). Several
    go as one executemany, which psycopg sends as one pipeline, not a round trip per row."""
    if not entries:
        return
    rows = [
        {
            "r": revision,
            "k": kind,
            "c": digests[0],
            "cc": digests[1],
            "s": seconds,
            "v": telemetry.tool_version,
            "a": telemetry.actor,
            "sha": telemetry.sha,
            "u": telemetry.run_url,
        }
        for revision, kind, digests, seconds in entries
    ]
    conn.execute(_insert(schema), rows if len(rows) > 1 else rows[0])


@functools.lru_cache(maxsize=8)
def _insert(schema: str) -> sa.TextClause:
    """The INSERT of `record`, built once per schema (it runs once per applied revision)."""
    return sa.text(
        f"INSERT INTO {quote_ident(schema)}.{TABLE} (revision, kind, checksum, code_checksum, seconds, "
        "tool_version, actor, sha, run_url) VALUES (:r, :k, :c, :cc, :s, :v, :a, :sha, :u)"
    )


def latest_checksums(conn: sa.Connection, schema: str) -> dict[str, tuple[int, str, str | None]]:
    """revision → (row id, raw checksum, code checksum or None for rows of older versions)."""
    rows = conn.execute(
        sa.text(
            f"SELECT DISTINCT ON (revision) revision, id, checksum, to_jsonb(h) ->> 'code_checksum' "
            f"FROM {quote_ident(schema)}.{TABLE} h WHERE kind <> 'downgrade' ORDER BY revision, id DESC"
        )
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _same(recorded: tuple[int, str, str | None], now: Checksums) -> bool:
    """Compared by code checksum; a row without one (written by an older version) by bytes."""
    _, raw, code = recorded
    return code == now[1] if code else raw == now[0]


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
    edited: list[tuple[str, str, Checksums]] = []
    baseline: list[Entry] = []
    rekey: list[dict[str, object]] = []
    for rev in applied:
        path = project.revision(rev).path
        before = recorded.get(rev)
        data = Path(path).read_bytes()
        if before is not None and before[2] and before[1] == raw_checksum(data):
            continue  # the very bytes that were recorded: no need to read them as code
        now = checksums(path, data)
        if before is None:
            report.baselined.append(rev)  # type: ignore[union-attr]
            baseline.append((rev, "baseline", now, None))
        elif not _same(before, now):
            edited.append((rev, before[2] or before[1], now))
        elif before[2] is None:
            rekey.append({"id": before[0], "cc": now[1]})
    if write:
        record(conn, schema, baseline, telemetry=telemetry)
        if rekey:
            conn.execute(
                sa.text(
                    f"UPDATE {quote_ident(schema)}.{TABLE} SET code_checksum = :cc WHERE id = :id"
                ),
                rekey,
            )
    if edited and not allow_edited:
        conn.rollback()
        details = "; ".join(
            f"{r}: recorded {_short(b)}…, now {_short(n[1] if b.startswith(PREFIX) else n[0])}…"
            for r, b, n in edited
        )
        raise StepFailed(
            f"{len(edited)} already applied migration(s) changed since they ran ({details}). "
            "Restore the original file(s), or set allow-edited-migrations: true to accept them",
            step="migrate",
            detail=str([{"revision": r, "recorded": b, "current": n[1]} for r, b, n in edited]),
            error_class="checksum-mismatch",
            obj=", ".join(r for r, _, _ in edited),
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


def _short(digest: str) -> str:
    return digest.removeprefix(PREFIX)[:12]


def read(conn: sa.Connection, schema: str, limit: int = 20) -> list[HistoryEntry]:
    if not exists(conn, schema):
        return []
    rows = conn.execute(
        sa.text(
            f"SELECT revision, kind, checksum, applied_at, seconds, tool_version, actor, sha, "
            f"run_url, to_jsonb(h) ->> 'code_checksum' FROM {quote_ident(schema)}.{TABLE} h "
            "ORDER BY id DESC LIMIT :n"
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
            code_checksum=r[9] or "",
        )
        for r in rows
    ]
