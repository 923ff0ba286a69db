"""Job outputs (GITHUB_OUTPUT, `--output-file`) from the run's record."""

from __future__ import annotations

import json

from deployer.render import operations
from deployer.results import RunResult

# name → description; action.yml declares exactly these.
OUTPUTS: dict[str, str] = {
    "status": "success, noop (nothing pending) or failed",
    "failed-step": "The step that failed (preflight, migrate, seed, status, smoke, …); empty on success",
    "error": "The failure's one-line message; empty on success",
    "previous-revision": "Revision(s) before the deploy, comma-separated",
    "current-revision": "Revision(s) after the deploy, comma-separated",
    "head-revision": "Head revision(s) of the migrations folder",
    "applied-count": "Number of revisions applied",
    "applied": 'JSON list of applied revisions: [{"revision", "description", "seconds"}]',
    "pending-count": "Revisions still pending after the run",
    "seeded": "true when the seed ran and committed",
    "smoke-tables": "Tables checked by the smoke step",
    "smoke-failed": "Tables that could not be read",
    "smoke-rows": "Rows counted over all tables (estimates included for large tables)",
    "duration-seconds": "Wall time of the run",
    "report-path": "Path of the JSON report",
    **operations.OUTPUTS,
}


def outputs(result: RunResult) -> dict[str, str]:
    smoke = result.smoke
    values = {
        "status": result.status,
        "failed-step": result.failed_step,
        "error": result.error,
        "previous-revision": result.previous_revision,
        "current-revision": result.current_revision,
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
    }
    assert set(values) == set(OUTPUTS)
    return values
