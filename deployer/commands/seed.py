"""`seed`: run the seed file alone, under the deploy lock."""

from __future__ import annotations

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.errors import StepFailed
from deployer.results import RunResult
from deployer.steps.seed import seed


def run(ctx: Context) -> RunResult:
    s = ctx.settings
    shared.require_url(ctx)
    shared.check_seed(ctx)
    shared.preflight(ctx)
    conn = ctx.session(migration=True)
    # The same lock as deploy's: keyed on env.py's version table when the project loads.
    where = shared.version_table(ctx, conn, required=False, quiet=True)
    with ctx.deploy_lock(where), ctx.step("seed"):
        ctx.result.seed = sd = seed(conn, s.seed_file)
        if sd.error:
            raise StepFailed(f"seed failed and {sd.outcome}: {sd.error}", step="seed", obj=sd.path)
    return ctx.result
