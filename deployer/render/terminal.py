"""The terminal: live progress while running (`TerminalConsole`), and a readable report at the
end (`render`, one function per block of lines; the operations modes' blocks are in
deployer/render/operations.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from deployer.errors import EXIT_BAD_INPUT
from deployer.render import fleet, operations, risk
from deployer.render.tables import ICON, fmt_bytes, mark, row_count
from deployer.results import Failure, MigrateResult, RunResult, SeedResult, SmokeResult


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


RULE = "═" * 64


def render(r: RunResult) -> str:
    if (fleet_result := fleet.of(r)) is not None:
        return fleet.terminal(r, fleet_result)
    out = [RULE, headline(r), RULE]
    if r.error:
        out.append(f"error: {r.error}")
    out += failure(r)
    if r.preflight:
        p = r.preflight
        out.append(f"database   {p.target} (PostgreSQL {p.server_version}, user {p.user})")
    if r.migrate or r.status_check:
        out.append(revision(r))
    if r.risk is not None:
        out += risk.terminal(r.risk)
    if r.migrate:
        if r.migrate.dry_run:
            out += planned(r.migrate, verb="reverted" if r.command == "rollback" else "applied")
        else:
            out += applied(r.migrate, rollback=r.command == "rollback")
    elif r.status_check and r.status_check.pending:
        out += pending(r)
    if r.seed:
        out += seed(r.seed)
    if r.smoke:
        out += smoke(r.smoke)
    if r.security is not None:
        out += operations.security_lines(r.security, every=r.command == "preflight")
    if r.backup is not None:
        out += operations.backup_lines(r.backup)
    if r.restore is not None:
        out += operations.restore_lines(r.restore, dry_run=r.dry_run)
    if r.drift is not None:
        out += operations.drift_lines(r.drift)
    out += [f"warning: {w}" for w in r.warnings]
    out.append(
        f"duration   {r.duration:.2f}s" + (f"   report {r.report_path}" if r.report_path else "")
    )
    out.append(RULE)
    return "\n".join(out)


def headline(r: RunResult) -> str:
    """What happened in a few words: a refusal (exit 2, nothing changed) is not a failure of
    the deploy; `status` says whether anything is pending."""
    if r.status == "failed" and r.exit_code == EXIT_BAD_INPUT:
        return f"⛔ db-deploy {r.command}: refused" + (
            f" ({r.failed_step}): nothing was changed" if r.failed_step else ""
        )
    if r.status in ("failed", "cancelled"):
        return f"{ICON[r.status]} db-deploy {r.command}: {r.status}" + (
            f" (failed at {r.failed_step})" if r.failed_step else ""
        )
    if r.command == "status" and r.status_check is not None:
        n = len(r.status_check.pending)
        if not r.status_check.script_heads and not r.status_check.database_heads:
            return "⚠️ db-deploy status: no revisions found"
        return "✅ db-deploy status: up to date" if not n else f"⏳ db-deploy status: {n} pending"
    if r.command == "rollback" and r.migrate is not None and not r.migrate.dry_run:
        return f"↩ db-deploy rollback: {len(r.migrate.applied)} revision(s) reverted"
    return f"{ICON[r.status]} db-deploy {r.command}: {r.status}"


def revision(r: RunResult) -> str:
    return (
        f"revision   {r.previous_revision or 'base'} → {r.current_revision or 'base'}"
        if r.migrate
        else f"revision   {r.current_revision or 'base'}"
    ) + (f"   head {r.head_revision}" if r.head_revision else "")


def pending(r: RunResult) -> list[str]:
    st = r.status_check
    assert st is not None
    out = [f"pending    {len(st.pending)} revision(s)"]
    return out + [f"  · {p.revision:<28} {p.description}" for p in st.pending]


def planned(m: MigrateResult, *, verb: str = "applied") -> list[str]:
    out = [f"pending    {len(m.pending)} revision(s) (dry run, nothing {verb})"]
    out += [f"  · {p.revision:<28} {p.description}" for p in m.pending]
    for name, sql in m.sql.items():
        out += [f"  -- {name}", *("     " + line for line in sql.splitlines())]
    return out


def applied(m: MigrateResult, *, rollback: bool = False) -> list[str]:
    verb, sign = ("reverted", "↩") if rollback else ("applied", "✓")
    out = [f"{verb:<10} {len(m.applied)} revision(s)"]
    out += [f"  {sign} {a.revision:<28} {a.seconds:>8.3f}s  {a.description}" for a in m.applied]
    if m.failed_revision:
        out.append(f"  ✗ {m.failed_revision:<28} failed: {m.error}")
    if m.rolled_back:
        out.append(
            f"  ↩ rolled back with it: {', '.join(m.rolled_back)} "
            "(one transaction for the whole upgrade)"
        )
    return out + lock_attempts(m)


def lock_attempts(m: MigrateResult) -> list[str]:
    """The lock ladder's attempts, when one hit lock_timeout: one line each."""
    if not any(a.timed_out for a in m.lock_attempts):
        return []
    out = [f"locks      {len(m.lock_attempts)} attempt(s)"]
    for a in m.lock_attempts:
        who = ""
        if a.blocker_pid:
            age = f", {a.blocker_query_age:.1f}s" if a.blocker_query_age is not None else ""
            who = f"  blocked by pid {a.blocker_pid} ({a.blocker_application or '?'}{age})"
        result = "lock_timeout" if a.timed_out else "locks taken"
        wait = f"  then {a.wait:.2f}s" if a.wait else ""
        dropped = f"  dropped invalid index {a.dropped_index}" if a.dropped_index else ""
        out.append(
            f"  {a.attempt:>3}. {a.lock_timeout * 1000:>6g}ms {result:<12} "
            f"{a.where or a.scope}{who}{wait}{dropped}"
        )
    return out


