"""The Slack message: one Block Kit message for every outcome, from the run's record."""

from __future__ import annotations

from typing import Any

from deployer.render.markdown import headline
from deployer.results import RunResult

MAX_TEXT = 2900  # Block Kit section text is limited to 3000 characters


def _strip_md(text: str) -> str:
    return text.replace("**", "*").replace("`", "")


def render(r: RunResult) -> dict[str, Any]:
    t = r.telemetry
    title = _strip_md(headline(r))
    fields = [
        f"*Status*\n{r.status}",
        f"*Environment*\n{t.environment or '—'}",
        f"*Revision*\n{r.previous_revision or 'base'} → {r.current_revision or 'base'}",
        f"*Applied*\n{len(r.applied)} revision(s)",
        f"*Duration*\n{r.duration:.1f}s",
        f"*Actor*\n{t.actor or '—'}",
    ]
    if r.smoke:
        fields.append(
            f"*Smoke*\n{len(r.smoke.tables)} tables, {len(r.smoke.failed_tables)} failed, "
            f"{r.smoke.total_rows:,} rows"
        )
    if r.seed:
        fields.append(
            "*Seed*\n"
            + (
                "failed"
                if r.seed.error
                else f"{r.seed.inserted} inserted, {r.seed.updated} updated"
            )
        )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields[:10]]},
    ]
    if r.error:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Error* ({r.failed_step}):\n```{r.error[:MAX_TEXT]}```",
                },
            }
        )
    if r.applied:
        listing = "\n".join(
            f"• `{a.revision}` {a.description} ({a.seconds:.2f}s)" for a in r.applied[:20]
        )
        if len(r.applied) > 20:
            listing += f"\n… and {len(r.applied) - 20} more"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": listing[:MAX_TEXT]}})
    if r.warnings:
        warn = "\n".join(f"⚠️ {w}" for w in r.warnings[:5])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": warn[:MAX_TEXT]}})
    context = [x for x in (t.repository, t.ref, t.sha[:12] if t.sha else "") if x]
    if t.run_url:
        context.append(f"<{t.run_url}|View run>")
    if context:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]}
        )
    return {"text": title, "blocks": blocks}
