"""Medians, ranges and pair-by-pair ratios."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summary(values: Sequence[float]) -> dict[str, Any]:
    """median, min, max and n of `values` (None when empty)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def ratios(rounds: Sequence[dict[str, Any]], num: str, den: str) -> dict[str, Any]:
    """The ratio num/den taken within each round (same conditions), then summarised."""
    vals = [
        r[num] / r[den] for r in rounds if r.get(num) is not None and r.get(den) not in (None, 0)
    ]
    return summary(vals)


def fmt_s(s: dict[str, Any] | None, digits: int = 2) -> str:
    """`median (min–max)` in seconds."""
    if not s or s.get("median") is None:
        return "–"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def fmt_x(s: dict[str, Any] | None) -> str:
    """`1.07× (1.02–1.11)`."""
    if not s or s.get("median") is None:
        return "–"
    if s["n"] == 1:
        return f"{s['median']:.2f}×"
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"


def rotate(items: Sequence[str], k: int) -> list[str]:
    """`items` rotated by k: each tool goes first in turn across rounds."""
    k %= len(items)
    return list(items[k:]) + list(items[:k])
