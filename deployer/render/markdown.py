"""The job summary: GitHub-flavoured markdown from the run's record, one function per section.

`render` places the sections in order; each section function takes the record it shows and
returns its lines (a blank line after each block). The operations modes' sections are in
deployer/render/operations.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.errors import EXIT_BAD_INPUT
from deployer.render import fleet, operations, risk
from deployer.render.tables import ICON, cell, details, fmt_bytes, mark, row_count, table
from deployer.results import (
    Failure,
    HistoryEntry,
    IntegrityReport,
    MigrateResult,
    PreflightResult,
    RunResult,
    SeedResult,
    SmokeResult,
    StatusResult,
    VectorIndex,
)

if TYPE_CHECKING:
    from deployer.results import InstallResult


def render(r: RunResult) -> str:
    if (fleet_result := fleet.of(r)) is not None:
        return fleet.markdown(r, fleet_result)
    lines = header(r) + failure(r) + run(r)
    if r.install is not None:
        lines += dependencies(r.install)
    if r.risk is not None:
        lines += risk.section(r.risk)
    if r.migrate is not None:
        lines += migrations(r.migrate, rollback=r.command == "rollback")
    if r.status_check is not None:
        lines += status(r.status_check)
    if r.integrity is not None:
        lines += integrity(r.integrity)
    if r.history:
        lines += history(r.history)
    if r.seed is not None:
        lines += seed(r.seed)
    elif r.seed_requested and r.status != "failed" and not r.dry_run:
        lines += ["### Seed", "", "Not run.", ""]
    if r.smoke is not None:
        lines += smoke(r.smoke)
    if r.security is not None:
        lines += operations.security(r.security, compact=r.command != "preflight")
    if r.backup is not None:
        lines += operations.backup(r.backup)
    if r.restore is not None:
        lines += operations.restore(r.restore, dry_run=r.dry_run)
    if r.drift is not None:
        lines += operations.drift(r.drift)
    if r.command == "rollback" and r.migrate is not None:
        lines += operations.rollback(r.migrate)
    lines += warnings(r.warnings) + notes(r.notices)
    if r.report_path:
        lines += [f"<sub>JSON report: `{r.report_path}`</sub>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def headline(r: RunResult) -> str:
    """One line saying what happened, and where (the Slack message's title too)."""
    where = ""
    if r.preflight:
        where = f" on `{r.preflight.database}` ({r.preflight.target})"
    if r.status == "failed" and r.exit_code == EXIT_BAD_INPUT:
        step = f" at **{r.failed_step}**" if r.failed_step else ""
        return f"⛔ db-deploy {r.command} **refused**{step}{where}: nothing was changed"
    if r.status in ("failed", "cancelled"):
        step = f" at **{r.failed_step}**" if r.failed_step else ""
        return f"{ICON[r.status]} db-deploy {r.command} **{r.status}**{step}{where}"
    if r.dry_run and r.migrate:
        n = len(r.migrate.pending)
        verb = "reverted" if r.command == "rollback" else "applied"
        return f"📝 db-deploy {r.command}: {n} revision(s) would be {verb}{where} (dry run)"
    if r.command == "deploy":
        if r.status == "noop":
            return f"{ICON['noop']} db-deploy: nothing to migrate{where}, already at head"
        return f"{ICON['success']} db-deploy: {len(r.applied)} revision(s) applied{where}"
    if r.command == "status" and r.status_check is not None:
        n = len(r.status_check.pending)
        if not r.status_check.script_heads and not r.status_check.database_heads:
            return f"⚠️ db-deploy status: no revisions found{where}"
        if not n:
            return f"✅ db-deploy status: up to date{where}"
        return f"⏳ db-deploy status: {n} pending{where}"
    if r.command == "rollback" and r.migrate is not None:
        return f"↩️ db-deploy rollback: {len(r.applied)} revision(s) reverted{where}"
    return f"{ICON[r.status]} db-deploy {r.command} {r.status}{where}"


def header(r: RunResult) -> list[str]:
    lines = [f"## {headline(r)}", ""]
    if r.error:
        lines += [f"> **Error:** {cell(r.error)}", ""]
    return lines


def failure(r: RunResult) -> list[str]:
    """Where the run failed: its class, the file and line (linked to the commit on GitHub),
    the exception or the server's words, the position, the failing object, the statement."""
    if r.status != "failed" or not (r.error_class or r.failure):
        return []
    f = r.failure or Failure()
    rows: list[list[object]] = []
    if r.error_class:
        rows.append(["Class", f"`{r.error_class}`"])
    if f.file:
        rows.append(["Where", where(f, r)])
    if f.exception:
        rows.append(["Exception", f"`{f.exception}`"])
    if f.message or f.sqlstate:
        state = f" (SQLSTATE `{f.sqlstate}`)" if f.sqlstate else ""
        rows.append(["Server", f"{f.message}{state}"])
    rows += [
        [k, v] for k, v in (("Detail", f.detail), ("Hint", f.hint), ("Context", f.context)) if v
    ]
    if f.position:
        at = (
            f"line {f.statement_line}, column {f.statement_column} of the statement (shown below), "
            if f.statement_line
            else ""
        )
        rows.append(["Position", f"{at}character {f.position}"])
    if f.object:
        rows.append(["Object", f.object])
    lines = ["### Failure", "", *table(["", ""], rows), ""]
    if f.statement:
        lines += ["```sql", f.statement.replace("```", "` ` `"), "```", ""]
    return lines


def where(f: Failure, r: RunResult) -> str:
    """`file` line N, linked to the line at the run's commit when on GitHub."""
    t = r.telemetry
    text = f"`{f.file}`" + (f" line {f.line}" if f.line else "")
    if t.repository and t.sha and not f.file.startswith("/"):
        server = t.run_url.split(f"/{t.repository}/", 1)[0] if t.run_url else "https://github.com"
        anchor = f"#L{f.line}" if f.line else ""
        text = f"[{text}]({server}/{t.repository}/blob/{t.sha}/{f.file}{anchor})"
    return text + (f" (revision `{f.revision}`)" if f.revision else "")


def run(r: RunResult) -> list[str]:
    """The run's facts: status, revisions, database, who, where, when, how long."""
    t = r.telemetry
    revision = (
        f"`{r.previous_revision or 'base'}` → `{r.current_revision or 'base'}`"
        if r.migrate is not None
        else f"`{r.current_revision or 'base'}`"
    ) + (f" (head `{r.head_revision}`)" if r.head_revision else "")
    rows = [
        ["Status", f"`{r.status}`"],
        ["Revision", revision],
        *([["Database", database(r.preflight)]] if r.preflight else []),
        ["Environment", t.environment or "—"],
        ["Actor", t.actor or "—"],
        ["Repository", t.repository or "—"],
        ["Ref", t.ref or "—"],
        ["Commit", f"`{t.sha[:12]}`" if t.sha else "—"],
        ["Run", f"[{t.run_id}]({t.run_url})" if t.run_url else (t.run_id or "local")],
        ["Started", r.started_at.isoformat(timespec="seconds")],
        ["Finished", r.finished_at.isoformat(timespec="seconds") if r.finished_at else "—"],
        ["Duration", f"{r.duration:.2f} s"],
        ["Tool", f"db-deploy {t.tool_version}"],
    ]
    if r.steps:
        rows.append(["Steps", ", ".join(f"{k} {v:.2f}s" for k, v in r.steps.items())])
    return ["### Run", "", *table(["", ""], rows), ""]


def database(p: PreflightResult) -> str:
    return (
        f"`{p.database}` on {p.target}, PostgreSQL "
        f"{p.server_version}, user `{p.user}`, TLS {'on' if p.tls else 'off'}"
    )


def dependencies(inst: InstallResult) -> list[str]:
    line = (
        f"`{inst.requirements}` installed in {inst.seconds:.1f} s"
        + (" (hash-checked)" if inst.hashes else "")
        + (f": {', '.join(inst.installed)}" if inst.installed else ": nothing new")
        + "."
    )
    return ["### Dependencies", "", line, ""]


# --------------------------------------------------------------------------- migrations


def migrations(m: MigrateResult, *, rollback: bool) -> list[str]:
    """What a migrate (or rollback) applied, would apply, or why nothing."""
    lines = ["### Migrations", ""]
    if m.dry_run:
        lines += planned(m)
    elif m.applied or m.failed_revision:
        lines += applied(m, rollback=rollback)
    else:
        lines += ["Nothing to apply: the database was already at the target.", ""]
    transactions = (
        "one transaction per revision."
        if m.transaction_per_migration
        else "one transaction for the whole upgrade."
    )
    where = f"Script folder `{m.script_location}`, version table `{m.version_table_name}`, "
    return [*lines, *lock_attempts(m), where + transactions, ""]


def lock_attempts(m: MigrateResult) -> list[str]:
    """The lock ladder's attempts, when one hit lock_timeout (a table the first time through)."""
    tries = m.lock_attempts
    if not any(a.timed_out for a in tries):
        return []
    rows = [
        [
            str(a.attempt),
            a.where or a.scope,
            f"{a.lock_timeout * 1000:g} ms",
            "⏱️ lock_timeout" if a.timed_out else "✅ locks taken",
            str(a.blocker_pid or ""),
            a.blocker_application,
            f"{a.blocker_query_age:.1f} s" if a.blocker_query_age is not None else "",
            f"{a.wait:.2f} s" if a.wait else "",
            f"`{a.dropped_index}`" if a.dropped_index else "",
        ]
        for a in tries
    ]
    head = ["#", "Where", "lock_timeout", "Result", "Blocker pid", "Application", "Blocker age"]
    body = table([*head, "Wait after", "Invalid index dropped"], rows, "llrlrlrrl")
    spent = sum(a.seconds + a.wait for a in tries)
    summary = f"Lock attempts: {len(tries)}, {sum(a.timed_out for a in tries)} hit lock_timeout"
    return details(f"{summary} ({spent:.1f} s)", body)


def planned(m: MigrateResult) -> list[str]:
    """A dry run: the pending revisions and the SQL of each."""
    lines = [f"Dry run: {len(m.pending)} revision(s) pending, nothing applied.", ""]
    if m.pending:
        rows = [[f"`{p.revision}`", p.description] for p in m.pending]
        lines += [*table(["Revision", "Description"], rows), ""]
    for revision, sql in m.sql.items():
        lines += details(f"<code>{revision}</code> SQL", ["```sql", sql, "```"])
    return lines


def applied(m: MigrateResult, *, rollback: bool) -> list[str]:
    """The revisions applied (or reverted), then the one that failed and its error."""
    done = "↩️ reverted" if rollback else "✅ applied"
    rows = [[f"`{a.revision}`", a.description, f"{a.seconds:.3f} s", done] for a in m.applied]
    rows += [[f"`{rev}`", "", "", "↩️ rolled back"] for rev in m.rolled_back]
    if m.failed_revision:
        desc = next((p.description for p in m.pending if p.revision == m.failed_revision), "")
        rows.append([f"`{m.failed_revision}`", desc, "", "❌ failed"])
    lines = [*table(["Revision", "Description", "Time", "Result"], rows, "llrl"), ""]
    if m.rolled_back:
        lines += [
            f"Rolled back with the failure (one transaction for the whole upgrade): "
            f"{', '.join(f'`{x}`' for x in m.rolled_back)}.",
            "",
        ]
    if m.error:
        lines += ["```", m.error, "```", ""]
    return lines


def status(st: StatusResult) -> list[str]:
    line = (
        f"Database at `{', '.join(st.database_heads) or 'base'}`; migrations head "
        f"`{', '.join(st.script_heads) or 'base'}`; "
        + ("up to date." if st.up_to_date else f"{len(st.pending)} pending.")
        + ("" if st.script_heads else " No revisions found in the migrations.")
    )
    lines = ["### Status", "", line, ""]
    if st.pending:
        rows = [[f"`{p.revision}`", p.description] for p in st.pending]
        lines += [*table(["Pending revision", "Description"], rows), ""]
    return lines


def integrity(ig: IntegrityReport) -> list[str]:
    line = f"Integrity: {ig.checked} applied revision(s) checked against their recorded checksums"
    if ig.baselined:
        line += f"; {len(ig.baselined)} baselined (applied before the history existed)"
    if ig.accepted:
        line += f"; edited and accepted: {', '.join(ig.accepted)}"
    return [line + ".", ""]


def history(entries: list[HistoryEntry]) -> list[str]:
    rows = [
        [
            f"`{h.revision}`",
            h.kind,
            h.applied_at,
            "" if h.seconds is None else f"{h.seconds:.3f} s",
            h.actor or "—",
            f"`{h.sha[:12]}`" if h.sha else "—",
            f"`{h.checksum[:12]}`",
        ]
        for h in entries
    ]
    headers = ["Revision", "Kind", "Applied at", "Time", "Actor", "Commit", "Checksum"]
    return details("Deploy history (latest first)", table(headers, rows))


# --------------------------------------------------------------------------- seed and smoke


def seed(sd: SeedResult) -> list[str]:
    lines = ["### Seed", ""]
    if sd.error:
        return [*lines, f"❌ `{sd.path}` failed and {sd.outcome}: {cell(sd.error)}", ""]
    lines += [
        f"`{sd.path}` ({sd.kind}) in {sd.seconds:.2f} s: {sd.inserted} inserted, "
        f"{sd.updated} updated, {sd.deleted} deleted.",
        "",
    ]
    if sd.tables:
        rows = [[t.table, t.inserted, t.updated, t.deleted] for t in sd.tables]
        lines += [*table(["Table", "Inserted", "Updated", "Deleted"], rows, "lrrr"), ""]
    return lines


def smoke(sm: SmokeResult) -> list[str]:
    lines = [
        "### Smoke test",
        "",
        f"{len(sm.tables)} tables checked, {len(sm.failed_tables)} failed, "
        f"{sm.total_rows:,} rows in {sm.seconds:.2f} s.",
        "",
    ]
    if sm.expectations:
        lines += expectations(sm)
    if sm.extensions:
        lines += extensions(sm)
    if sm.tables:
        lines += tables(sm)
    if sm.vector_indexes:
        lines += vector_indexes(sm.vector_indexes)
    return lines


def expectations(sm: SmokeResult) -> list[str]:
    rows = [
        [
            f"`{x.table} >= {x.minimum}`",
            x.counted if x.counted is not None else x.error,
            "⏳ checked after the deploy" if x.deferred else mark(x.ok),
        ]
        for x in sm.expectations
    ]
    return [*table(["Expectation", "Counted", "Result"], rows, "lrl"), ""]


def extensions(sm: SmokeResult) -> list[str]:
    rows = [
        [
            e.name,
            f">= {e.required}" if e.required else "any",
            e.installed or "not installed",
            "⏳ checked after the deploy" if e.deferred else mark(e.ok),
        ]
        for e in sm.extensions
    ]
    return [*table(["Extension", "Required", "Installed", "Result"], rows), ""]


def tables(sm: SmokeResult) -> list[str]:
    rows = [[t.qualified, row_count(t), "✅" if t.ok else f"❌ {t.error}"] for t in sm.tables]
    return details(
        "Tables",
        [
            *table(["Table", "Rows", "Result"], rows, "lrl"),
            "",
            "Rows marked `~` are catalog estimates (large tables are not counted); `≥` marks "
            "a large table never analysed, of which only a lower bound is known.",
        ],
    )


def vector_indexes(indexes: list[VectorIndex]) -> list[str]:
    rows = [
        [
            v.name,
            v.table,
            v.method,
            fmt_bytes(v.size_bytes),
            "" if v.rows is None else f"{v.rows:,}",
            "" if v.lists is None else v.lists,
            advice(v),
        ]
        for v in indexes
    ]
    headers = ["Index", "Table", "Method", "Size", "Rows", "lists", "Advice"]
    return ["#### Vector indexes", "", *table(headers, rows), ""]


def advice(v: VectorIndex) -> str:
    if v.advice:
        return f"`{v.advice}`"
    if v.method != "ivfflat":
        return "—"
    if v.recommended_lists is None:
        return "too few rows to judge (build ivfflat after loading data)"
    return f"ok (pgvector suggests ~{v.recommended_lists})"


# --------------------------------------------------------------------------- the end


def warnings(items: list[str]) -> list[str]:
    return ["### Warnings", "", *[f"- ⚠️ {cell(w)}" for w in items], ""] if items else []


def notes(items: list[str]) -> list[str]:
    return ["### Notes", "", *[f"- {cell(n)}" for n in items], ""] if items else []
