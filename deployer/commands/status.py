"""`status`: the database's revision against the migrations' heads, and the deploy history."""

from __future__ import annotations

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.commands.migrations import check_history
from deployer.results import RunResult


def run(ctx: Context) -> RunResult:
    from deployer.steps.migrate import inspect_env

    s = ctx.settings
    shared.require_url(ctx)
    project = shared.project(ctx)
    shared.preflight(ctx)
    mig = ctx.session(migration=True)
    handed = ctx.env_connection(mig)  # env-connection, url-driver
    facts = inspect_env(project, handed, url=s.direct_url, workspace=s.workspace_dir)
    shared.status(ctx, project, mig, facts.version_table, facts.version_table_schema)
    st = ctx.result.status_check
    if st is not None and st.database_heads:
        # An edited applied revision is reported as plan and deploy would report it.
        check_history(ctx, project, mig, facts, list(st.database_heads), read_only=True)
    ctx.result.status = "noop" if st and st.up_to_date else "success"
    return ctx.result
