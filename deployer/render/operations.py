"""Rendering of the operations modes' records (backup, restore, drift, security, rollback, plan):
markdown sections for the job summary, job outputs, and terminal lines.

deployer/render/markdown.py appends `sections(result)` before its warnings, and
deployer/render/outputs.py merges `outputs(result)` (names and meanings in `OUTPUTS`).
"""

from __future__ import annotations

import json
from typing import Any

from deployer.results import RunResult

MAX_ROWS = 200  # differences listed in the summary; the JSON report has them all
MAX_DIFF = 60_000  # characters of the catalog diff in the summary
MAX_PLAN_SQL = 100_000  # characters of the plan-sql output
SEVERITY_ICON = {"ok": "✅", "info": "ℹ️", "warning": "⚠️", "error": "❌"}

OUTPUTS: dict[str, str] = {
    "backup-file": "backup: path of the dump (relative to the workspace when inside it)",
    "backup-size": "backup: size of the dump in bytes",
    "backup-sha256": "backup: SHA-256 of the dump (also in <backup-file>.sha256)",
    "backup-revision": "backup: the database's revision when it was taken (empty: base)",
    "backup-seconds": "backup: how long pg_dump took",
    "restored-revision": "restore: the database's revision after the restore",
    "drift-count": "drift: number of differences found (0: none)",
    "preflight-errors": "security preflight: findings of severity error",
    "preflight-warnings": "security preflight: findings of severity warning",
    "pending-revisions": 'plan: JSON list of the revisions a deploy would apply: [{"revision", '
    '"description"}]',
    "plan-sql": "plan: the SQL of the pending revisions (Alembic offline mode)",
}


def _fmt_bytes(n: int) -> str:
    from deployer.render.markdown import fmt_bytes

    return fmt_bytes(n)


def _cell(value: object) -> str:
    from deployer.render.markdown import cell

    return cell(value)


def _table(headers: list[str], rows: list[list[object]], align: str = "") -> list[str]:
    from deployer.render.markdown import table

    return table(headers, rows, align)


def _rev(text: str) -> str:
    return f"`{text}`" if text else "`base`"


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


def sections(r: RunResult) -> list[str]:
    """Markdown for the operations records present in `r`."""
    lines: list[str] = []
    if r.security is not None:
        lines += _security(r.security, compact=r.command != "preflight")
    if r.backup is not None:
        lines += _backup(r.backup)
    if r.restore is not None:
        lines += _restore(r.restore, r.dry_run)
    if r.drift is not None:
        lines += _drift(r.drift)
    if r.command == "rollback" and r.migrate is not None:
        lines += _rollback(r)
    return lines


def _security(sec: Any, *, compact: bool) -> list[str]:
    failing = sec.failing
    head = (
        f"{len(sec.findings)} checks: {sec.errors} error(s), {sec.warnings} warning(s)"
        + (f"; failing on {sec.fail_on}" if sec.fail_on != "error" else "")
        + "."
    )
    rows: list[list[object]] = [
        [
            f.check,
            f"{SEVERITY_ICON.get(f.severity, '')} {f.severity}",
            f.message,
            f"`{f.advice}`" if f.advice and f.severity in ("warning", "error") else "",
        ]
        for f in sec.findings
    ]
    body = _table(["Check", "Severity", "Finding", "Advice"], rows)
    lines = ["### Security preflight", "", head, ""]
    if compact and not failing and not sec.warnings:
        return [*lines, "<details><summary>Findings</summary>", "", *body, "", "</details>", ""]
    return [*lines, *body, ""]


def _backup(b: Any) -> list[str]:
    title = {
        "before-deploy": "### Backup before the deploy",
        "before-rollback": "### Backup before the rollback",
    }.get(b.reason, "### Backup")
    rows: list[list[object]] = [
        ["File", f"`{b.path}`"],
        ["Size", f"{_fmt_bytes(b.size_bytes)} ({b.size_bytes:,} bytes)"],
        ["SHA-256", f"`{b.sha256}` (also in the `.sha256` file beside it)"],
        ["Revision", _rev(b.revision)],
        ["Database", f"`{b.database}`, PostgreSQL {b.server_version}"],
        ["Duration", f"{b.seconds:.2f} s"],
        ["Tool", f"{b.tool}, custom format (`pg_restore` reads it)"],
    ]
    return [title, "", *_table(["", ""], rows), ""]


