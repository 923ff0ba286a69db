"""`restore`: replace the target's contents with a backup. Refused (exit 2, nothing changed)
without confirm-restore equal to the database's name, without a matching checksum, or with an
archive the available pg_restore cannot read. dry-run: every check, no restore."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.errors import ConfigError
from deployer.results import RestoreResult, RunResult

if TYPE_CHECKING:
    from deployer import pgtools
    from deployer.steps.restore import ArchiveHeader, TocEntry


def run(ctx: Context) -> RunResult:
    from deployer.steps import restore as restore_step
    from deployer.steps.version_table import shown_path

    s = ctx.settings
    shared.require_url(ctx)
    check_inputs(ctx)
    file = restore_step.find_file(s.resolve(s.backup_path), repr(s.backup_path))
    rec = RestoreResult(path=shown_path(file, s.workspace_dir))
    ctx.result.restore = rec
    with ctx.step("verify"):
        rec.sha256, rec.size_bytes = restore_step.verify_checksum(file)
        header = restore_step.read_header(file)
        rec.archive_database = header.database
        rec.archive_server_version = header.server_version
        rec.archive_pg_dump_version = header.pg_dump_version
    shared.preflight(ctx)
    tool, entries = check_target(ctx, rec, file, header)
    if not restore_locked(ctx, rec, file, tool, entries):
        return ctx.result  # a dry run
    ctx.info(
        f"restored {file.name} in {rec.seconds:.2f}s: revision "
        f"{rec.previous_revision or 'base'} → {rec.restored_revision or 'base'}"
    )
    if rec.left_in_place:
        shown = ", ".join(rec.left_in_place[:10])
        more = f" and {len(rec.left_in_place) - 10} more" if len(rec.left_in_place) > 10 else ""
        ctx.warn(
            f"{len(rec.left_in_place)} relation(s) newer than the backup were left in place: "
            f"{shown}{more} (drop them before the next deploy, or run drift to review)"
        )
    return ctx.result


def check_inputs(ctx: Context) -> None:
    """backup-path and confirm-restore are set (before anything is read)."""
    s = ctx.settings
    if not s.backup_path.strip():
        raise ConfigError(
            "restore needs backup-path: the .dump file to restore (or its folder)", step="restore"
        )
    named = make_url(s.url).database or make_url(s.url).username or "?"
    if not s.confirm_restore.strip():
        raise ConfigError(
            f"restore replaces the contents of database {named}: set confirm-restore to the "
            "database's name to confirm",
            step="restore",
        )


def check_target(
    ctx: Context, rec: RestoreResult, file: Path, header: ArchiveHeader
) -> tuple[pgtools.Tool, list[TocEntry]]:
    """The confirmation names the database connected to; a pg_restore that reads the archive;
    its table of contents. Returns the tool and the entries."""
    from deployer import pgtools
    from deployer.steps import restore as restore_step
    from deployer.steps.version_table import server_major

    s = ctx.settings
    pf = ctx.result.preflight
    assert pf is not None
    if s.confirm_restore.strip() != pf.database:
        raise ConfigError(
            f"confirm-restore is {s.confirm_restore.strip()!r} but the target database is "
            f"{pf.database!r}: nothing was restored",
            step="restore",
        )
    major = server_major(pf)
    tool = pgtools.find_tool("pg_restore", max(major, header.pg_dump_major))
    rec.tool = f"pg_restore {tool.version}"
    ctx.at("verify")  # the archive's table of contents: still the verify step (shown once)
    entries = restore_step.parse_toc(restore_step.list_archive(tool, file))
    rec.tables = restore_step.archive_table_count(entries, s.history_schema)
    if header.server_major > major:
        ctx.warn(
            f"the backup comes from PostgreSQL {header.server_version}, the target runs "
            f"{pf.server_version}: a dump is not guaranteed to load into an older major version"
        )
    if header.database and header.database != pf.database:
        ctx.notice(
            f"the backup was taken from database {header.database}, restored into {pf.database}"
        )
    return tool, entries


def restore_locked(
    ctx: Context, rec: RestoreResult, file: Path, tool: pgtools.Tool, entries: list[TocEntry]
) -> bool:
    """Under the deploy lock: what the target holds, then pg_restore. False for a dry run
    (nothing restored)."""
    from deployer.steps import restore as restore_step
    from deployer.steps.version_table import rollback_txn

    s = ctx.settings
    conn = ctx.session()
    where = shared.version_table(ctx, conn, required=False)
    with ctx.step("restore"), ctx.deploy_lock(where):
        rec.previous_revision = ",".join(where.heads(conn))
        installed = {r[0] for r in conn.execute(sa.text("SELECT extname FROM pg_extension"))}
        rollback_txn(conn)
        listing, rec.skipped = restore_step.filter_toc(
            entries, history_schema=s.history_schema, installed_extensions=installed
        )
        rec.left_in_place = restore_step.newer_relations(conn, entries, s.history_schema)
        if ctx.result.dry_run:
            ctx.notice(
                f"dry run: {file.name} verified (checksum, archive, confirmation); nothing restored"
            )
            return False
        rec.seconds = restore_step.restore(
            tool,
            s.direct_url,
            file,
            listing,
            lock_timeout=s.lock_timeout,
            connect_timeout=s.connect_timeout,
        )
        rec.restored_revision = ",".join(where.heads(conn))
        ctx.result.status_check = where.status(conn) or ctx.result.status_check
    return True
