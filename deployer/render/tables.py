"""Formatting shared by the renderers: markdown tables and cells, sizes, row counts, revisions,
icons. Pure functions of their arguments."""

from __future__ import annotations

from collections.abc import Sequence

from deployer.results import TableCheck

ICON = {"success": "✅", "noop": "✅", "failed": "❌", "cancelled": "🛑"}  # a run's status
SEVERITY_ICON = {"ok": "✅", "info": "ℹ️", "warning": "⚠️", "error": "❌"}  # a finding's


def cell(value: object) -> str:
    """`value` as one markdown table cell: pipes escaped, line breaks flattened."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def table(headers: list[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table; `align` has one letter per column, `r` for right-aligned."""
    aligns = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in aligns]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def details(summary: str, body: list[str]) -> list[str]:
    """A folded block: `<details>` with `summary`, `body`, and the blank lines around."""
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>", ""]


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def row_count(t: TableCheck) -> str:
    """`12`, `~25,000` (a catalog estimate) or `≥10,001` (large and never analysed)."""
    if t.rows is None:
        return ""
    if t.lower_bound:
        return f"≥{t.rows:,}"
    return f"~{t.rows:,}" if t.estimated else f"{t.rows:,}"


def rev(text: str) -> str:
    """A revision in code quotes; an empty one is `base`."""
    return f"`{text}`" if text else "`base`"


def short(text: str, limit: int = 160) -> str:
    """`text` on one line, cut to `limit` characters; `—` when empty."""
    if not text:
        return "—"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mark(ok: bool) -> str:
    return "✅" if ok else "❌"
