"""Result records: what each step returns (`run` for the deploy pipeline's steps, the security
checks and the history among them; `operations` for backup, restore, drift and the requirements
install; `risk` for the risk review; `fleet` for a fleet's targets) and the run's record,
`RunResult`, that every renderer reads. Nothing here does I/O.

The records of the operations modes, the risk review and the fleet are imported on first use
(`from deployer.results import RiskResult` works as for the others): a deploy that does not
need them does not create their classes at start-up."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deployer.results.run import (
    SCHEMA_VERSION,
    AppliedRevision,
    ExpectationCheck,
    ExtensionCheck,
    Failure,
    Finding,
    HistoryEntry,
    IntegrityReport,
    MigrateResult,
    PreflightResult,
    Revision,
    RunResult,
    SecurityResult,
    SeedResult,
    SmokeResult,
    StatusResult,
    TableCheck,
    TableDelta,
    Telemetry,
    VectorIndex,
    plain,
    utcnow,
)

if TYPE_CHECKING:
    from deployer.results.fleet import FleetResult, TargetResult
    from deployer.results.operations import (
        BackupResult,
        Difference,
        DriftResult,
        InstallResult,
        RestoreResult,
    )
    from deployer.results.risk import (
        LEVELS,
        LockHeld,
        RiskFinding,
        RiskResult,
        RiskRevision,
        SessionInfo,
        StatementTrace,
        TableStats,
    )

_ON_FIRST_USE = {
    **dict.fromkeys(("FleetResult", "TargetResult"), "fleet"),
    **dict.fromkeys(
        ("BackupResult", "Difference", "DriftResult", "InstallResult", "RestoreResult"),
        "operations",
    ),
    **dict.fromkeys(
        (
            "LEVELS",
            "LockHeld",
            "RiskFinding",
            "RiskResult",
            "RiskRevision",
            "SessionInfo",
            "StatementTrace",
            "TableStats",
        ),
        "risk",
    ),
}


if not TYPE_CHECKING:  # the type checker reads the imports above (and refuses other names)

    def __getattr__(name: str) -> Any:
        """The operations modes', the risk review's and the fleet's records, imported on first
        use (PEP 562)."""
        module = _ON_FIRST_USE.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "LEVELS",
    "SCHEMA_VERSION",
    "AppliedRevision",
    "BackupResult",
    "Difference",
    "DriftResult",
    "ExpectationCheck",
    "ExtensionCheck",
    "Failure",
    "Finding",
    "FleetResult",
    "HistoryEntry",
    "InstallResult",
    "IntegrityReport",
    "LockHeld",
    "MigrateResult",
    "PreflightResult",
    "RestoreResult",
    "Revision",
    "RiskFinding",
    "RiskResult",
    "RiskRevision",
    "RunResult",
    "SecurityResult",
    "SeedResult",
    "SessionInfo",
    "SmokeResult",
    "StatementTrace",
    "StatusResult",
    "TableCheck",
    "TableDelta",
    "TableStats",
    "TargetResult",
    "Telemetry",
    "VectorIndex",
    "plain",
    "utcnow",
]
