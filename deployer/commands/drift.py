"""`drift`: migrate a scratch database to the live revision and compare the catalogs (and,
at the head, the models); differences exit 1."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from deployer import db
from deployer.commands import shared
from deployer.commands.context import Context
from deployer.commands.options import migrate_options
from deployer.errors import StepFailed
from deployer.results import DriftResult, RunResult
from deployer.steps import status as status_step

if TYPE_CHECKING:
    import sqlalchemy as sa

    from deployer.alembic_project import AlembicProject


def run(ctx: Context) -> RunResult:
    from deployer.steps.migrate import inspect_env
    from deployer.steps.version_table import rollback_txn

    s = ctx.settings
    shared.require_url(ctx)
    project = shared.project(ctx)
    app = shared.preflight(ctx)
    pf = ctx.result.preflight
    assert pf is not None
    rec = DriftResult(live_version=pf.server_version)
    ctx.result.drift = rec
    live = ctx.session()
    handed = ctx.env_connection(live)  # env-connection, url-driver
    facts = inspect_env(project, handed, url=s.direct_url, workspace=s.workspace_dir)
    rollback_txn(live)
    heads = list(facts.heads)
    rec.revision = heads
    ctx.result.status_check = status_step.status(
        project,
        live,
        version_table=facts.version_table,
        version_table_schema=facts.version_table_schema,
    )
    known = project.ancestors(project.heads())
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise StepFailed(
            f"the database is at {', '.join(unknown)}, which the migrations folder does not "
            "contain: cannot replay the migrations to compare",
            step="drift",
        )
    scratch = replay(ctx, project, rec, heads)
    with ctx.step("drift"):
        compare(ctx, rec, app, scratch)
        models(ctx, project, rec, live, heads)
    raise_on_drift(rec, heads)
    return ctx.result


def replay(
    ctx: Context, project: AlembicProject, rec: DriftResult, heads: list[str]
) -> sa.Connection:
    """The scratch step: a scratch database (embedded, or on scratch-database-url) migrated
    to `heads`. Returns a session on it."""
    from deployer.steps import drift as drift_step
    from deployer.steps.migrate import migrate
    from deployer.steps.version_table import server_major

    scratch_url = ctx.settings.scratch_database_url.get_secret_value()
    embedded = not scratch_url
    with ctx.step("scratch"):
        if embedded:
            major = drift_step.embedded_major(server_major(ctx.result.preflight))
            server = ctx.stack.enter_context(drift_step.embedded_scratch(major))
            rec.scratch = f"embedded PostgreSQL {major}"
        else:
            server = scratch_url
            rec.scratch = f"{db.describe_target(scratch_url)} (scratch-database-url)"
        url = ctx.stack.enter_context(drift_step.scratch_database(ctx.spec(server), ctx.connect))
        scratch = ctx.connect(ctx.spec(url, migration=True))
        options = dataclasses.replace(
            migrate_options(ctx), url=url, dry_run=False, client_check=False
        )
        for head in heads:
            m = migrate(
                project,
                scratch,
                dataclasses.replace(options, target=head),
                handed=ctx.env_connection(scratch, url),
            )
            if m.error:
                hint = (
                    " (the embedded server offers only plpgsql and vector: set "
                    "scratch-database-url to a server like the live one)"
                    if embedded
                    else ""
                )
                raise StepFailed(
                    f"the migrations fail on the scratch database at revision "
                    f"{m.failed_revision or '?'}: {m.error}{hint}",
                    step="scratch",
                    failure=m.failure,
                )
        ctx.info(f"replayed the migrations to {', '.join(heads) or 'base'} on {rec.scratch}")
    return scratch


def compare(ctx: Context, rec: DriftResult, app: sa.Connection, scratch: sa.Connection) -> None:
    """The live catalog against the scratch one."""
    from deployer.steps import drift as drift_step

    history_schema = ctx.settings.history_schema
    expected = drift_step.snapshot(scratch, history_schema=history_schema)
    actual = drift_step.snapshot(app, history_schema=history_schema)
    rec.scratch_version = expected.server_version
    rec.objects = len(actual.objects)
    rec.differences = drift_step.compare(actual, expected)
    if rec.differences:
        rec.diff = drift_step.unified_diff(actual, expected)
    if expected.server_version.split(".")[0] != actual.server_version.split(".")[0]:
        rec.notes.append(
            f"the scratch server runs PostgreSQL {expected.server_version}, the live one "
            f"{actual.server_version}: a difference in how they print a definition would "
            "show as drift"
        )
    for name, version in sorted(actual.extension_versions.items()):
        other = expected.extension_versions.get(name)
        if other and other != version:
            rec.notes.append(
                f"extension {name} is {version} live, {other} on the scratch server "
                "(versions are not compared)"
            )


def models(
    ctx: Context, project: AlembicProject, rec: DriftResult, live: sa.Connection, heads: list[str]
) -> None:
    """The live database against env.py's target_metadata, when it is at the head."""
    from deployer.steps import drift as drift_step

    s = ctx.settings
    if not (heads and sorted(heads) == project.heads()):
        rec.models_note = (
            "models not compared: the database is not at the migrations' head, which the "
            "models describe"
        )
        return
    found = drift_step.model_differences(
        project,
        live,
        url=s.direct_url,
        workspace=s.workspace_dir,
        history_schema=s.history_schema,
    )
    if found is None:
        rec.models_note = "env.py sets no target_metadata: no models to compare"
    else:
        rec.models_checked = True
        rec.model_differences = found


def raise_on_drift(rec: DriftResult, heads: list[str]) -> None:
    if not rec.count:
        return
    parts = []
    if rec.differences:
        parts.append(f"{len(rec.differences)} between the live database and the migrations")
    if rec.model_differences:
        parts.append(f"{len(rec.model_differences)} between the live database and the models")
    raise StepFailed(
        f"schema drift at revision {', '.join(heads) or 'base'}: " + "; ".join(parts),
        step="drift",
    )
