"""The terminal: live progress while running, and a readable report at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from deployer.render import operations
from deployer.render.markdown import fmt_bytes, row_count
from deployer.results import RunResult


class TerminalConsole:
    """Progress lines on stderr, so that stdout carries only the report."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self._say(f"▶ {name}")
        try:
            yield
        finally:
            self._say(f"  {name} done in {time.perf_counter() - started:.2f}s")

    def info(self, message: str) -> None:
        self._say(f"  {message}")

    def warning(self, message: str) -> None:
        self._say(f"  warning: {message}")

    def error(self, message: str) -> None:
        self._say(f"error: {message}")


def render(r: RunResult) -> str:
    rule = "═" * 64
    icon = {"success": "✅", "noop": "✅", "failed": "❌"}[r.status]
    out = [
        rule,
        f"{icon} db-deploy {r.command}: {r.status}"
        + (f" (failed at {r.failed_step})" if r.failed_step else ""),
        rule,
    ]
    if r.error:
        out.append(f"error: {r.error}")
    if r.preflight:
        p = r.preflight
        out.append(f"database   {p.target} (PostgreSQL {p.server_version}, user {p.user})")
    if r.migrate or r.status_check:
        out.append(
            (
                f"revision   {r.previous_revision or 'base'} → {r.current_revision or 'base'}"
                if r.migrate
                else f"revision   {r.current_revision or 'base'}"
            )
            + (f"   head {r.head_revision}" if r.head_revision else "")
        )
    m = r.migrate
    if m:
        if m.dry_run:
            out.append(f"pending    {len(m.pending)} revision(s) (dry run, nothing applied)")
            for rev_ in m.pending:
                out.append(f"  · {rev_.revision:<28} {rev_.description}")
            for rev, sql in m.sql.items():
                out += [f"  -- {rev}", *("     " + line for line in sql.splitlines())]
        else:
            out.append(f"applied    {len(m.applied)} revision(s)")
            for a in m.applied:
                out.append(f"  ✓ {a.revision:<28} {a.seconds:>8.3f}s  {a.description}")
            if m.failed_revision:
                out.append(f"  ✗ {m.failed_revision:<28} failed: {m.error}")
    if r.seed:
        s = r.seed
        if s.error:
            out.append(f"seed       failed, rolled back: {s.error}")
        else:
            out.append(
                f"seed       {s.inserted} inserted, {s.updated} updated, {s.deleted} deleted"
                f" ({s.path})"
            )
            for t in s.tables:
                out.append(f"  {t.table:<40} +{t.inserted} ~{t.updated} -{t.deleted}")
    if r.smoke:
        sm = r.smoke
        out.append(
            f"smoke      {len(sm.tables)} tables, {len(sm.failed_tables)} failed, "
            f"{sm.total_rows:,} rows ({sm.seconds:.2f}s)"
        )
        for tc in sm.tables:
            rows = row_count(tc)
            mark = "✅" if tc.ok else "❌"
            out.append(
                f"  {mark} {tc.qualified:<44} {rows:>12}" + (f"  {tc.error}" if tc.error else "")
            )
        for x in sm.expectations:
            got = x.counted if x.counted is not None else x.error
            out.append(f"  {'✅' if x.ok else '❌'} expect {x.table} >= {x.minimum}: {got}")
        for e in sm.extensions:
            want = f" >= {e.required}" if e.required else ""
            out.append(
                f"  {'✅' if e.ok else '❌'} extension {e.name}{want}: "
                f"{e.installed or 'not installed'}"
            )
        for v in sm.vector_indexes:
            out.append(
                f"  ◆ {v.method} {v.name} on {v.table}: {fmt_bytes(v.size_bytes)}"
                + (f", lists={v.lists}" if v.lists is not None else "")
            )
    out += operations.terminal(r)
    for w in r.warnings:
        out.append(f"warning: {w}")
    out.append(
        f"duration   {r.duration:.2f}s" + (f"   report {r.report_path}" if r.report_path else "")
    )
    out.append(rule)
    return "\n".join(out)
