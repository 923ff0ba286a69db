"""The outputs of a run: one registry of their names, meanings and the commands that fill them.

The inputs are the fields of deployer.settings.Settings; the outputs are declared here, once.
deployer/render/outputs.py writes exactly these names, and scripts/generate.py (`make generate`)
writes them into action.yml, python/action.yml, the reusable workflow and the docs' tables.
Adding an output: one entry here, its value in the renderer, then `make generate`.

The bottom layer: imports nothing of the deployer's.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERY_COMMAND = ()


@dataclass(frozen=True)
class Output:
    """One job output. `commands`: the commands that give it a value (empty: every command);
    every output is written on every run, empty where its command did not fill it."""

    name: str
    description: str
    commands: tuple[str, ...] = EVERY_COMMAND


RUN_OUTPUTS: tuple[Output, ...] = (
    Output(
        "status",
        "`success`, `noop` (nothing pending) or `failed`; for a fleet `success`, `partial` "
        "(some targets failed or were not reached) or `failed`.",
    ),
    Output(
        "failed-step",
        "The step that failed (preflight, migrate, seed, status, smoke, …); empty on success.",
    ),
    Output("error", "The failure's one-line message, secrets masked; empty on success."),
    Output(
        "error-class",
        "The failure's class, for a workflow to branch on: `config`, `unreachable`, `auth`, "
        "`lock-busy`, `lock-timeout`, `sql-error`, `python-error`, `checksum-mismatch`, "
        "`seed-error`, `smoke-failed`, `risk-gate`, `cancelled`, `security-gate`, "
        "`backup-failed`, `restore-failed`, `drift`, `internal` (more may be added, none "
        "renamed); empty on success. The report's `failure` names the failing object.",
    ),
    Output("previous-revision", "Database revision(s) before the deploy."),
    Output("current-revision", "Database revision(s) after the deploy."),
    Output("head-revision", "Head revision(s) of the migration scripts."),
    Output("applied-count", "Number of revisions applied."),
    Output(
        "applied",
        'JSON list of applied revisions: [{"revision": "...", "description": "...", '
        '"seconds": 0.12}].',
    ),
    Output("pending-count", "Revisions still pending after the run (0 after a successful deploy)."),
    Output("seeded", "`true` when the seed ran, else `false`."),
    Output("smoke-tables", "Tables checked by the smoke test."),
    Output("smoke-failed", "Smoke checks that failed."),
    Output("smoke-rows", "Total rows counted by the smoke test."),
    Output("duration-seconds", "Wall-clock duration of the run in seconds."),
    Output(
        "report-path",
        "Path of the JSON report (db-deploy-report.json in the workspace by default; on a "
        "terminal the report is written only when report-file is given, else empty).",
    ),
)

OPERATIONS_OUTPUTS: tuple[Output, ...] = (
    Output(
        "backup-file",
        "backup: path of the dump (relative to the workspace when inside it).",
        ("backup", "deploy"),
    ),
    Output("backup-size", "backup: size of the dump in bytes.", ("backup", "deploy")),
    Output(
        "backup-sha256",
        "backup: SHA-256 of the dump (also in <backup-file>.sha256).",
        ("backup", "deploy"),
    ),
    Output(
        "backup-revision",
        "backup: the database's revision when it was taken (empty: base).",
        ("backup", "deploy"),
    ),
    Output("backup-seconds", "backup: how long pg_dump took.", ("backup", "deploy")),
    Output(
        "restored-revision", "restore: the database's revision after the restore.", ("restore",)
    ),
    Output("drift-count", "drift: number of differences found (0: none).", ("drift",)),
    Output(
        "preflight-errors",
        "Security preflight: findings of severity error.",
        ("preflight", "deploy"),
    ),
    Output(
        "preflight-warnings",
        "Security preflight: findings of severity warning.",
        ("preflight", "deploy"),
    ),
    Output(
        "pending-revisions",
        'plan: JSON list of the revisions a deploy would apply: [{"revision": "...", '
        '"description": "..."}].',
        ("plan", "deploy"),
    ),
    Output(
        "plan-sql",
        "plan: the SQL of the pending revisions (Alembic offline mode).",
        ("plan", "deploy"),
    ),
)

FLEET = ("fleet", "fleet-report")
FLEET_OUTPUTS: tuple[Output, ...] = (
    Output("targets-total", "fleet: targets in the fleet (or in this shard).", FLEET),
    Output("targets-succeeded", "fleet: targets deployed (at least one revision applied).", FLEET),
    Output(
        "targets-failed",
        "fleet: targets whose deploy failed or was cancelled (not counting those not reached).",
        FLEET,
    ),
    Output("targets-noop", "fleet: targets already at the target revision.", FLEET),
    Output(
        "failed-targets",
        'fleet: JSON list of the names of the failed targets, e.g. ["tenant_b"].',
        FLEET,
    ),
)

RISK_OUTPUTS: tuple[Output, ...] = (
    Output(
        "risk-level",
        "Risk review: the highest level of the findings not accepted (none, low, medium, "
        "high); empty when the review did not run.",
        ("plan", "deploy"),
    ),
    Output(
        "risk-findings",
        'Risk review: JSON list of the findings, highest level first: [{"revision": "...", '
        '"rule": "...", "level": "...", "table": "...", "message": "...", "lock": "...", '
        '"outage": "...", "path": "...", "line": 1, "accepted": ""}].',
        ("plan", "deploy"),
    ),
)

OUTPUTS: tuple[Output, ...] = RUN_OUTPUTS + OPERATIONS_OUTPUTS + RISK_OUTPUTS + FLEET_OUTPUTS


def descriptions(outputs: tuple[Output, ...] = OUTPUTS) -> dict[str, str]:
    """name → description, in declaration order."""
    return {o.name: o.description for o in outputs}
