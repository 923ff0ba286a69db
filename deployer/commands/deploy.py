"""`deploy` (and `plan`, the same in dry-run mode): check, take the deploy lock, back up if
asked, verify the deploy history, migrate, seed, then status and smoke."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from deployer import db
from deployer.commands import review, shared
from deployer.commands.context import Context
from deployer.commands.migrations import check_history, run_migrate
from deployer.errors import StepFailed
from deployer.results import MigrateResult, RunResult
from deployer.steps.status import check_single_head

if TYPE_CHECKING:
    import sqlalchemy as sa

    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import EnvFacts


def run(ctx: Context) -> RunResult:
    from deployer.steps.migrate import resolve_target

    s = ctx.settings
    shared.require_url(ctx)
    project = shared.project(ctx)
    resolve_target(project, s.target)
    check_single_head(project)
    if s.run_seed and not ctx.result.dry_run:
        shared.check_seed(ctx)
    pooled = db.looks_pooled(s.url)
    if pooled and not s.direct_database_url.get_secret_value():
        ctx.warn(
            f"database-url looks like a connection pooler ({pooled}) and no "
            "direct-database-url is set: migrations, the deploy lock (a session advisory "
            "lock) and prepared statements then go through the pooler, which transaction "
            "pooling breaks. Set direct-database-url to the direct connection"
        )
    app = shared.preflight(ctx)
    if s.security_preflight:
        from deployer.commands.preflight import security_checks

        security_checks(ctx, app, deploy=True)
    mig, m, facts = migrate_locked(ctx, project)
    # The heads migrate read back; none (a database at base, or a failed read): read them.
    read_back = m.current or None
    shared.status(
        ctx, project, mig, facts.version_table, facts.version_table_schema, heads=read_back
    )
    if ctx.result.security is not None and not ctx.result.dry_run:
        shared.extensions_after_deploy(ctx, app)
    # The migration session shares the smoke's reads when it is the same role on the same
    # URL (smoke proves what the deploy role can read).
    shared.smoke(
        ctx,
        app,
        helpers=[mig] if s.direct_url == s.url else [],
        exclude_tables=[(facts.version_table_schema, facts.version_table)],
    )
    sd = ctx.result.seed
    seeded = sd is not None and (sd.inserted + sd.updated + sd.deleted)
    if not (ctx.result.migrate and ctx.result.migrate.pending) and not seeded:
        ctx.result.status = "noop"
    return ctx.result


def migrate_locked(
    ctx: Context, project: AlembicProject
) -> tuple[sa.Connection, MigrateResult, EnvFacts]:
    """The deploy lock is held from before the first migration to after the seed, on an idle
    session of its own. Everything that could refuse the deploy is checked under it and before
    anything is written (the history included). Returns the migration session, the migrate
    step's record and what env.py configures."""
    from deployer.alembic_project import version_heads
    from deployer.steps.migrate import check_heads, inspect_env, up_to_date
    from deployer.steps.version_table import VersionTable

    s = ctx.settings
    with ExitStack() as locked:
        ctx.at("migrate")
        mig = ctx.session(migration=True)
        live = review.snapshot(ctx, mig)  # before env.py runs on the target
        # env.py gets the connection it will migrate on (env-connection, url-driver).
        handed = ctx.env_connection(mig)
        facts = inspect_env(project, handed, url=s.direct_url, workspace=s.workspace_dir)
        shared.check_history_schema(ctx, facts.version_table_schema, mig, facts.version_table)
        locked.enter_context(ctx.deploy_lock(VersionTable.of(project, facts)))
        heads = version_heads(mig, facts.version_table, facts.version_table_schema)
        mig.rollback()
        check_heads(project, heads, s.target)
        left = shared.unfinished(ctx, mig)
        review.review(ctx, project, facts, heads, live)  # the gate: before anything is applied
        if s.backup_before:
            backup_before(ctx, project, facts)
        with ctx.step("migrate"):
            # Nothing pending: env.py has run once already (inspect_env), as it runs once
            # for `alembic upgrade head`; it is not run again to apply nothing.
            m = up_to_date(project, heads, s.target, facts, dry_run=ctx.result.dry_run)
            # A history that does not exist yet is created just before the first revision
            # (a no-op deploy creates nothing).
            recorder = check_history(ctx, project, mig, facts, heads, pending=m is None)
            if m is None:
                m = run_migrate(ctx, project, mig, recorder=recorder)
                review.plan_sql(ctx, m)
            ctx.result.migrate = m
            shared.settle_unfinished(ctx, project, mig, left, m)
            shared.raise_if_failed(m, step="migrate")
        if s.run_seed and not ctx.result.dry_run:
            run_seed(ctx, mig)
    return mig, m, facts


def backup_before(ctx: Context, project: AlembicProject, facts: EnvFacts) -> None:
    if ctx.result.dry_run:
        ctx.notice("dry run: backup-before skipped")
        return
    from deployer.commands.backup import take_backup

    take_backup(ctx, reason="before-deploy", locked=True, known=(project, facts))


def run_seed(ctx: Context, mig: sa.Connection) -> None:
    from deployer.steps.seed import seed

    with ctx.step("seed"):
        ctx.result.seed = sd = seed(mig, ctx.settings.seed_file)
        if sd.error:
            raise StepFailed(f"seed failed and {sd.outcome}: {sd.error}", step="seed", obj=sd.path)
        ctx.info(f"seed: {sd.inserted} inserted, {sd.updated} updated, {sd.deleted} deleted")
