"""A fleet's records: one per target (what its deploy did) and the fleet's totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A target's status: its deploy's (`success`, `noop`, `failed`), `cancelled` (stopped by a
# signal) or `not-reached` (an earlier wave failed, fail-fast stopped the wave, or the run was
# cancelled before it started).
TARGET_STATUSES = ("failed", "cancelled", "not-reached", "success", "noop")
SEVERITY = {status: rank for rank, status in enumerate(TARGET_STATUSES)}  # failures first


@dataclass
class TargetResult:
    """One target of a fleet: what its deploy (a child process) reported."""

    name: str
    wave: int = 0
    status: str = "not-reached"
    exit_code: int | None = None
    previous_revision: str = ""
    current_revision: str = ""
    head_revision: str = ""
    applied_count: int = 0
    pending_count: int = 0
    seconds: float = 0.0
    failed_step: str = ""
    error: str = ""
    error_class: str = ""
    report: str = ""  # the target's JSON report, relative to the reports folder
    finished_at: str = ""  # ISO time; the latest record of a name wins in fleet-report

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "cancelled")

    @property
    def order(self) -> tuple[int, int, str]:
        """Failures first, then by wave and name."""
        return (SEVERITY.get(self.status, 0), self.wave, self.name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class FleetResult:
    """Every target of the fleet (or of the shards whose reports were read), and the totals."""

    targets: list[TargetResult] = field(default_factory=list)
    max_parallel: int = 1
    fail_fast: bool = False
    waves: list[int] = field(default_factory=list)
    reports_dir: str = ""
    stopped_by: str = ""  # why later targets were not reached (a wave's failure, fail-fast, …)

    def count(self, *statuses: str) -> int:
        return sum(1 for t in self.targets if t.status in statuses)

    @property
    def total(self) -> int:
        return len(self.targets)

    @property
    def succeeded(self) -> int:
        return self.count("success")

    @property
    def noop(self) -> int:
        return self.count("noop")

    @property
    def failed(self) -> int:
        return self.count("failed", "cancelled")

    @property
    def not_reached(self) -> int:
        return self.count("not-reached")

    @property
    def failed_names(self) -> list[str]:
        return [t.name for t in self.sorted() if t.failed]

    @property
    def status(self) -> str:
        """`success` (every target deployed or already current), `failed` (none did) or
        `partial` (some did, some failed or were not reached)."""
        ok = self.succeeded + self.noop
        if ok == self.total:
            return "success"
        return "partial" if ok else "failed"

    def sorted(self) -> list[TargetResult]:
        return sorted(self.targets, key=lambda t: t.order)

    def slowest(self, n: int = 10) -> list[TargetResult]:
        ran = [t for t in self.targets if t.status not in ("not-reached",)]
        return sorted(ran, key=lambda t: (-t.seconds, t.name))[:n]
