"""The job summary: GitHub-flavoured markdown from the run's record."""

from __future__ import annotations

from collections.abc import Sequence

from deployer.render import operations
from deployer.results import RunResult, TableCheck, VectorIndex

ICON = {"success": "✅", "noop": "✅", "failed": "❌"}


def cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def table(headers: list[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    aligns = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in aligns]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def headline(r: RunResult) -> str:
    where = ""
    if r.preflight:
        where = f" on `{r.preflight.database}` ({r.preflight.target})"
    if r.status == "failed":
        step = f" at **{r.failed_step}**" if r.failed_step else ""
        return f"{ICON['failed']} db-deploy {r.command} **failed**{step}{where}"
    if r.dry_run and r.migrate:
        n = len(r.migrate.pending)
        verb = "reverted" if r.command == "rollback" else "applied"
        return f"📝 db-deploy {r.command}: {n} revision(s) would be {verb}{where} (dry run)"
    if r.command == "deploy":
        if r.status == "noop":
            return f"{ICON['noop']} db-deploy: nothing to migrate{where}, already at head"
        return f"{ICON['success']} db-deploy: {len(r.applied)} revision(s) applied{where}"
    return f"{ICON[r.status]} db-deploy {r.command} {r.status}{where}"


def row_count(t: TableCheck) -> str:
    """`12`, `~25,000` (a catalog estimate) or `≥10,001` (large and never analysed)."""
    if t.rows is None:
        return ""
    if t.lower_bound:
        return f"≥{t.rows:,}"
    return f"~{t.rows:,}" if t.estimated else f"{t.rows:,}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render(r: RunResult) -> str:
    t = r.telemetry
    lines = [f"## {headline(r)}", ""]
    if r.error:
        lines += [f"> **Error:** {cell(r.error)}", ""]

    run = f"[{t.run_id}]({t.run_url})" if t.run_url else (t.run_id or "local")
    telemetry = [
        ["Status", f"`{r.status}`"],
        [
            "Revision",
            (
                f"`{r.previous_revision or 'base'}` → `{r.current_revision or 'base'}`"
                if r.migrate is not None
                else f"`{r.current_revision or 'base'}`"
            )
            + (f" (head `{r.head_revision}`)" if r.head_revision else ""),
        ],
        ["Environment", t.environment or "—"],
        ["Actor", t.actor or "—"],
        ["Repository", t.repository or "—"],
        ["Ref", t.ref or "—"],
        ["Commit", f"`{t.sha[:12]}`" if t.sha else "—"],
        ["Run", run],
        ["Started", r.started_at.isoformat(timespec="seconds")],
        ["Finished", r.finished_at.isoformat(timespec="seconds") if r.finished_at else "—"],
        ["Duration", f"{r.duration:.2f} s"],
        ["Tool", f"db-deploy {t.tool_version}"],
    ]
    if r.preflight:
        p = r.preflight
        telemetry.insert(
            2,
            [
                "Database",
                f"`{p.database}` on {p.target}, PostgreSQL "
                f"{p.server_version}, user `{p.user}`, TLS {'on' if p.tls else 'off'}",
            ],
        )
    if r.steps:
        telemetry.append(["Steps", ", ".join(f"{k} {v:.2f}s" for k, v in r.steps.items())])
    lines += ["### Run", "", *table(["", ""], telemetry), ""]

    if r.install is not None:
        inst = r.install
        lines += [
            "### Dependencies",
            "",
            f"`{inst.requirements}` installed in {inst.seconds:.1f} s"
            + (" (hash-checked)" if inst.hashes else "")
            + (f": {', '.join(inst.installed)}" if inst.installed else ": nothing new")
            + ".",
            "",
        ]

    m = r.migrate
    if m is not None:
        lines += ["### Migrations", ""]
        if m.dry_run:
            lines += [f"Dry run: {len(m.pending)} revision(s) pending, nothing applied.", ""]
            if m.pending:
                lines += table(
                    ["Revision", "Description"],
                    [[f"`{p.revision}`", p.description] for p in m.pending],
                ) + [""]
            for rev, sql in m.sql.items():
                lines += [
                    f"<details><summary><code>{rev}</code> SQL</summary>",
                    "",
                    "```sql",
                    sql,
                    "```",
                    "",
                    "</details>",
                    "",
                ]
        elif m.applied or m.failed_revision:
            rows: list[list[object]] = [
                [
                    f"`{a.revision}`",
                    a.description,
                    f"{a.seconds:.3f} s",
                    "↩️ reverted" if r.command == "rollback" else "✅ applied",
                ]
                for a in m.applied
            ]
            if m.failed_revision:
                desc = next(
                    (p.description for p in m.pending if p.revision == m.failed_revision), ""
                )
                rows.append([f"`{m.failed_revision}`", desc, "", "❌ failed"])
            lines += table(["Revision", "Description", "Time", "Result"], rows, "llrl") + [""]
            if m.error:
                lines += ["```", m.error, "```", ""]
        else:
            lines += ["Nothing to apply: the database was already at the target.", ""]
        lines += [
            f"Script folder `{m.script_location}`, version table `{m.version_table_name}`, "
            + (
                "one transaction per revision."
                if m.transaction_per_migration
                else "one transaction for the whole upgrade."
            ),
            "",
        ]

    st = r.status_check
    if st is not None:
        lines += [
            "### Status",
            "",
            f"Database at `{', '.join(st.database_heads) or 'base'}`; migrations head "
            f"`{', '.join(st.script_heads) or 'base'}`; "
            + ("up to date." if st.up_to_date else f"{len(st.pending)} pending."),
            "",
        ]
        if st.pending:
            lines += table(
                ["Pending revision", "Description"],
                [[f"`{p.revision}`", p.description] for p in st.pending],
            ) + [""]

    if r.integrity is not None:
        ig = r.integrity
        line = (
            f"Integrity: {ig.checked} applied revision(s) checked against their recorded checksums"
        )
        if ig.baselined:
            line += f"; {len(ig.baselined)} baselined (applied before the history existed)"
        if ig.accepted:
            line += f"; edited and accepted: {', '.join(ig.accepted)}"
        lines += [line + ".", ""]
    if r.history:
        lines += ["<details><summary>Deploy history (latest first)</summary>", ""]
        lines += table(
            ["Revision", "Kind", "Applied at", "Time", "Actor", "Commit", "Checksum"],
            [
                [
                    f"`{h.revision}`",
                    h.kind,
                    h.applied_at,
                    "" if h.seconds is None else f"{h.seconds:.3f} s",
                    h.actor or "—",
                    f"`{h.sha[:12]}`" if h.sha else "—",
                    f"`{h.checksum[:12]}`",
                ]
                for h in r.history
            ],
        )
        lines += ["", "</details>", ""]

    sd = r.seed
    if sd is not None:
        lines += ["### Seed", ""]
        if sd.error:
            lines += [f"❌ `{sd.path}` failed and was rolled back: {cell(sd.error)}", ""]
        else:
            lines += [
                f"`{sd.path}` ({sd.kind}) in {sd.seconds:.2f} s: {sd.inserted} inserted, "
                f"{sd.updated} updated, {sd.deleted} deleted.",
                "",
            ]
            if sd.tables:
                lines += table(
                    ["Table", "Inserted", "Updated", "Deleted"],
                    [[t.table, t.inserted, t.updated, t.deleted] for t in sd.tables],
                    "lrrr",
                ) + [""]
    elif r.seed_requested and r.status != "failed" and not r.dry_run:
        lines += ["### Seed", "", "Not run.", ""]

    sm = r.smoke
    if sm is not None:
        lines += [
            "### Smoke test",
            "",
            f"{len(sm.tables)} tables checked, {len(sm.failed_tables)} failed, "
            f"{sm.total_rows:,} rows in {sm.seconds:.2f} s.",
            "",
        ]
        if sm.expectations:
            lines += table(
                ["Expectation", "Counted", "Result"],
                [
                    [
                        f"`{x.table} >= {x.minimum}`",
                        x.counted if x.counted is not None else x.error,
                        "✅" if x.ok else "❌",
                    ]
                    for x in sm.expectations
                ],
                "lrl",
            ) + [""]
        if sm.extensions:
            lines += table(
                ["Extension", "Required", "Installed", "Result"],
                [
                    [
                        e.name,
                        f">= {e.required}" if e.required else "any",
                        e.installed or "not installed",
                        "✅" if e.ok else "❌",
                    ]
                    for e in sm.extensions
                ],
            ) + [""]
        if sm.tables:
            lines += ["<details><summary>Tables</summary>", ""]
            lines += table(
                ["Table", "Rows", "Result"],
                [
                    [
                        t.qualified,
                        "" if t.rows is None else row_count(t),
                        "✅" if t.ok else f"❌ {t.error}",
                    ]
                    for t in sm.tables
                ],
                "lrl",
            )
            lines += [
                "",
                "Rows marked `~` are catalog estimates (large tables are not counted); `≥` marks "
                "a large table never analysed, of which only a lower bound is known.",
                "",
                "</details>",
                "",
            ]
        if sm.vector_indexes:
            lines += ["#### Vector indexes", ""]
            lines += table(
                ["Index", "Table", "Method", "Size", "Rows", "lists", "Advice"],
                [
                    [
                        v.name,
                        v.table,
                        v.method,
                        fmt_bytes(v.size_bytes),
                        "" if v.rows is None else f"{v.rows:,}",
                        "" if v.lists is None else v.lists,
                        _advice(v),
                    ]
                    for v in sm.vector_indexes
                ],
            )
            lines += [""]

    lines += operations.sections(r)
    if r.warnings:
        lines += ["### Warnings", "", *[f"- ⚠️ {cell(w)}" for w in r.warnings], ""]
    if r.notices:
        lines += ["### Notes", "", *[f"- {cell(n)}" for n in r.notices], ""]
    if r.report_path:
        lines += [f"<sub>JSON report: `{r.report_path}`</sub>", ""]
    return "\n".join(lines)


def _advice(v: VectorIndex) -> str:
    if v.advice:
        return f"`{v.advice}`"
    if v.method != "ivfflat":
        return "—"
    if v.recommended_lists is None:
        return "too few rows to judge (build ivfflat after loading data)"
    return f"ok (pgvector suggests ~{v.recommended_lists})"
