"""The deploy pipeline's step records (the security checks and the deploy history's among them),
and the run's record that every renderer reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployer.results.operations import (
        BackupResult,
        DriftResult,
        InstallResult,
        RestoreResult,
    )
    from deployer.results.risk import RiskResult

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


_FIELDS: dict[type, tuple[str, ...]] = {}


def plain(value: Any) -> Any:
    """`value` with records turned into dicts and tuples into lists, for JSON: what
    `dataclasses.asdict` gives, without its deep copy of every leaf (a report of hundreds of
    revisions and tables is built in a fraction of the time). Leaves are shared, not copied."""
    kind = type(value)
    if kind in (str, int, float, bool) or value is None:
        return value
    names = _FIELDS.get(kind)
    if names is None and hasattr(kind, "__dataclass_fields__"):
        names = _FIELDS[kind] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass
class Telemetry:
    """Who, what and where: from the runner's GITHUB_* variables (empty outside GitHub)."""

    actor: str = ""
    repository: str = ""
    ref: str = ""
    sha: str = ""
    workflow: str = ""
    event: str = ""
    run_id: str = ""
    run_attempt: str = ""
    run_url: str = ""
    environment: str = ""
    tool_version: str = ""

    @classmethod
    def from_env(cls, environment: str = "", environ: dict[str, str] | None = None) -> Telemetry:
        from deployer import __version__

        env = dict(os.environ if environ is None else environ)
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repo = env.get("GITHUB_REPOSITORY", "")
        run_id = env.get("GITHUB_RUN_ID", "")
        attempt = env.get("GITHUB_RUN_ATTEMPT", "")
        run_url = f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else ""
        if run_url and attempt and attempt != "1":
            run_url += f"/attempts/{attempt}"
        return cls(
            actor=env.get("GITHUB_ACTOR", "") or env.get("USER", ""),
            repository=repo,
            ref=env.get("GITHUB_REF", ""),
            sha=env.get("GITHUB_SHA", ""),
            workflow=env.get("GITHUB_WORKFLOW", ""),
            event=env.get("GITHUB_EVENT_NAME", ""),
            run_id=run_id,
            run_attempt=attempt,
            run_url=run_url,
            environment=environment,
            tool_version=__version__,
        )


@dataclass
class Finding:
    """One check of the security preflight and what it found."""

    check: str
    severity: str  # ok | info | warning | error
    message: str
    advice: str = ""


@dataclass
class SecurityResult:
    """The security preflight: its findings and the level that fails the run."""

    findings: list[Finding] = field(default_factory=list)
    fail_on: str = "error"
    target_schemas: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def warnings(self) -> int:
        return self.count("warning")

    @property
    def failing(self) -> list[Finding]:
        levels = {"error"} if self.fail_on == "error" else {"error", "warning"}
        return [f for f in self.findings if f.severity in levels]


@dataclass
class HistoryEntry:
    """One row of the deploy history: a revision applied, reverted, baselined or accepted."""

    revision: str
    kind: str  # upgrade | downgrade | baseline | accepted-edit
    checksum: str
    applied_at: str
    seconds: float | None
    tool_version: str
    actor: str
    sha: str
    run_url: str
    code_checksum: str = ""  # of what the code does (deployer/checksums.py); "" on old rows


@dataclass
class IntegrityReport:
    """The history check: revisions compared with their recorded checksums, baselined, accepted."""

    checked: int = 0
    baselined: list[str] | None = None
    accepted: list[str] | None = None


@dataclass
class PreflightResult:
    """The connection check: where the run connected, as whom, to which server."""

    target: str  # host:port/database, never the password
    server_version: str = ""
    server_version_num: int = 0
    user: str = ""
    database: str = ""
    tls: bool | None = None
    attempts: int = 1
    seconds: float = 0.0


@dataclass
class Revision:
    """A revision of the migrations folder."""

    revision: str
    description: str = ""
    down_revision: list[str] = field(default_factory=list)
    path: str = ""


@dataclass
class AppliedRevision:
    """A revision the migrate step ran, and how long it took."""

    revision: str
    description: str
    seconds: float
    # False while it ran inside a transaction still open (an all-or-nothing env.py: one
    # transaction for the whole upgrade), which commits or rolls back later.
    committed: bool = True


@dataclass
class Failure:
    """Where a run failed and why, as precisely as known (the report's `failure`; stable keys).

    `file`/`line`: the revision's file (relative to the workspace when inside it) and the line
    of the deepest traceback frame inside it; `statement`: the failing SQL (secrets and password
    literals masked, then cut); `position`: the server's 1-based character position in it
    (`statement_line`/`statement_column`: the same as line and column); `detail`, `hint`,
    `context`, `sqlstate`: the server's; `exception`: a Python exception (type: message);
    `object`: the blocker or the failing object (a session, a table, a file, revisions)."""

    revision: str = ""
    file: str = ""
    line: int | None = None
    statement: str = ""
    position: int | None = None
    statement_line: int | None = None
    statement_column: int | None = None
    message: str = ""  # the server's primary message
    detail: str = ""
    hint: str = ""
    context: str = ""
    sqlstate: str = ""
    exception: str = ""
    object: str = ""
    traceback: str = ""  # only with --debug


