"""Masking: what redacting the output costs when env.py writes it in small pieces.

Issue 15 (point 9): masking is linear in what is written, whatever the pieces. env.py (or a
revision, or a library it calls) writes N chunks of 100 characters with no newline through the
redacting stream the CLI puts on sys.stdout (`deployer.redact.RedactingStream`, with the
`Redactor` of a run: a database URL with a password, a Slack webhook and a `PGPASSWORD`, each in
every form `secret_forms` derives); the same N×100 characters are then written in one call. The
goal: the N writes cost at most 3× the one write. Both go to a sink that only counts, in the
bench process, timed with `time.perf_counter` around the writes and the final flush; rounds
alternate which goes first. A correctness pass first checks that both give the same text, with
every secret planted across chunk boundaries masked.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from bench.stats import fmt_s, fmt_x, ratios, summary

SIZE = 100
URL = "postgresql://deployer:s3cr%C3%A9t-P%40ss-w0rd@db.internal.example:5432/app"
WEBHOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXwebhookSecretToken42"
PGPASSWORD = "pg-env-password-0123456789"


class _Sink(io.TextIOBase):
    """Counts what it is given, keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)

    def writable(self) -> bool:
        return True


class _Keep(_Sink):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return super().write(s)


def _redactor() -> Any:
    from deployer.redact import Redactor, url_secrets

    return Redactor([*url_secrets(URL), *url_secrets(WEBHOOK), PGPASSWORD])


def _piece() -> str:
    """100 characters of what env.py's logging looks like, without a newline."""
    text = (
        "INFO  [alembic.runtime.migration] Running upgrade 0041_orders -> 0042_items, add items; "
    )
    return (text * 2)[:SIZE]


def check(chunks: int = 20_000) -> None:
    """Chunked and whole writes give the same text; secrets split across chunks are masked."""
    from deployer.redact import RedactingStream

    redactor = _redactor()
    planted = ("x" * 37 + PGPASSWORD + "y" * 61 + "s3cr\u00e9t-P@ss-w0rd") * (chunks // 10)
    text = _piece() * chunks + planted
    a, b = _Keep(), _Keep()
    s = RedactingStream(a, redactor)  # type: ignore[arg-type]
    for i in range(0, len(text), SIZE):
        s.write(text[i : i + SIZE])
    s.flush()
    t = RedactingStream(b, redactor)  # type: ignore[arg-type]
    t.write(text)
    t.flush()
    out_a, out_b = "".join(a.parts), "".join(b.parts)
    if out_a != out_b or PGPASSWORD in out_a or "s3cr\u00e9t-P@ss-w0rd" in out_a:
        raise SystemExit(
            "masking check failed: chunked and whole writes differ, or a secret leaked"
        )


def _time(write: Callable[[Any], None]) -> float:
    from deployer.redact import RedactingStream

    stream = RedactingStream(_Sink(), _redactor())  # type: ignore[arg-type]
    started = time.perf_counter()
    write(stream)
    stream.flush()
    return time.perf_counter() - started


def run_suite(chunks: int, repeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    check()
    piece = _piece()
    whole = piece * chunks

    def chunked(stream: Any) -> None:
        w = stream.write
        for _ in range(chunks):
            w(piece)

    def single(stream: Any) -> None:
        stream.write(whole)

    rounds = []
    for i in range(repeat):
        order = [("chunked", chunked), ("single", single)]
        if i % 2:
            order.reverse()
        r: dict[str, float] = {}
        for name, fn in order:
            r[name] = _time(fn)
        rounds.append(r)
        say(f"  masking round {i + 1}: {r['chunked']:.2f} s chunked, {r['single']:.2f} s whole")
    return {
        "chunks": chunks,
        "chunk_chars": SIZE,
        "seconds": {k: summary([r[k] for r in rounds]) for k in ("chunked", "single")},
        "ratio": ratios(rounds, "chunked", "single"),
    }


def table(results: dict[str, Any]) -> list[str]:
    m = results.get("masking")
    if not m:
        return []
    mb = m["chunks"] * m["chunk_chars"] / 1e6
    return [
        "",
        f"**Masking** ({m['chunks']:,} writes of {m['chunk_chars']} characters, {mb:.0f} MB, "
        "no newline; seconds)",
        "",
        "| chunked | one write | chunked / one write |",
        "| ---: | ---: | ---: |",
        f"| {fmt_s(m['seconds']['chunked'])} | {fmt_s(m['seconds']['single'])} "
        f"| {fmt_x(m['ratio'])} |",
    ]


def goals(results: dict[str, Any]) -> list[str]:
    m = results.get("masking")
    if not m:
        return []
    x = m["ratio"]
    verdict = "met" if x.get("max") is not None and x["max"] <= 3 else "NOT met"
    return [f"masking {m['chunks']:,} writes ≤ 3× one write: {fmt_x(x)} → {verdict}"]
