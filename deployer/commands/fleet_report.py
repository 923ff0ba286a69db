"""`fleet-report`: one summary, one set of outputs and one Slack message for a fleet, from the
per-target records its shards wrote (db-deploy-fleet/ in the workspace, where the workflow's
last job downloads every shard's artifact). With `fleet-file`, the targets without a record
(their wave job never ran) are listed as not reached."""

from __future__ import annotations

from deployer.commands.context import Context
from deployer.commands.fleet import finish
from deployer.errors import ConfigError
from deployer.fleet.reports import REPORTS_DIR, missing, read_records
from deployer.fleet.spec import FleetError, load
from deployer.results import FleetResult, RunResult


def run(ctx: Context) -> RunResult:
    s = ctx.settings
    ctx.at("config")
    folder = s.workspace_dir / REPORTS_DIR
    if not folder.is_dir():
        raise ConfigError(f"no {REPORTS_DIR}/ folder in the workspace: nothing to report")
    with ctx.step("fleet-report"):
        records, problems = read_records(folder)
        for problem in problems:
            ctx.warn(problem)
        if s.fleet_file:
            try:
                fleet = load(s.resolve(s.fleet_file), resolve=False)
            except FleetError as exc:
                raise ConfigError(str(exc)) from None
            records += missing(((t.name, t.wave) for t in fleet.targets), records)
        if not records:
            raise ConfigError(f"no target records (*.target.json) under {REPORTS_DIR}/")
        result = FleetResult(
            targets=records,
            waves=sorted({t.wave for t in records}),
            reports_dir=REPORTS_DIR,
        )
        if result.not_reached and result.failed:
            result.stopped_by = "an earlier wave failed"
        elif result.not_reached:
            result.stopped_by = "their wave did not run"
    finish(ctx.result, result)
    return ctx.result
