"""Restore: `pg_restore` of a custom-format backup into the target database, atomically.

Before anything changes: the file's SHA-256 must match its `.sha256` sidecar, the header must be
a pg_dump custom-format archive, and `pg_restore --list` must read it. Then one
`pg_restore --clean --if-exists --single-transaction --no-owner` replaces what the backup holds:
it either all happens or nothing does.

What is left out of the restore, through a filtered table of contents (`--use-list`):
- the deploy history schema (`history-schema`): the audit trail of the database outlives a
  restore of its contents;
- extensions the database already has: `--clean` would `DROP EXTENSION` (which only its owner, in
  practice a superuser, may do, and which drags every column of its types along) just to create it
  again.

What a restore does not do: drop objects created after the backup. Those are listed (a later
`deploy` would trip over them, `drift` shows them) and left for a person to judge.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from deployer import pgtools
from deployer.errors import ConfigError, StepFailed
from deployer.steps.backup import SUFFIX, read_sidecar, sha256_file, sidecar


@dataclass
class ArchiveHeader:
    format_version: str
    database: str
    server_version: str  # of the server that was dumped
    pg_dump_version: str

    @property
    def pg_dump_major(self) -> int:
        m = re.match(r"(\d+)", self.pg_dump_version)
        return int(m.group(1)) if m else 0

    @property
    def server_major(self) -> int:
        m = re.match(r"(\d+)", self.server_version)
        return int(m.group(1)) if m else 0


@dataclass
class TocEntry:
    line: str
    desc: str
    schema: str
    tag: str


def find_file(path: Path, shown: str) -> Path:
    """`backup-path` names the file, or a folder holding exactly one `.dump` (an artifact
    downloaded by actions/download-artifact)."""
    if path.is_dir():
        dumps = sorted(p for p in path.glob(f"*{SUFFIX}") if p.is_file())
        if len(dumps) != 1:
            raise ConfigError(
                f"backup-path {shown} is a folder with {len(dumps)} {SUFFIX} files: name the "
                "file to restore"
            )
        return dumps[0]
    if not path.is_file():
        raise ConfigError(f"backup file {shown} does not exist")
    return path


def verify_checksum(path: Path) -> tuple[str, int]:
    """The file's SHA-256 must equal its sidecar's. Returns (digest, size)."""
    if not sidecar(path).is_file():
        raise ConfigError(
            f"no checksum file {sidecar(path).name} next to {path.name}: a restore verifies the "
            f"backup first (create one with `sha256sum {path.name} > {sidecar(path).name}` "
            "only if you trust the file)"
        )
    expected = read_sidecar(path)
    actual = sha256_file(path)
    if actual != expected:
        raise ConfigError(
            f"checksum mismatch for {path.name}: the file's SHA-256 is {actual[:16]}…, "
            f"{sidecar(path).name} says {expected[:16]}… (corrupt or altered backup)"
        )
    return actual, path.stat().st_size


def read_header(path: Path) -> ArchiveHeader:
    """Parse a custom-format archive's header (pg_backup_archiver.c, ReadHead) for the versions
    that made it. Anything else is a ConfigError."""
    try:
        with path.open("rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read {path.name}: {exc.strerror}") from None
    bad = ConfigError(f"{path.name} is not a pg_dump custom-format archive (pg_dump -Fc)")
    if not data.startswith(b"PGDMP"):
        raise bad
    pos = 5

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise bad
        pos += 1
        return data[pos - 1]

    vmaj, vmin = byte(), byte()
    vrev = byte() if (vmaj, vmin) > (1, 0) else 0
    version = (vmaj, vmin, vrev)
    if version < (1, 10, 0):
        raise ConfigError(f"{path.name} was written by a pg_dump older than 9.0: not supported")
    int_size = byte()
    byte()  # offset size
    if byte() != 1:  # archCustom
        raise bad

    def read_int() -> int:
        sign = byte()
        value = 0
        for shift in range(int_size):
            value |= byte() << (8 * shift)
        return -value if sign else value

    def read_str() -> str:
        nonlocal pos
        n = read_int()
        if n < 0:
            return ""
        if pos + n > len(data):
            raise bad
        pos += n
        return data[pos - n : pos].decode("utf-8", errors="replace")

    if version >= (1, 15, 0):
        byte()  # compression algorithm
    else:
        read_int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        read_int()
    database = read_str()
    server = read_str()
    dumped_by = read_str()
    return ArchiveHeader(
        format_version=f"{vmaj}.{vmin}.{vrev}",
        database=database,
        server_version=server,
        pg_dump_version=dumped_by,
    )


# Descriptions of TOC entries with spaces in them (pg_dump's `te->desc`), longest first.
_MULTIWORD = sorted(
    (
        "TABLE DATA",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "DEFAULT ACL",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "LARGE OBJECT",
        "BLOB METADATA",
        "BLOB COMMENTS",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "FOREIGN DATA WRAPPER",
        "FOREIGN TABLE",
        "FOREIGN SERVER",
        "USER MAPPING",
        "EVENT TRIGGER",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "ACCESS METHOD",
        "SHELL TYPE",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "ROW SECURITY",
        "STATISTICS DATA",
        "PROCEDURAL LANGUAGE",
        "DATABASE PROPERTIES",
        "INDEX ATTACH",
        "TABLE ATTACH",
        "DUMMY TYPE",
    ),
    key=len,
    reverse=True,
)
_ENTRY = re.compile(r"^\d+; \d+ \d+ (.*)$")


def parse_toc(listing: str) -> list[TocEntry]:
    """`pg_restore --list` → entries (`ID; CATALOG OID DESC SCHEMA TAG OWNER`); comments kept
    as entries with an empty desc so that the list can be written back."""
    out: list[TocEntry] = []
    for line in listing.splitlines():
        m = _ENTRY.match(line)
        if not m:
            out.append(TocEntry(line=line, desc="", schema="", tag=""))
            continue
        rest = m.group(1)
        desc = next((d for d in _MULTIWORD if rest.startswith(d + " ")), rest.split(" ", 1)[0])
        rest = rest[len(desc) + 1 :]
        schema, _, rest = rest.partition(" ")
        # The owner is the last word (empty for some entries: the line then ends in a space).
        tag = rest.rsplit(" ", 1)[0] if " " in rest else rest
        out.append(TocEntry(line=line, desc=desc, schema=schema, tag=tag))
    return out


def _extension_of(e: TocEntry) -> str:
    """The extension an entry creates or comments on, else ""."""
    if e.desc == "EXTENSION":
        return e.tag
    if e.desc == "COMMENT" and e.schema == "-" and e.tag.startswith("EXTENSION "):
        return e.tag.removeprefix("EXTENSION ")
    return ""


def filter_toc(
    entries: Iterable[TocEntry], *, history_schema: str, installed_extensions: set[str]
) -> tuple[str, list[str]]:
    """The list for `--use-list` with the entries to leave out commented, and what was left out."""
    lines: list[str] = []
    skipped: list[str] = []
    for e in entries:
        why = ""
        if (
            e.desc
            and history_schema
            and (
                e.schema == history_schema
                or (e.desc == "SCHEMA" and e.tag == history_schema)
                or (e.schema == "-" and e.tag == f"SCHEMA {history_schema}")
            )
        ):
            why = "the deploy history is kept"
        elif _extension_of(e) in installed_extensions:
            why = "extension already installed"
        if why:
            lines.append(";" + e.line)
            if e.desc in ("SCHEMA", "EXTENSION"):
                skipped.append(f"{e.desc.lower()} {e.tag}: {why}")
        else:
            lines.append(e.line)
    return "\n".join(lines) + "\n", skipped


RELATIONS = {"TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE"}

_LIVE_RELATIONS = sa.text(
    """
    SELECT n.nspname, c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
      AND n.nspname <> :history
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))
    ORDER BY 1, 2
    """
)


def newer_relations(
    conn: sa.Connection, entries: Iterable[TocEntry], history_schema: str
) -> list[str]:
    """Relations in the database that the archive does not hold (created after the backup).
    Sequences owned by a column (`serial`) and extension members are left out."""
    in_archive = {(e.schema, e.tag) for e in entries if e.desc in RELATIONS}
    try:
        rows = conn.execute(_LIVE_RELATIONS, {"history": history_schema}).all()
    finally:
        if conn.in_transaction():
            conn.rollback()
    return [f"{s}.{n}" for s, n in rows if (s, n) not in in_archive]


def list_archive(tool: pgtools.Tool, path: Path) -> str:
    """`pg_restore --list`: proves the archive readable from end to end of its table of
    contents, and gives the entries. An unreadable archive is a ConfigError."""
    quiet = pgtools.Redactor()
    run = pgtools.run_tool(tool, ["--list", str(path)], {**os.environ, "LC_ALL": "C"}, redact=quiet)
    if run.returncode != 0:
        raise ConfigError(
            f"{tool.name} {tool.version} cannot read {path.name}: "
            + pgtools.error_line(run.stderr, quiet)
        )
    return run.stdout


def restore(
    tool: pgtools.Tool,
    url: str,
    path: Path,
    listing: str,
    *,
    lock_timeout: float,
    connect_timeout: float,
) -> float:
    """Run pg_restore in one transaction. Returns its seconds; raises StepFailed when it fails
    (the transaction is then rolled back: the database is as it was)."""
    fd, name = tempfile.mkstemp(prefix="db-deploy-toc-", suffix=".list")
    listfile = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(listing)
    uri, env = pgtools.child_env(url, lock_timeout=lock_timeout, connect_timeout=connect_timeout)
    redact = pgtools.redactor_for(url)
    try:
        run = pgtools.run_tool(
            tool,
            [
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--exit-on-error",
                "--no-owner",
                "--no-password",
                f"--use-list={listfile}",
                f"--dbname={uri}",
                str(path),
            ],
            env,
            redact=redact,
        )
    finally:
        listfile.unlink(missing_ok=True)
    if run.returncode != 0:
        raise StepFailed(
            "pg_restore failed and its transaction was rolled back (the database is unchanged): "
            + pgtools.error_line(run.stderr, redact),
            step="restore",
        )
    return run.seconds


def archive_table_count(entries: Iterable[TocEntry], history_schema: str) -> int:
    return sum(1 for e in entries if e.desc == "TABLE DATA" and e.schema != history_schema)


def describe(header: ArchiveHeader) -> str:
    return (
        f"backup of {header.database} (PostgreSQL {header.server_version}, "
        f"pg_dump {header.pg_dump_version})"
    )
