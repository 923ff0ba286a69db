"""The records of the operations modes and of the deploy history: what backup, restore, drift,
the security checks, the requirements install and the history step return."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackupResult:
    """What `backup` (or `backup-before`) wrote: the archive, its digest and what it holds."""

    path: str  # as shown: relative to the workspace when inside it
    file: str  # absolute path
    size_bytes: int = 0
    sha256: str = ""
    revision: str = ""  # comma-separated heads, "" = base (no version table)
    database: str = ""
    server_version: str = ""
    tool: str = ""  # "pg_dump 18.4"
    seconds: float = 0.0
    reason: str = "backup"  # backup | before-deploy | before-rollback


@dataclass
class RestoreResult:
    """What `restore` read: the archive, its digest and what pg_dump wrote in it."""

    path: str
    sha256: str = ""
    size_bytes: int = 0
    archive_database: str = ""
    archive_server_version: str = ""
    archive_pg_dump_version: str = ""
    tool: str = ""
    previous_revision: str = ""
    restored_revision: str = ""
    tables: int = 0  # tables whose data the archive holds
    skipped: list[str] = field(default_factory=list)  # TOC entries left out, and why
    left_in_place: list[str] = field(default_factory=list)  # relations newer than the backup
    seconds: float = 0.0


@dataclass
class Difference:
    """One object that differs between the live database and the migrations (`drift`)."""

    kind: str  # schema, table, view, sequence, column, constraint, index, enum, extension, …
    name: str
    change: str  # "only in the live database" | "missing from the live database" | "differs"
    live: str = ""
    expected: str = ""


@dataclass
class DriftResult:
    """What `drift` compared: the live database against the migrations replayed on a scratch
    database."""

    revision: list[str] = field(default_factory=list)
    scratch: str = ""  # where the migrations were replayed (never a password)
    scratch_version: str = ""
    live_version: str = ""
    objects: int = 0  # objects compared (live side)
    differences: list[Difference] = field(default_factory=list)
    diff: str = ""  # unified diff of the two catalogs (migrations → live)
    models_checked: bool = False
    models_note: str = ""
    model_differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.differences) + len(self.model_differences)


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
class InstallResult:
    """The application's requirements installed before its env.py runs (`requirements`)."""

    requirements: str
    command: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    hashes: bool = False
    seconds: float = 0.0


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
