"""The Slack message: one Block Kit message for every outcome, from the run's record."""

from __future__ import annotations

from typing import Any

from deployer.render import fleet
from deployer.render.markdown import headline
from deployer.results import AppliedRevision, RunResult, Telemetry

MAX_TEXT = 2900  # Block Kit section text is limited to 3000 characters
MAX_LISTED = 20  # applied revisions listed
MAX_WARNINGS = 5

Block = dict[str, Any]  # one Block Kit block, as JSON


def render(r: RunResult) -> dict[str, Any]:
    if (fleet_result := fleet.of(r)) is not None:
        return fleet.slack(r, fleet_result)
    title = _strip_md(headline(r))
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields(r)[:10]]},
    ]
    if r.error:
        blocks.append(_section(f"*Error* ({r.failed_step}):\n```{r.error[:MAX_TEXT]}```"))
    if r.applied:
        blocks.append(_section(applied(r.applied)[:MAX_TEXT]))
    if r.warnings:
        warn = "\n".join(f"⚠️ {w}" for w in r.warnings[:MAX_WARNINGS])
        blocks.append(_section(warn[:MAX_TEXT]))
    where = context(r.telemetry)
    if where:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": where}]})
    return {"text": title, "blocks": blocks}


def fields(r: RunResult) -> list[str]:
    """The facts beside each other: status, where, revisions, counts, who."""
    out = [
        f"*Status*\n{r.status}",
        f"*Environment*\n{r.telemetry.environment or '—'}",
        f"*Revision*\n{r.previous_revision or 'base'} → {r.current_revision or 'base'}",
        f"*Applied*\n{len(r.applied)} revision(s)",
        f"*Duration*\n{r.duration:.1f}s",
        f"*Actor*\n{r.telemetry.actor or '—'}",
    ]
    if r.smoke:
        sm = r.smoke
        out.append(
            f"*Smoke*\n{len(sm.tables)} tables, {len(sm.failed_tables)} failed, "
            f"{sm.total_rows:,} rows"
        )
    if r.seed:
        sd = r.seed
        out.append(
            "*Seed*\n" + ("failed" if sd.error else f"{sd.inserted} inserted, {sd.updated} updated")
        )
    return out


def applied(revisions: list[AppliedRevision]) -> str:
    listing = "\n".join(
        f"• `{a.revision}` {a.description} ({a.seconds:.2f}s)" for a in revisions[:MAX_LISTED]
    )
    if len(revisions) > MAX_LISTED:
        listing += f"\n… and {len(revisions) - MAX_LISTED} more"
    return listing


def context(t: Telemetry) -> str:
    """Repository, ref, commit and a link to the run, as far as known."""
    parts = [x for x in (t.repository, t.ref, t.sha[:12] if t.sha else "") if x]
    if t.run_url:
        parts.append(f"<{t.run_url}|View run>")
    return " · ".join(parts)


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _strip_md(text: str) -> str:
    return text.replace("**", "*").replace("`", "")