@dataclass
class LockAttempt:
    """One attempt to take the locks a migration needs (the lock ladder, issue 19): its
    `lock_timeout`, whether it timed out, and the session that blocked it."""

    attempt: int  # 1, 2, … in the order they ended (a statement retried alone counts too)
    lock_timeout: float  # seconds
    timed_out: bool = False
    # What was attempted: "upgrade" (env.py and the pending revisions), or, retried alone, the
    # statement (`env-connection: autocommit`, `autocommit_block`).
    scope: str = "upgrade"
    where: str = ""  # the revision that timed out, or "env.py"
    seconds: float = 0.0
    blocker_pid: int | None = None
    blocker_application: str = ""
    blocker_query_age: float | None = None  # seconds since the blocker's transaction began
    wait: float = 0.0  # the jittered wait after it, before the next attempt
    dropped_index: str = ""  # the invalid indexes a failed concurrent build left, dropped


@dataclass
class MigrateResult:
    """The migrate step: the revisions before and after, what was applied, and any failure."""

    script_location: str = ""
    target: str = "heads"
    previous: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    # Why `current` could not be read (the connection was lost and no new one read it, or the
    # deploy role may not read the version table: `current_unreadable`): the revision the
    # database is at is then unknown, never guessed.
    current_unknown: str = ""
    current_unreadable: bool = False
    pending: list[Revision] = field(default_factory=list)  # what was to be applied
    applied: list[AppliedRevision] = field(default_factory=list)
    failed_revision: str = ""
    error: str = ""
    failure: Failure | None = None  # where the failed revision failed
    rolled_back: list[str] = field(default_factory=list)  # ran, then undone with the failure
    lock_timed_out: bool = False
    history_inline: bool = False  # history rows written inside each revision's transaction
    blocked_by: str = ""  # the session that held the lock a failed revision waited for
    lock_attempts: list[LockAttempt] = field(default_factory=list)  # the lock ladder's
    dry_run: bool = False
    sql: dict[str, str] = field(default_factory=dict)  # revision → offline SQL (dry run)
    transaction_per_migration: bool = False
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    seconds: float = 0.0

    @property
    def version_table_name(self) -> str:
        s = self.version_table_schema
        return f"{s}.{self.version_table}" if s else self.version_table

    @property
    def unknown_because(self) -> str:
        """What kept `current` unread, in a word or two (with `current_unknown`)."""
        return "version table unreadable" if self.current_unreadable else "connection lost"


@dataclass
class TableDelta:
    """Rows the seed inserted, updated and deleted in one table."""

    table: str
    inserted: int
    updated: int
    deleted: int


@dataclass
class SeedResult:
    """The seed step: the file run and what it changed."""

    path: str
    kind: str  # "python" or "sql"
    tables: list[TableDelta] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    # False only when the seed ended the deployer's transaction itself: then what it wrote
    # afterwards may have been committed, and no report may say "rolled back".
    rolled_back: bool = True

    @property
    def outcome(self) -> str:
        """What became of a failed seed's work, as reports say it."""
        return "was rolled back" if self.rolled_back else "may have committed part of its work"

    @property
    def inserted(self) -> int:
        return sum(t.inserted for t in self.tables)

    @property
    def updated(self) -> int:
        return sum(t.updated for t in self.tables)

    @property
    def deleted(self) -> int:
        return sum(t.deleted for t in self.tables)


@dataclass
class StatusResult:
    """The status step: the database's heads against the migrations' heads."""

    database_heads: list[str] = field(default_factory=list)
    script_heads: list[str] = field(default_factory=list)
    pending: list[Revision] = field(default_factory=list)
    up_to_date: bool = False
    error: str = ""
    seconds: float = 0.0


@dataclass
class TableCheck:
    """The smoke's read of one table: its rows (exact, estimated or a lower bound) or its error."""

    schema: str
    name: str
    rows: int | None = None
    estimated: bool = False
    lower_bound: bool = False  # never analysed and large: at least `rows`
    ok: bool = True
    error: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class ExtensionCheck:
    """An extension the smoke requires, and the version installed."""

    name: str
    required: str = ""  # minimum version asked, "" = any
    installed: str | None = None  # None = not installed
    ok: bool = True
    # A dry run: not installed yet, but the deploy may install it (checked after the deploy).
    deferred: bool = False


@dataclass
class ExpectationCheck:
    """A row count the smoke expects of a table (`smoke-expect`), and what it found."""

    table: str
    minimum: int
    counted: int | None = None  # at most `minimum` rows are counted
    ok: bool = False
    error: str = ""
    # A dry run: not met yet, but the deploy may meet it (checked after the deploy).
    deferred: bool = False