def _restore(rs: Any, dry_run: bool) -> list[str]:
    lines = ["### Restore", ""]
    if dry_run:
        lines += [f"Dry run: `{rs.path}` verified, nothing restored.", ""]
    elif rs.restored_revision or rs.seconds:
        lines += [
            f"Restored `{rs.path}` in {rs.seconds:.2f} s: revision {_rev(rs.previous_revision)} "
            f"→ {_rev(rs.restored_revision)}.",
            "",
        ]
    rows: list[list[object]] = [
        ["File", f"`{rs.path}` ({_fmt_bytes(rs.size_bytes)})"],
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
        rows.append(
            [
                "Newer than the backup, left in place",
                ", ".join(f"`{n}`" for n in rs.left_in_place[:20])
                + (f" and {len(rs.left_in_place) - 20} more" if len(rs.left_in_place) > 20 else ""),
            ]
        )
    return [*lines, *_table(["", ""], rows), ""]


def _drift(d: Any) -> list[str]:
    where = f"at {', '.join(f'`{h}`' for h in d.revision) or '`base`'}"
    lines = ["### Drift", ""]
    if not d.count:
        lines += [
            f"✅ No drift: {d.objects} objects of the live database match the migrations "
            f"replayed {where} on {d.scratch}" + (" and the models." if d.models_checked else "."),
            "",
        ]
    else:
        lines += [
            f"❌ {d.count} difference(s) between the live database and the migrations replayed "
            f"{where} on {d.scratch}"
            + (f" (and {len(d.model_differences)} with the models)" if d.model_differences else "")
            + ".",
            "",
        ]
    if d.differences:
        rows: list[list[object]] = [
            [x.kind, f"`{x.name}`", x.change, *_pair(x.live, x.expected)]
            for x in d.differences[:MAX_ROWS]
        ]
        lines += _table(["Kind", "Object", "Difference", "Live", "Migrations"], rows)
        if len(d.differences) > MAX_ROWS:
            lines += ["", f"… and {len(d.differences) - MAX_ROWS} more (see the JSON report)."]
        lines += [""]
    if d.diff:
        text = d.diff if len(d.diff) <= MAX_DIFF else d.diff[:MAX_DIFF].rsplit("\n", 1)[0]
        lines += [
            "<details><summary>Catalog diff (migrations → live)</summary>",
            "",
            "```diff",
            text.replace("```", "'''"),
            "```",
            "",
            "</details>",
            "",
        ]
    if d.model_differences:
        lines += ["#### Models (`target_metadata`) against the live database", ""]
        lines += [f"- {_cell(x)}" for x in d.model_differences[:MAX_ROWS]] + [""]
    if d.models_note:
        lines += [_cell(d.models_note.rstrip(".")) + ".", ""]
    for note in d.notes:
        lines += [f"> {_cell(note)}", ""]
    return lines


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
    return _short(a, limit), _short(b, limit)


def _short(text: str, limit: int = 160) -> str:
    if not text:
        return "—"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rollback(r: RunResult) -> list[str]:
    m = r.migrate
    assert m is not None
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
            f"{', '.join(_rev(a.revision) for a in m.applied)}; the database went from "
            f"{_rev(','.join(m.previous))} to {_rev(','.join(m.current))}.",
            "",
        ]
    elif not m.error:
        lines += [f"Nothing to revert: the database is already at `{m.target}`.", ""]
    return lines


# --------------------------------------------------------------------------- terminal


def terminal(r: RunResult) -> list[str]:
    """Lines for the terminal report."""
    out: list[str] = []
    sec = r.security
    if sec is not None:
        out.append(
            f"security   {len(sec.findings)} checks, {sec.errors} error(s), "
            f"{sec.warnings} warning(s)"
        )
        for f in sec.findings:
            if r.command == "preflight" or f.severity in ("warning", "error"):
                out.append(f"  {SEVERITY_ICON.get(f.severity, '')} {f.check:<15} {f.message}")
    b = r.backup
    if b is not None:
        out.append(
            f"backup     {b.path} ({_fmt_bytes(b.size_bytes)}, {b.seconds:.2f}s, revision "
            f"{b.revision or 'base'})"
        )
        out.append(f"  sha256 {b.sha256}")
    rs = r.restore
    if rs is not None:
        if r.dry_run:
            out.append(f"restore    {rs.path} verified (dry run, nothing restored)")
        else:
            out.append(
                f"restore    {rs.path}: {rs.previous_revision or 'base'} → "
                f"{rs.restored_revision or 'base'} ({rs.seconds:.2f}s)"
            )
        for name in rs.left_in_place:
            out.append(f"  left in place (newer than the backup): {name}")
    d = r.drift
    if d is not None:
        out.append(
            f"drift      {d.count} difference(s) at {', '.join(d.revision) or 'base'} "
            f"(scratch: {d.scratch})"
        )
        for x in d.differences:
            out.append(f"  {x.change:<31} {x.kind} {x.name}")
            if x.change == "differs":
                out.append(f"      live:       {_short(x.live, 200)}")
                out.append(f"      migrations: {_short(x.expected, 200)}")
        out += [f"  models: {m}" for m in d.model_differences]
    return out
