"""`preflight`: the security checks alone (also what `deploy` runs right after connecting,
with security-preflight on)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.commands.options import security_options
from deployer.errors import StepFailed
from deployer.results import RunResult, SecurityResult
from deployer.steps import security as security_step

if TYPE_CHECKING:
    from deployer.alembic_project import AlembicProject


def run(ctx: Context) -> RunResult:
    shared.require_url(ctx)
    project = shared.project(ctx)
    app = shared.preflight(ctx)
    security_checks(ctx, app, project=project)
    return ctx.result


def security_checks(
    ctx: Context,
    app: sa.Connection,
    *,
    project: AlembicProject | None = None,
    deploy: bool = False,
) -> None:
    """The security preflight on the open connection. Findings at or above preflight-fail-on
    fail with exit 1. In a deploy, warnings are also shown as workflow warnings."""
    from deployer.steps.migrate import inspect_env
    from deployer.steps.version_table import rollback_txn

    s = ctx.settings
    with ctx.step("security"):
        direct = ctx.session() if s.direct_url != s.url else None
        schema = None
        heads = None
        if project is not None:
            conn = direct or app
            schema = inspect_env(
                project, ctx.env_connection(conn), url=s.direct_url, workspace=s.workspace_dir
            ).version_table_schema
            rollback_txn(conn)
            heads = project.heads()
        rec = security_step.check(
            app, security_options(s), direct=direct, version_table_schema=schema, heads=heads
        )
        ctx.result.security = rec
        for f in rec.findings:
            if f.severity == "warning":
                ctx.warn(f"security: {f.message}")  # also in the report's warnings and Slack
        refuse(rec, s.preflight_fail_on, deploy=deploy)
        ctx.info(
            f"security preflight: {len(rec.findings)} checks, {rec.errors} error(s), "
            f"{rec.warnings} warning(s)"
        )


def refuse(rec: SecurityResult, fail_on: str, *, deploy: bool) -> None:
    """Findings at or above `fail_on`: exit 1, naming the first three."""
    failing = rec.failing
    if failing:
        first = "; ".join(f.message for f in failing[:3])
        more = f" (and {len(failing) - 3} more)" if len(failing) > 3 else ""
        level = "error" if fail_on == "error" else "warning or error"
        what = "deploy refused by the security preflight" if deploy else "security preflight"
        raise StepFailed(
            f"{what}: {len(failing)} finding(s) of severity {level}: {first}{more}",
            step="security",
        )
