"""The risk review's records: what each pending revision ran on the scratch database (its
statements, the locks they held, rewrites and scans), what the live database looks like around
the tables it touches, and the findings with their levels. Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("none", "low", "medium", "high")  # ordered: the gate and `risk-level` compare by index


def level_rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 0


@dataclass
class LockHeld:
    """One relation lock the rehearsing session held after a statement (`pg_locks`)."""

    relation: str  # schema.name
    mode: str  # AccessExclusiveLock, ShareLock, …
    existed: bool = True  # the relation was there before the revisions ran (a live table)


@dataclass
class StatementTrace:
    """One statement as the rehearsal sent it, and what it did on the scratch database."""

    revision: str
    index: int  # 1-based, within the revision
    sql: str  # as sent, redacted and cut
    line: int = 0  # line in the revision file that sent it (0: not known)
    seconds: float = 0.0
    in_transaction: bool = True
    locks: list[LockHeld] = field(default_factory=list)  # new or stronger after this statement
    rewritten: list[str] = field(default_factory=list)  # tables whose relfilenode changed
    scanned: list[str] = field(default_factory=list)  # tables read by a scan (validation…)
    error: str = ""


@dataclass
class SessionInfo:
    """Another session on the live database: one holding or waiting for a lock on a table the
    revisions touch, or a long transaction."""

    pid: int
    application_name: str = ""
    user: str = ""
    state: str = ""
    transaction_seconds: float = 0.0  # age of its open transaction (0: none)
    mode: str = ""  # the lock it holds or waits for ("" for a long transaction)
    granted: bool = True
    query: str = ""  # redacted, cut


@dataclass
class TableStats:
    """A table the revisions touch, as the live database's catalog describes it (no scan)."""

    table: str  # schema.name
    exists: bool = True
    rows: int = 0  # pg_class.reltuples (an estimate; -1 if never analysed)
    bytes: int = 0  # heap + indexes + TOAST, from relpages
    sessions: list[SessionInfo] = field(default_factory=list)
    autovacuum: str = ""  # the phase of a (auto)vacuum running on it, "" when none


@dataclass
class RiskFinding:
    """One finding: a rule (from the parsed SQL), a measurement (from the rehearsal) or the live
    database (contention); `level` weighs it against the live table."""

    revision: str
    rule: str  # stable id (spec: Risk review)
    level: str  # low | medium | high
    table: str = ""
    lock: str = ""  # the lock mode it takes ("" when none)
    message: str = ""  # why it hurts
    safe: str = ""  # the safe way, with SQL
    statement: str = ""  # redacted, cut
    path: str = ""  # revision file
    line: int = 0
    source: str = "rule"  # rule | measured | live
    outage: str = ""  # the estimated outage, in words
    measured: str = ""  # what the rehearsal saw for this statement ("" when not rehearsed)
    accepted: str = ""  # the revision's reason for accepting it ("" when not accepted)


@dataclass
class RiskRevision:
    """The risk review of one revision: its statements and what they were found to risk."""

    revision: str
    description: str = ""
    path: str = ""
    statements: list[StatementTrace] = field(default_factory=list)
    findings: list[RiskFinding] = field(default_factory=list)
    level: str = "none"
    error: str = ""  # the rehearsal failed in this revision


@dataclass
class RiskResult:
    """The review of the pending revisions."""

    level: str = "none"  # highest level of the findings not accepted
    rehearsed: bool = False
    scratch: str = ""  # where it was rehearsed ("embedded PostgreSQL 18", host:port), or ""
    note: str = ""  # why it fell back to the rules and the live statistics, or other remarks
    revisions: list[RiskRevision] = field(default_factory=list)
    tables: list[TableStats] = field(default_factory=list)
    long_transactions: list[SessionInfo] = field(default_factory=list)
    lock_timeout: float | None = None  # the deploy session's lock_timeout, seconds
    seconds: float = 0.0

    @property
    def findings(self) -> list[RiskFinding]:
        return [f for r in self.revisions for f in r.findings]

    def ranked(self) -> list[RiskFinding]:
        """Findings, highest level first (accepted ones last), then in revision order."""
        order = {r.revision: i for i, r in enumerate(self.revisions)}
        return sorted(
            self.findings,
            key=lambda f: (bool(f.accepted), -level_rank(f.level), order.get(f.revision, 0)),
        )

    def reaches(self, fail_on: str) -> list[RiskFinding]:
        """Findings not accepted at or above `fail_on` (none for `none`)."""
        if fail_on not in LEVELS or fail_on == "none":
            return []
        floor = level_rank(fail_on)
        return [f for f in self.ranked() if not f.accepted and level_rank(f.level) >= floor]

    def outputs(self) -> list[dict[str, object]]:
        """`risk-findings`: the stable JSON list (revision, rule, level, table, message, …)."""
        return [
            {
                "revision": f.revision,
                "rule": f.rule,
                "level": f.level,
                "table": f.table,
                "message": f.message,
                "lock": f.lock,
                "outage": f.outage,
                "path": f.path,
                "line": f.line,
                "accepted": f.accepted,
            }
            for f in self.ranked()
        ]