@dataclass
class VectorIndex:
    """A pgvector index the smoke looked at, with pgvector's guidance on its lists."""

    name: str
    table: str
    method: str  # ivfflat or hnsw
    size_bytes: int
    rows: int | None = None
    lists: int | None = None
    recommended_lists: int | None = None
    advice: str = ""  # SQL to fix, when lists is far from pgvector's guidance


@dataclass
class SmokeResult:
    """The smoke step: every table read, the extensions and the expected row counts."""

    tables: list[TableCheck] = field(default_factory=list)
    extensions: list[ExtensionCheck] = field(default_factory=list)
    expectations: list[ExpectationCheck] = field(default_factory=list)
    vector_indexes: list[VectorIndex] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed_tables(self) -> list[TableCheck]:
        return [t for t in self.tables if not t.ok]

    @property
    def total_rows(self) -> int:
        return sum(t.rows or 0 for t in self.tables if t.ok)

    @property
    def problems(self) -> list[str]:
        out = [f"table {t.qualified} is not readable: {t.error}" for t in self.failed_tables]
        for e in self.extensions:
            if not e.ok and not e.deferred:
                have = f"version {e.installed} is installed" if e.installed else "not installed"
                want = f" >= {e.required}" if e.required else ""
                out.append(f"extension {e.name}{want} required, {have}")
        for x in self.expectations:
            if not x.ok and not x.deferred:
                got = x.error or f"found {x.counted}"
                out.append(f"expected {x.table} >= {x.minimum} rows, {got}")
        return out


@dataclass
class RunResult:
    """Everything one run did: the only input of the renderers (markdown, terminal, JSON, Slack,
    GitHub outputs)."""

    command: str
    telemetry: Telemetry
    status: str = "success"  # success | noop | failed | cancelled
    exit_code: int = 0
    failed_step: str = ""
    error: str = ""
    error_class: str = ""  # deployer.errors.ERROR_CLASSES; "" on success
    failure: Failure | None = None  # where it failed: the revision's file and line, the SQL…
    dry_run: bool = False
    seed_requested: bool = False
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step → seconds
    preflight: PreflightResult | None = None
    migrate: MigrateResult | None = None
    seed: SeedResult | None = None
    status_check: StatusResult | None = None
    smoke: SmokeResult | None = None
    install: InstallResult | None = None
    history: list[HistoryEntry] = field(default_factory=list)  # newest first
    integrity: IntegrityReport | None = None
    # Operations modes: their own records.
    backup: BackupResult | None = None
    restore: RestoreResult | None = None
    drift: DriftResult | None = None
    security: SecurityResult | None = None
    risk: RiskResult | None = None
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    report_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # command-specific facts

    @property
    def duration(self) -> float:
        end = self.finished_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "cancelled")

    @property
    def applied(self) -> list[AppliedRevision]:
        return self.migrate.applied if self.migrate else []

    @property
    def previous_revision(self) -> str:
        return ",".join(self.migrate.previous) if self.migrate else ""

    @property
    def current_revision(self) -> str:
        if self.status_check and self.status_check.database_heads:
            return ",".join(self.status_check.database_heads)
        if self.migrate and self.revision_unknown:
            return f"unknown ({self.migrate.unknown_because})"
        return ",".join(self.migrate.current) if self.migrate else ""

    @property
    def revision_unknown(self) -> str:
        """Why the revision the database is at is unknown (the connection was lost, or the
        version table may not be read), or ""."""
        if self.status_check and self.status_check.database_heads:
            return ""
        return self.migrate.current_unknown if self.migrate else ""

    @property
    def head_revision(self) -> str:
        if self.status_check and self.status_check.script_heads:
            return ",".join(self.status_check.script_heads)
        return ""

    @property
    def pending_count(self) -> int:
        if self.status_check is not None:
            return len(self.status_check.pending)
        if self.migrate is not None:
            return len(self.migrate.pending) - len(self.migrate.applied)
        return 0

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["duration_seconds"] = self.duration
        data["schema_version"] = SCHEMA_VERSION
        data["status_check"] = data.pop("status_check")
        if self.migrate is not None and self.migrate.failure is self.failure:
            data["migrate"].pop("failure", None)  # the run's `failure` holds it
        if self.seed is not None:
            data["seed"]["totals"] = {
                "inserted": self.seed.inserted,
                "updated": self.seed.updated,
                "deleted": self.seed.deleted,
            }
        if self.smoke is not None:
            data["smoke"]["summary"] = {
                "tables": len(self.smoke.tables),
                "failed": len(self.smoke.failed_tables),
                "rows": self.smoke.total_rows,
                "problems": self.smoke.problems,
            }
        data["revisions"] = {
            "previous": self.previous_revision,
            "current": self.current_revision,
            "head": self.head_revision,
            "pending_count": self.pending_count,
        }
        if self.revision_unknown:
            data["revisions"]["current_unknown"] = self.revision_unknown
        return data
