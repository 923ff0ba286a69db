"""The operations modes' records (security, backup, restore, drift, rollback; plan's outputs):
their sections of the job summary, their lines of the terminal report, their job outputs.

deployer/render/markdown.py and deployer/render/terminal.py place the sections and lines;
deployer/render/outputs.py merges `outputs(result)` (names and meanings in `OUTPUTS`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from deployer import interface
from deployer.render.tables import SEVERITY_ICON, cell, details, fmt_bytes, rev, short, table

if TYPE_CHECKING:
    from deployer.results import (
        BackupResult,
        Difference,
        DriftResult,
        MigrateResult,
        RestoreResult,
        RunResult,
        SecurityResult,
    )

MAX_ROWS = 200  # differences listed in the summary; the JSON report has them all
MAX_DIFF = 60_000  # characters of the catalog diff in the summary
MAX_PLAN_SQL = 100_000  # characters of the plan-sql output

# name → description: the registry's (deployer/interface.py).
OUTPUTS: dict[str, str] = interface.descriptions(interface.OPERATIONS_OUTPUTS)


# --------------------------------------------------------------------------- outputs


def plan_sql(result: RunResult) -> str:
    m = result.migrate
    if m is None or not m.dry_run or not m.sql:
        return ""
    text = "\n\n".join(f"-- {rev}\n{sql}" for rev, sql in m.sql.items())
    if len(text) > MAX_PLAN_SQL:
        text = text[:MAX_PLAN_SQL].rsplit("\n", 1)[0] + "\n-- … cut: the summary has it all"
    return text


def outputs(result: RunResult) -> dict[str, str]:
    b, rs, d, sec, m = result.backup, result.restore, result.drift, result.security, result.migrate
    pending = m.pending if m is not None and m.dry_run and result.command != "rollback" else []
    values = {
        "backup-file": b.path if b else "",
        "backup-size": str(b.size_bytes) if b else "",
        "backup-sha256": b.sha256 if b else "",
        "backup-revision": b.revision if b else "",
        "backup-seconds": f"{b.seconds:.2f}" if b else "",
        "restored-revision": rs.restored_revision if rs else "",
        "drift-count": str(d.count) if d else "",
        "preflight-errors": str(sec.errors) if sec else "",
        "preflight-warnings": str(sec.warnings) if sec else "",
        "pending-revisions": json.dumps(
            [{"revision": p.revision, "description": p.description} for p in pending]
        )
        if m is not None and m.dry_run and result.command != "rollback"
        else "",
        "plan-sql": plan_sql(result) if result.command != "rollback" else "",
    }
    assert set(values) == set(OUTPUTS)
    return values


# --------------------------------------------------------------------------- markdown


def security(sec: SecurityResult, *, compact: bool) -> list[str]:
    """The findings; `compact` folds them away when nothing fails and nothing warns."""
    head = (
        f"{len(sec.findings)} checks: {sec.errors} error(s), {sec.warnings} warning(s)"
        + (f"; failing on {sec.fail_on}" if sec.fail_on != "error" else "")
        + "."
    )
    rows = [
        [
            f.check,
            f"{SEVERITY_ICON.get(f.severity, '')} {f.severity}",
            f.message,
            f"`{f.advice}`" if f.advice and f.severity in ("warning", "error") else "",
        ]
        for f in sec.findings
    ]
    body = table(["Check", "Severity", "Finding", "Advice"], rows)
    lines = ["### Security preflight", "", head, ""]
    if compact and not sec.failing and not sec.warnings:
        return [*lines, *details("Findings", body)]
    return [*lines, *body, ""]


BACKUP_TITLE = {
    "before-deploy": "### Backup before the deploy",
    "before-rollback": "### Backup before the rollback",
}


def backup(b: BackupResult) -> list[str]:
    rows = [
        ["File", f"`{b.path}`"],
        ["Size", f"{fmt_bytes(b.size_bytes)} ({b.size_bytes:,} bytes)"],
        ["SHA-256", f"`{b.sha256}` (also in the `.sha256` file beside it)"],
        ["Revision", rev(b.revision)],
        ["Database", f"`{b.database}`, PostgreSQL {b.server_version}"],
        ["Duration", f"{b.seconds:.2f} s"],
        ["Tool", f"{b.tool}, custom format (`pg_restore` reads it)"],
    ]
    return [BACKUP_TITLE.get(b.reason, "### Backup"), "", *table(["", ""], rows), ""]


def restore(rs: RestoreResult, *, dry_run: bool) -> list[str]:
    lines = ["### Restore", ""]
    if dry_run:
        lines += [f"Dry run: `{rs.path}` verified, nothing restored.", ""]
    elif rs.restored_revision or rs.seconds:
        lines += [
            f"Restored `{rs.path}` in {rs.seconds:.2f} s: revision {rev(rs.previous_revision)} "
            f"→ {rev(rs.restored_revision)}.",
            "",
        ]
    return [*lines, *table(["", ""], _restore_rows(rs)), ""]


def _restore_rows(rs: RestoreResult) -> list[list[object]]:
    rows: list[list[object]] = [
        ["File", f"`{rs.path}` ({fmt_bytes(rs.size_bytes)})"],
        ["SHA-256", f"✅ `{rs.sha256}` matches its `.sha256` file" if rs.sha256 else "—"],
    ]
    if rs.archive_database:
        rows.append(
            [
                "Backup of",
                f"`{rs.archive_database}` (PostgreSQL {rs.archive_server_version}, "
                f"pg_dump {rs.archive_pg_dump_version})",
            ]
        )
    if rs.tool:
        rows.append(["Tool", f"{rs.tool}, one transaction (all or nothing)"])
    rows.append(["Tables with data", rs.tables])
    if rs.skipped:
        rows.append(["Left out", "; ".join(rs.skipped)])
    if rs.left_in_place:
        left = rs.left_in_place
        more = f" and {len(left) - 20} more" if len(left) > 20 else ""
        rows.append(
            ["Newer than the backup, left in place", ", ".join(f"`{n}`" for n in left[:20]) + more]
        )
    return rows


def drift(d: DriftResult) -> list[str]:
    lines = ["### Drift", "", _drift_verdict(d), ""]
    if d.differences:
        lines += _differences(d.differences)
    if d.diff:
        text = d.diff if len(d.diff) <= MAX_DIFF else d.diff[:MAX_DIFF].rsplit("\n", 1)[0]
        lines += details(
            "Catalog diff (migrations → live)", ["```diff", text.replace("```", "'''"), "```"]
        )
    if d.model_differences:
        lines += ["#### Models (`target_metadata`) against the live database", ""]
        lines += [f"- {cell(x)}" for x in d.model_differences[:MAX_ROWS]] + [""]
    if d.models_note:
        lines += [cell(d.models_note.rstrip(".")) + ".", ""]
    for note in d.notes:
        lines += [f"> {cell(note)}", ""]
    return lines


def _drift_verdict(d: DriftResult) -> str:
    where = f"at {', '.join(f'`{h}`' for h in d.revision) or '`base`'}"
    if not d.count:
        return (
            f"✅ No drift: {d.objects} objects of the live database match the migrations "
            f"replayed {where} on {d.scratch}" + (" and the models." if d.models_checked else ".")
        )
    return (
        f"❌ {d.count} difference(s) between the live database and the migrations replayed "
        f"{where} on {d.scratch}"
        + (f" (and {len(d.model_differences)} with the models)" if d.model_differences else "")
        + "."
    )


def _differences(differences: list[Difference]) -> list[str]:
    rows = [
        [x.kind, f"`{x.name}`", x.change, *_pair(x.live, x.expected)]
        for x in differences[:MAX_ROWS]
    ]
    lines = table(["Kind", "Object", "Difference", "Live", "Migrations"], rows)
    if len(differences) > MAX_ROWS:
        lines += ["", f"… and {len(differences) - MAX_ROWS} more (see the JSON report)."]
    return [*lines, ""]


def _pair(live: str, expected: str, limit: int = 160) -> tuple[str, str]:
    """Both sides of a difference, cut to `limit`; when both are long, from a little before
    where they start to differ (an enum with one more label shows its end)."""
    a, b = " ".join(live.split()), " ".join(expected.split())
    if len(a) > limit and len(b) > limit:
        same = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            same += 1
        start = max(0, same - 40)
        if start:
            a, b = "…" + a[start:], "…" + b[start:]
    return short(a, limit), short(b, limit)


def rollback(m: MigrateResult) -> list[str]:
    lines = ["### Rollback", ""]
    if m.dry_run:
        revs = ", ".join(f"`{p.revision}`" for p in m.pending) or "nothing"
        lines += [
            f"Dry run: a rollback to `{m.target}` would revert {len(m.pending)} revision(s), "
            f"newest first: {revs}. Nothing was changed.",
            "",
        ]
    elif m.applied:
        lines += [
            f"Reverted {len(m.applied)} revision(s), newest first: "
            f"{', '.join(rev(a.revision) for a in m.applied)}; the database went from "
            f"{rev(','.join(m.previous))} to {rev(','.join(m.current))}.",
            "",
        ]
    elif not m.error:
        lines += [f"Nothing to revert: the database is already at `{m.target}`.", ""]
    return lines


# --------------------------------------------------------------------------- terminal


def security_lines(sec: SecurityResult, *, every: bool) -> list[str]:
    """The counts, and each finding that warns or fails (`every`: all of them)."""
    out = [
        f"security   {len(sec.findings)} checks, {sec.errors} error(s), {sec.warnings} warning(s)"
    ]
    for f in sec.findings:
        if every or f.severity in ("warning", "error"):
            out.append(f"  {SEVERITY_ICON.get(f.severity, '')} {f.check:<15} {f.message}")
    return out


def backup_lines(b: BackupResult) -> list[str]:
    return [
        f"backup     {b.path} ({fmt_bytes(b.size_bytes)}, {b.seconds:.2f}s, revision "
        f"{b.revision or 'base'})",
        f"  sha256 {b.sha256}",
    ]


def restore_lines(rs: RestoreResult, *, dry_run: bool) -> list[str]:
    if dry_run:
        out = [f"restore    {rs.path} verified (dry run, nothing restored)"]
    else:
        out = [
            f"restore    {rs.path}: {rs.previous_revision or 'base'} → "
            f"{rs.restored_revision or 'base'} ({rs.seconds:.2f}s)"
        ]
    return out + [f"  left in place (newer than the backup): {name}" for name in rs.left_in_place]


def drift_lines(d: DriftResult) -> list[str]:
    out = [
        f"drift      {d.count} difference(s) at {', '.join(d.revision) or 'base'} "
        f"(scratch: {d.scratch})"
    ]
    for x in d.differences:
        out.append(f"  {x.change:<31} {x.kind} {x.name}")
        if x.change == "differs":
            out.append(f"      live:       {short(x.live, 200)}")
            out.append(f"      migrations: {short(x.expected, 200)}")
    return out + [f"  models: {m}" for m in d.model_differences]
