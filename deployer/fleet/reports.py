"""The per-target records on disk: written by `fleet` (one `<name>.target.json` per target,
beside the target's own deploy report `<name>.json` and its log `<name>.log`), read back by
`fleet-report` from a folder of shards' artifacts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deployer.results.fleet import TargetResult
from deployer.results.run import plain

RECORD_SUFFIX = ".target.json"
REPORTS_DIR = "db-deploy-fleet"  # in the workspace


def record_path(folder: Path, name: str) -> Path:
    return folder / f"{name}{RECORD_SUFFIX}"


def write_record(folder: Path, target: TargetResult) -> Path:
    """`<name>.target.json` in `folder`, written whole (a reader never sees half of it)."""
    path = record_path(folder, target.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plain(target), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def from_report(target: TargetResult, data: dict[str, Any]) -> None:
    """Fill `target` from its deploy's JSON report (deployer/render/json_report.py)."""
    revisions = data.get("revisions") or {}
    migrate = data.get("migrate") or {}
    target.status = str(data.get("status") or "failed")
    target.exit_code = data.get("exit_code", target.exit_code)
    target.previous_revision = str(revisions.get("previous", ""))
    target.current_revision = str(revisions.get("current", ""))
    target.head_revision = str(revisions.get("head", ""))
    target.pending_count = int(revisions.get("pending_count") or 0)
    target.applied_count = len(migrate.get("applied") or [])
    target.seconds = float(data.get("duration_seconds") or 0.0)
    target.failed_step = str(data.get("failed_step", ""))
    target.error = str(data.get("error", ""))
    target.error_class = str(data.get("error_class", "") or "")
    target.finished_at = str(data.get("finished_at") or "")


def read_records(folder: Path) -> tuple[list[TargetResult], list[str]]:
    """Every `*.target.json` under `folder` (artifacts may each be a sub-folder); for a name
    found more than once (a re-run's artifacts beside the first run's), the latest. Returns the
    records and the problems (unreadable files), one line each."""
    found: dict[str, TargetResult] = {}
    problems: list[str] = []
    for path in sorted(folder.rglob(f"*{RECORD_SUFFIX}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise ValueError("not a target record")
            record = TargetResult.from_dict(data)
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"{path.relative_to(folder)}: unreadable ({type(exc).__name__})")
            continue
        old = found.get(record.name)
        if old is None or (record.finished_at, _rank(record)) >= (old.finished_at, _rank(old)):
            found[record.name] = record
    return list(found.values()), problems


def _rank(t: TargetResult) -> int:
    return 0 if t.status == "not-reached" else 1


def missing(names: Iterable[tuple[str, int]], records: list[TargetResult]) -> list[TargetResult]:
    """Targets of the fleet file without a record: their wave job never ran them."""
    have = {r.name for r in records}
    return [TargetResult(name=n, wave=w, status="not-reached") for n, w in names if n not in have]
