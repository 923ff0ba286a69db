"""`backup`: pg_dump the target under the deploy lock (also what backup-before runs)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.results import BackupResult, RunResult, utcnow

if TYPE_CHECKING:
    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import EnvFacts


def run(ctx: Context) -> RunResult:
    shared.require_url(ctx)
    shared.preflight(ctx)
    take_backup(ctx)
    return ctx.result


def take_backup(
    ctx: Context,
    *,
    reason: str = "backup",
    locked: bool = False,
    known: tuple[AlembicProject, EnvFacts] | None = None,
) -> None:
    """pg_dump the target (over direct-database-url: pg_dump needs a session, not a pooler's
    transaction) under the deploy lock, so that no migration runs while it reads (and the
    revision recorded is the one the dump holds). `locked`: the caller holds the lock.
    `known`: the project and env.py's facts the caller already has (env.py is not run again)."""
    from deployer import pgtools
    from deployer.steps import backup as backup_step
    from deployer.steps.version_table import VersionTable, server_major, shown_path

    s = ctx.settings
    with ctx.step("backup"):
        conn = ctx.session()
        where = (
            VersionTable.of(*known) if known else shared.version_table(ctx, conn, required=False)
        )
        tool = pgtools.find_tool("pg_dump", server_major(ctx.result.preflight))  # exit 2 first
        with ctx.deploy_lock(where) if not locked else nullcontext():
            revision = ",".join(where.heads(conn))
            pf = ctx.result.preflight
            database = pf.database if pf else (make_url(s.direct_url).database or "db")
            name = backup_step.default_name(database, revision, utcnow())
            requested = s.backup_path
            target = backup_step.destination(
                requested, s.resolve(requested) if requested else s.resolve("backups"), name
            )
            tool_name, size, digest, seconds = backup_step.dump(
                s.direct_url,
                target,
                tool=tool,
                lock_timeout=s.lock_timeout,
                connect_timeout=s.connect_timeout,
                workspace=s.workspace_dir,
            )
        ctx.result.status_check = where.status(conn) or ctx.result.status_check
        ctx.result.backup = rec = BackupResult(
            path=shown_path(target, s.workspace_dir),
            file=str(target),
            size_bytes=size,
            sha256=digest,
            revision=revision,
            database=database,
            server_version=pf.server_version if pf else "",
            tool=tool_name,
            seconds=seconds,
            reason=reason,
        )
        ctx.info(
            f"backup {rec.path}: {size:,} bytes in {seconds:.2f}s at revision "
            f"{revision or 'base'}, sha256 {digest[:16]}…"
        )