def failure(r: RunResult) -> list[str]:
    """Where the run failed: the class, the file and line, the statement with a caret under
    the server's position, the server's words, the failing object."""
    out = [f"class      {r.error_class}"] if r.error_class else []
    f = r.failure
    if f is None:
        return out
    if f.file:
        line = f":{f.line}" if f.line else ""
        out.append(
            f"at         {f.file}{line}" + (f" (revision {f.revision})" if f.revision else "")
        )
    if f.exception:
        out.append(f"exception  {f.exception}")
    if f.statement:
        out += statement(f)
    if f.message or f.sqlstate:
        out.append(f"server     {f.message}" + (f" (SQLSTATE {f.sqlstate})" if f.sqlstate else ""))
    for label, value in (("detail", f.detail), ("hint", f.hint), ("context", f.context)):
        if value:
            lines = value.splitlines()
            out += [f"{label:<10} {lines[0]}", *(f"{'':<10} {x}" for x in lines[1:])]
    if f.object:
        out.append(f"object     {f.object}")
    return out


def statement(f: Failure) -> list[str]:
    out = []
    for i, text in enumerate(f.statement.splitlines(), 1):
        out.append(f"{'statement' if i == 1 else '':<10} │ {text}")
        if i == f.statement_line and f.statement_column:
            out.append(f"{'':<10} │ {' ' * (f.statement_column - 1)}^ position {f.position}")
    return out


def seed(s: SeedResult) -> list[str]:
    if s.error:
        return [f"seed       failed, {s.outcome}: {s.error}"]
    return [
        f"seed       {s.inserted} inserted, {s.updated} updated, {s.deleted} deleted ({s.path})",
        *(f"  {t.table:<40} +{t.inserted} ~{t.updated} -{t.deleted}" for t in s.tables),
    ]


def smoke(sm: SmokeResult) -> list[str]:
    out = [
        f"smoke      {len(sm.tables)} tables, {len(sm.failed_tables)} failed, "
        f"{sm.total_rows:,} rows ({sm.seconds:.2f}s)"
    ]
    for t in sm.tables:
        out.append(
            f"  {mark(t.ok)} {t.qualified:<44} {row_count(t):>12}"
            + (f"  {t.error}" if t.error else "")
        )
    for x in sm.expectations:
        got = x.counted if x.counted is not None else x.error
        if x.deferred:
            out.append(f"  ⏳ expect {x.table} >= {x.minimum}: {got} now, checked after the deploy")
        else:
            out.append(f"  {mark(x.ok)} expect {x.table} >= {x.minimum}: {got}")
    for e in sm.extensions:
        want = f" >= {e.required}" if e.required else ""
        have = e.installed or "not installed"
        if e.deferred:
            out.append(f"  ⏳ extension {e.name}{want}: {have} now, checked after the deploy")
        else:
            out.append(f"  {mark(e.ok)} extension {e.name}{want}: {have}")
    for v in sm.vector_indexes:
        out.append(
            f"  ◆ {v.method} {v.name} on {v.table}: {fmt_bytes(v.size_bytes)}"
            + (f", lists={v.lists}" if v.lists is not None else "")
        )
    return out
