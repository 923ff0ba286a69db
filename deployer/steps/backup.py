"""Backup: `pg_dump` in custom format, with its size, duration, SHA-256 and the revision.

The file is written under a temporary name with mode 0600 (a dump holds every row) and
renamed into place only once pg_dump succeeded, next to a `<file>.sha256` sidecar in
`sha256sum` format (`sha256sum -c` checks it; so does the restore command). An existing file is
never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import datetime
from pathlib import Path

from deployer import pgtools
from deployer.errors import ConfigError, StepFailed
from deployer.files import give_to_owner

SUFFIX = ".dump"
CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path, digest: str) -> Path:
    side = sidecar(path)
    side.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return side


def read_sidecar(path: Path) -> str:
    """The hex digest a `<file>.sha256` sidecar records (first word of its first line)."""
    text = sidecar(path).read_text(encoding="utf-8", errors="replace").strip()
    word = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", word):
        raise ConfigError(f"{sidecar(path).name} does not hold a SHA-256 digest")
    return word


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def default_name(database: str, revision: str, when: datetime) -> str:
    """`<db>-<revision>-<UTC time>.dump`; several heads joined with `+`, `base` for none."""
    rev = "+".join(_safe(r) for r in revision.split(",") if r) or "base"
    return f"{_safe(database)}-{rev}-{when.strftime('%Y%m%dT%H%M%SZ')}{SUFFIX}"


def destination(backup_path: str, resolve: Path, name: str) -> Path:
    """Where the dump goes: `backup-path` as a file, or (empty, an existing folder, or ending in
    `/`) a folder holding `name`. `resolve` is backup-path resolved against the workspace."""
    if not backup_path or backup_path.endswith(("/", os.sep)) or resolve.is_dir():
        return resolve / name
    return resolve


def dump(
    url: str,
    target: Path,
    *,
    tool: pgtools.Tool,
    lock_timeout: float,
    connect_timeout: float,
    workspace: Path | None = None,
) -> tuple[str, int, str, float]:
    """pg_dump -Fc of `url` into `target` (which must not exist). Returns (tool, size, sha256,
    seconds). Raises ConfigError (bad path) or StepFailed (pg_dump failed). Inside `workspace`,
    the dump, its sidecar and the folders made for them go to the workspace's owner
    (`give_to_owner`)."""
    if target.exists():
        raise ConfigError(f"backup file {target} exists already: backups are never overwritten")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the backup folder {target.parent}: {exc.strerror}"
        ) from None
    partial = target.with_name(f".{target.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write the backup file {target}: {exc.strerror}") from None
    uri, env = pgtools.child_env(url, connect_timeout=connect_timeout)
    redact = pgtools.redactor_for(url)
    started = time.perf_counter()
    run = pgtools.run_tool(
        tool,
        [
            "--format=custom",
            "--no-password",
            # lock-timeout 0 is PostgreSQL's "no limit": then pg_dump waits as long as it takes
            *([f"--lock-wait-timeout={max(1, int(lock_timeout * 1000))}"] if lock_timeout else []),
            f"--file={partial}",
            f"--dbname={uri}",
        ],
        env,
        redact=redact,
    )
    seconds = round(time.perf_counter() - started, 4)
    if run.returncode != 0:
        partial.unlink(missing_ok=True)
        raise StepFailed(
            f"pg_dump failed (exit {run.returncode}): {pgtools.error_line(run.stderr, redact)}",
            step="backup",
        )
    digest = sha256_file(partial)
    size = partial.stat().st_size
    os.replace(partial, target)
    side = write_sidecar(target, digest)
    give_to_owner(target, workspace)
    give_to_owner(side, workspace)
    return f"pg_dump {tool.version}", size, digest, seconds
