"""`rollback`: downgrade to `target` under the deploy lock with deploy's per-revision report.
Refused (exit 2, nothing changed) on production without confirm-rollback, for a target that
is not below the current revision, and when a revision in the way has no real downgrade.
dry-run: the plan only (what would be reverted), without running a revision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.commands.migrations import applied_message, check_history, run_migrate
from deployer.errors import ConfigError
from deployer.results import MigrateResult, RunResult

if TYPE_CHECKING:
    import sqlalchemy as sa

    from deployer.alembic_project import AlembicProject
    from deployer.steps.version_table import VersionTable


def run(ctx: Context) -> RunResult:
    from deployer.steps import rollback as rollback_step

    s = ctx.settings
    shared.require_url(ctx)
    project = shared.project(ctx)
    ctx.at("rollback")
    if s.target.strip() in rollback_step.HEAD_TARGETS:
        rollback_step.resolve(project, s.target, [])  # raises: a rollback needs a target
    if s.is_production and not s.confirm_rollback and not ctx.result.dry_run:
        raise ConfigError(
            "refusing to roll back the production environment: set confirm-rollback to true "
            "if this is intended",
            step="rollback",
        )
    shared.preflight(ctx)
    with ctx.step("rollback"):
        mig = ctx.session(migration=True)
        where = shared.version_table(ctx, mig, required=True)
        with ctx.deploy_lock(where):
            heads = where.heads(mig)
            target, undo = plan(project, s.target, heads)
            if ctx.result.dry_run:
                ctx.result.migrate = MigrateResult(
                    script_location=str(project.script_location),
                    target=target,
                    previous=heads,
                    current=heads,
                    pending=[project.describe(rev) for rev in undo],
                    dry_run=True,
                    version_table=where.table,
                    version_table_schema=where.schema,
                )
            else:
                downgrade(ctx, project, mig, where, heads, target, undo)
    shared.status(ctx, project, mig, where.table, where.schema)
    return ctx.result


def plan(project: AlembicProject, requested: str, heads: list[str]) -> tuple[str, list[str]]:
    """The target revision and the revisions to revert; refused (exit 2) for a target not
    below `heads` or a revision without a real downgrade."""
    from deployer.steps import rollback as rollback_step
    from deployer.steps.migrate import resolve_target

    target = rollback_step.resolve(project, requested, heads)
    if target != "base":
        below = project.ancestors(heads) if heads else set()
        if any(d not in below for d in resolve_target(project, target)):
            raise ConfigError(
                f"target {requested!r} is not below the current revision "
                f"{', '.join(heads) or 'base'}: rollback only downgrades",
                step="rollback",
            )
    undo = rollback_step.plan(project, target, heads)
    bad = rollback_step.check_reversible(project, undo)
    if bad:
        raise ConfigError(
            "rollback refused, nothing was changed: "
            + "; ".join(str(b) for b in bad)
            + " (write the downgrade, or restore a backup instead)",
            step="rollback",
        )
    return target, undo


def downgrade(
    ctx: Context,
    project: AlembicProject,
    mig: sa.Connection,
    where: VersionTable,
    heads: list[str],
    target: str,
    undo: list[str],
) -> None:
    """Back up first (backup-before), verify the history, then downgrade, recording each
    revision reverted."""
    from deployer.steps.migrate import EnvFacts

    if ctx.settings.backup_before and undo:
        from deployer.commands.backup import take_backup

        take_backup(ctx, reason="before-rollback", locked=True)
        ctx.at("rollback")
    # The deploy history verifies the applied scripts and records each downgrade.
    facts = EnvFacts(heads=heads, version_table=where.table, version_table_schema=where.schema)
    recorder = check_history(ctx, project, mig, facts, heads)
    left = shared.unfinished(ctx, mig)
    ctx.result.migrate = m = run_migrate(
        ctx,
        project,
        mig,
        recorder=recorder,
        downgrade=True,
        target=target,
        on_applied=applied_message(ctx, "reverted"),
    )
    shared.settle_unfinished(ctx, project, mig, left, m)
    shared.raise_if_failed(m, step="rollback", verb="failed to downgrade")
    if not m.applied:
        ctx.result.status = "noop"
