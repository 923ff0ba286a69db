"""A fleet's summary, terminal report, outputs and Slack message: one each for the whole fleet,
failures first. The markdown is cut cleanly (whole rows, a closing line saying how many are
left out) under GitHub's 1 MiB step-summary limit, however many targets; the JSON report keeps
every target."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from deployer.render.tables import cell

if TYPE_CHECKING:
    from deployer.results import FleetResult, RunResult, TargetResult

ICON = {
    "success": "✅",
    "noop": "➖",
    "failed": "❌",
    "cancelled": "🛑",
    "not-reached": "⏸️",
    "partial": "⚠️",
}
SUMMARY_BUDGET = 900 * 1024  # bytes: under SUMMARY_LIMIT with room for the job's other steps
SLOWEST = 10
SLACK_FAILED = 15  # failed targets named in the Slack message
MAX_TEXT = 2900


def of(r: RunResult) -> FleetResult | None:
    fleet = r.extra.get("fleet")
    if fleet is None:
        return None
    from deployer.results import FleetResult

    return fleet if isinstance(fleet, FleetResult) else None


def headline(r: RunResult, f: FleetResult) -> str:
    icon = ICON.get(r.status, "❔")
    ok = f.succeeded + f.noop
    return f"{icon} Fleet {r.command}: {r.status} — {ok}/{f.total} targets ok, {f.failed} failed"


def totals(f: FleetResult) -> list[str]:
    return [
        "| Targets | Deployed | No-op | Failed | Not reached | Parallel | Waves |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {f.total} | {f.succeeded} | {f.noop} | {f.failed} | {f.not_reached} | "
        f"{f.max_parallel} | {', '.join(map(str, f.waves)) or '—'} |",
        "",
    ]


def row(t: TargetResult) -> str:
    revision = f"{t.previous_revision or 'base'} → {t.current_revision or 'base'}"
    if t.status == "not-reached":
        revision = "—"
    error = f"{t.failed_step}: {t.error}" if t.error else ""
    cells = [
        f"{ICON.get(t.status, '')} {t.status}",
        f"`{t.name}`",
        str(t.wave),
        revision,
        str(t.applied_count),
        f"{t.seconds:.1f}",
        error[:300],
    ]
    return "| " + " | ".join(cell(c) for c in cells) + " |"


TARGET_HEADER = [
    "| Status | Target | Wave | Revision | Applied | Seconds | Error |",
    "| --- | --- | ---: | --- | ---: | ---: | --- |",
]


def markdown(r: RunResult, f: FleetResult, budget: int = SUMMARY_BUDGET) -> str:
    lines = [f"## {headline(r, f)}", ""]
    if r.error:
        lines += [f"> {cell(r.error)[:1000]}", ""]
    lines += totals(f)
    slow = f.slowest(SLOWEST)
    if slow:
        lines += ["### Slowest targets", "", "| Target | Seconds | Status |"]
        lines += ["| --- | ---: | --- |"]
        lines += [f"| `{t.name}` | {t.seconds:.1f} | {t.status} |" for t in slow] + [""]
    if r.warnings:
        lines += [f"> ⚠️ {cell(w)}" for w in r.warnings[:20]] + [""]
    tail = []
    if r.report_path:
        tail = ["", f"<sub>JSON report: `{r.report_path}` (every target)</sub>", ""]
    head = "\n".join(lines) + "\n### Targets\n\n" + "\n".join(TARGET_HEADER) + "\n"
    used = len(head.encode()) + len("\n".join(tail).encode()) + 200
    rows: list[str] = []
    ordered = f.sorted()
    for i, t in enumerate(ordered):
        text = row(t)
        size = len(text.encode()) + 1
        if used + size > budget:
            left = len(ordered) - i
            rows.append(
                f"\n_… {left} more target(s) not shown (the summary stays under GitHub's 1 MiB "
                "limit); the JSON report lists every target._"
            )
            break
        rows.append(text)
        used += size
    return head + "\n".join(rows) + "\n" + "\n".join(tail)


def terminal(r: RunResult, f: FleetResult, limit: int = 200) -> str:
    out = [headline(r, f)]
    if r.error:
        out.append(f"  {r.error}")
    width = max((len(t.name) for t in f.targets), default=4)
    ordered = f.sorted()
    for t in ordered[:limit]:
        detail = (
            f"{t.failed_step}: {t.error}"
            if t.error
            else (
                f"{t.previous_revision or 'base'} → {t.current_revision or 'base'}, "
                f"{t.applied_count} applied"
                if t.status in ("success", "noop")
                else ""
            )
        )
        out.append(f"  {t.status:<11} {t.name:<{width}} {t.seconds:6.1f}s  {detail}".rstrip())
    if len(ordered) > limit:
        out.append(f"  … {len(ordered) - limit} more in the JSON report")
    if r.report_path:
        out.append(f"report: {r.report_path}")
    return "\n".join(out)


def outputs(r: RunResult) -> dict[str, str]:
    """The fleet's outputs (empty for every other command)."""
    f = of(r)
    if f is None:
        return dict.fromkeys(
            (
                "targets-total",
                "targets-succeeded",
                "targets-failed",
                "targets-noop",
                "failed-targets",
            ),
            "",
        )
    return {
        "targets-total": str(f.total),
        "targets-succeeded": str(f.succeeded),
        "targets-failed": str(f.failed),
        "targets-noop": str(f.noop),
        "failed-targets": json.dumps(f.failed_names),
    }


def slack(r: RunResult, f: FleetResult) -> dict[str, Any]:
    """One Block Kit message for the whole fleet."""
    title = headline(r, f).replace("*", "")
    facts = [
        f"*Status*\n{r.status}",
        f"*Targets*\n{f.total}",
        f"*Deployed / no-op*\n{f.succeeded} / {f.noop}",
        f"*Failed / not reached*\n{f.failed} / {f.not_reached}",
        f"*Duration*\n{r.duration:.1f}s",
        f"*Actor*\n{r.telemetry.actor or '—'}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": t} for t in facts]},
    ]
    failed = [t for t in f.sorted() if t.failed]
    if failed:
        listed = "\n".join(
            f"• `{t.name}` ({t.failed_step or t.status}): {t.error[:150]}"
            for t in failed[:SLACK_FAILED]
        )
        if len(failed) > SLACK_FAILED:
            listed += f"\n… and {len(failed) - SLACK_FAILED} more"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": listed[:MAX_TEXT]}})
    if f.not_reached:
        text = f"⏸️ {f.not_reached} target(s) not reached ({f.stopped_by or 'not run'})"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_TEXT]}})
    if r.telemetry.run_url:
        link = f"<{r.telemetry.run_url}|workflow run> · {r.telemetry.repository}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]})
    return {"text": title, "blocks": blocks}
