"""`smoke`: connect and run the smoke checks alone (no migrations folder is loaded)."""

from __future__ import annotations

from deployer.commands import shared
from deployer.commands.context import Context
from deployer.results import RunResult


def run(ctx: Context) -> RunResult:
    shared.require_url(ctx)
    shared.smoke(ctx, shared.preflight(ctx))
    return ctx.result
