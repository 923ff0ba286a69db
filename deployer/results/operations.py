"""The records of the operations modes: what backup, restore and drift return, and the
requirements install (imported on first use: see deployer/results/__init__.py)."""

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
class InstallResult:
    """The application's requirements installed before its env.py runs (`requirements`)."""

    requirements: str
    command: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    hashes: bool = False
    seconds: float = 0.0
