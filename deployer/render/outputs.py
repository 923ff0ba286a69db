"""Job outputs (GITHUB_OUTPUT, `--output-file`) from the run's record."""

from __future__ import annotations

import json

from deployer import interface
from deployer.render import fleet, operations, risk
from deployer.results import RunResult

# name → description: the registry's (deployer/interface.py); action.yml declares exactly these.
OUTPUTS: dict[str, str] = interface.descriptions()


def outputs(result: RunResult) -> dict[str, str]:
    smoke = result.smoke
    values = {
        "status": result.status,
        "failed-step": result.failed_step,
        "error": result.error,
        "error-class": result.error_class,
        "previous-revision": result.previous_revision,
        "current-revision": "" if result.revision_unknown else result.current_revision,
        "head-revision": result.head_revision,
        "applied-count": str(len(result.applied)),
        "applied": json.dumps(
            [
                {"revision": a.revision, "description": a.description, "seconds": a.seconds}
                for a in result.applied
            ]
        ),
        "pending-count": str(result.pending_count),
        "seeded": "true" if result.seed is not None and not result.seed.error else "false",
        "smoke-tables": str(len(smoke.tables)) if smoke else "0",
        "smoke-failed": str(len(smoke.failed_tables)) if smoke else "0",
        "smoke-rows": str(smoke.total_rows) if smoke else "0",
        "duration-seconds": f"{result.duration:.2f}",
        "report-path": result.report_path,
        **operations.outputs(result),
        **risk.outputs(result.risk),
        **fleet.outputs(result),
    }
    assert set(values) == set(OUTPUTS)
    return values
