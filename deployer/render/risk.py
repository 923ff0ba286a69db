"""The risk review's record for people: the summary section (a risk table per revision, the
safe ways, the rehearsed statements folded), the terminal lines, the annotations (highest level
first, at most ten of each kind, the rest in one line) and the two outputs. Pure functions of
the record."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deployer.render.tables import cell, details, fmt_bytes, short, table

if TYPE_CHECKING:
    from deployer.results import RiskFinding, RiskResult, RiskRevision

LEVEL_ICON = {"none": "✅", "low": "🟢", "medium": "🟠", "high": "🔴"}
ANNOTATION_LIMIT = 10  # the runner shows the first ten annotations of each kind per step


@dataclass(frozen=True)
class Annotation:
    """One `::warning file=…,line=…::` (or `::notice`): kind, message, where."""

    kind: str  # warning | notice
    message: str
    title: str
    file: str = ""
    line: int = 0


def where(f: RiskFinding, workspace: str = "") -> str:
    """The revision file, relative to the workspace when inside it (annotations need the
    repository's relative path)."""
    if not f.path:
        return ""
    if workspace:
        try:
            rel = os.path.relpath(f.path, workspace)
        except ValueError:
            return f.path
        if not rel.startswith(".."):
            return rel
    return f.path


def section(r: RiskResult) -> list[str]:
    """`### Risk review`: the level, how it was reviewed, a table per revision."""
    icon = LEVEL_ICON.get(r.level, "")
    how = f"rehearsed on {r.scratch}" if r.rehearsed and r.scratch else "rehearsed"
    if not r.rehearsed:
        how = "not rehearsed"
    lines = [f"### Risk review: {icon} {r.level}", "", f"_{how}; {r.seconds:.1f} s_", ""]
    if r.note:
        lines += [f"> {cell(r.note)}", ""]
    if not r.revisions:
        return [*lines, "Nothing pending.", ""]
    for rev in r.revisions:
        lines += _revision(rev)
    return lines + _live_state(r)


def _revision(rev: RiskRevision) -> list[str]:
    """One pending revision: its level, its findings (a table, then why and the safe way
    folded) and the statements its rehearsal sent."""
    head = f"**`{rev.revision}`** {cell(rev.description)} — {LEVEL_ICON.get(rev.level, '')}"
    lines = [f"{head} {rev.level}", ""]
    if rev.error:
        lines += [f"❌ the rehearsal failed here: {cell(short(rev.error, 300))}", ""]
    if rev.findings:
        lines += _findings(rev.findings)
    elif not rev.error:
        lines += ["No finding.", ""]
    if rev.statements:
        lines += _statements(rev)
    return lines


def _findings(findings: list[RiskFinding]) -> list[str]:
    rows = [
        (
            f"{LEVEL_ICON.get(f.level, '')} {f.level}" + (" (accepted)" if f.accepted else ""),
            f"`{f.rule}`",
            f.table or "—",
            f.lock or "—",
            short(f.outage, 200),
            f"line {f.line}" if f.line else "",
        )
        for f in findings
    ]
    lines = table(["level", "rule", "table", "lock", "estimated outage", "where"], rows)
    lines.append("")
    body: list[str] = []
    for f in findings:
        body += [f"- **`{f.rule}`** {cell(f.message)}"]
        if f.statement:
            body += [f"  - statement: `{cell(short(f.statement, 300))}`"]
        if f.measured:
            body += [f"  - {cell(f.measured)}"]
        body += [f"  - safe way: {cell(f.safe)}"]
        if f.accepted:
            body += [f"  - accepted: {cell(f.accepted)}"]
    return lines + details("why, and the safe way", body)


def _statements(rev: RiskRevision) -> list[str]:
    traced = [
        (
            s.index,
            f"`{short(s.sql, 200)}`",
            ", ".join(f"{lk.relation} {lk.mode}" for lk in s.locks) or "—",
            ", ".join(
                [
                    *(f"rewrote {t}" for t in s.rewritten),
                    *(f"scanned {t}" for t in s.scanned),
                ]
            )
            or "—",
            f"{s.seconds * 1000:.0f} ms",
        )
        for s in rev.statements[:200]
    ]
    return details(
        f"{len(rev.statements)} statement(s) as sent",
        table(["#", "SQL", "locks taken", "rewrite / scan", "time"], traced, "rllll"),
    )


def _live_state(r: RiskResult) -> list[str]:
    """The live database: the tables touched, the long transactions."""
    lines: list[str] = []
    if r.tables:
        live = [
            (
                t.table,
                f"~{t.rows:,}" if t.rows >= 0 else "never analysed",
                fmt_bytes(t.bytes),
                len(t.sessions),
                t.autovacuum or "—",
            )
            for t in r.tables
        ]
        lines += table(
            ["live table", "rows", "size", "sessions with locks", "vacuum"], live, "lrrrl"
        )
        lines.append("")
    if r.long_transactions:
        oldest = r.long_transactions[0]
        lines += [
            f"{len(r.long_transactions)} long transaction(s) on the database; the oldest: pid "
            f"{oldest.pid} ({cell(oldest.application_name) or '?'}), open "
            f"{oldest.transaction_seconds:.0f} s.",
            "",
        ]
    return lines


def terminal(r: RiskResult) -> list[str]:
    """The review in a few plain lines."""
    lines = [f"risk: {r.level}" + ("" if r.rehearsed else " (not rehearsed)")]
    for f in r.ranked():
        accepted = " (accepted)" if f.accepted else ""
        table_ = f" {f.table}" if f.table else ""
        lines.append(f"  {f.level:<6} {f.rule}{table_} [{f.revision}]{accepted}: {f.outage}")
    if r.note:
        lines.append(f"  note: {r.note}")
    return lines


def annotate(r: RiskResult, workspace: str = "") -> list[Annotation]:
    """Highest level first, at most ten; the rest in one notice. Accepted findings are not
    annotated."""
    ranked = [f for f in r.ranked() if not f.accepted]
    out = [
        Annotation(
            kind="warning",
            message=f"{f.message} Estimated outage: {f.outage}. Safe way: {f.safe}",
            title=f"db-deploy risk {f.level}: {f.rule}" + (f" on {f.table}" if f.table else ""),
            file=where(f, workspace),
            line=f.line,
        )
        for f in ranked[:ANNOTATION_LIMIT]
    ]
    rest = ranked[ANNOTATION_LIMIT:]
    if rest:
        counts: dict[str, int] = {}
        for f in rest:
            counts[f.level] = counts.get(f.level, 0) + 1
        said = ", ".join(f"{n} {level}" for level, n in counts.items())
        out.append(
            Annotation(
                kind="notice",
                message=f"{len(rest)} more risk finding(s) ({said}): see the job summary",
                title="db-deploy risk",
            )
        )
    return out


def outputs(r: RiskResult | None) -> dict[str, str]:
    """`risk-level` and `risk-findings` (empty list when not reviewed)."""
    if r is None:
        return {"risk-level": "", "risk-findings": "[]"}
    return {"risk-level": r.level, "risk-findings": json.dumps(r.outputs())}
