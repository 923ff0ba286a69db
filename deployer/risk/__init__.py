"""The migration risk review: every pending revision rehearsed on a scratch copy of the live
schema, its statements checked by rules on a real parser, each finding weighed against the live
database. A step: it returns a `RiskResult` and prints nothing.

- `rules`: squawk-class rules on statements parsed by libpg_query (pglast);
- `live`: the live tables' sizes, the sessions holding or waiting for locks on them, long
  transactions, vacuums (catalog and statistics views only: no lock on a user's table);
- `rehearse`: the scratch database and the traced run of the revisions;
- `level`: lock × rewrite/scan × size × contention → low / medium / high and an outage estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from deployer.alembic_project import AlembicProject
from deployer.errors import ConfigError, StepFailed
from deployer.results.risk import (
    LEVELS,
    RiskFinding,
    RiskResult,
    RiskRevision,
    StatementTrace,
    TableStats,
    level_rank,
)
from deployer.risk.level import weigh
from deployer.risk.live import LiveSnapshot, read_live
from deployer.risk.rehearse import (
    Rehearsal,
    RehearsalUnavailable,
    copy_schema,
    mode_rank,
    offline_statements,
    rehearse,
    scratch_database,
    shown_sql,
)
from deployer.risk.rules import (
    MEASURED_RULES,
    RULE_IDS,
    RULES,
    Hit,
    RuleChecker,
    check_revision,
    split,
)

ACCEPT_ATTRIBUTE = "db_deploy_accept"

__all__ = [
    "ACCEPT_ATTRIBUTE",
    "LEVELS",
    "RULE_IDS",
    "RiskGateError",
    "accepted_findings",
    "gate",
    "review",
]


class RiskGateError(StepFailed):
    """A finding reached `risk-fail-on`: nothing was applied (exit 1, error-class risk-gate)."""

    error_class = "risk-gate"


def accepted_findings(project: AlembicProject, revision: str) -> dict[str, str]:
    """The revision's `db_deploy_accept = {"rule-id": "reason"}`; an unknown id or a value that
    is not a reason is refused (ConfigError, exit 2)."""
    script = project.revision(revision)
    raw = getattr(script.module, ACCEPT_ATTRIBUTE, None)
    if raw is None:
        return {}
    where = f"{Path(script.path).name}: {ACCEPT_ATTRIBUTE}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a dict of rule id to reason")
    out: dict[str, str] = {}
    for key, reason in raw.items():
        if key not in RULE_IDS:
            known = ", ".join(sorted(RULE_IDS))
            raise ConfigError(f"{where} names an unknown rule id {key!r} (known: {known})")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where}[{key!r}] needs a reason (a non-empty string)")
        out[key] = reason.strip()
    return out


def gate(result: RiskResult, fail_on: str) -> None:
    """Raise RiskGateError when a finding not accepted reaches `fail_on`."""
    hits = result.reaches(fail_on)
    if hits:
        top = hits[0]
        where = f" on {top.table}" if top.table else ""
        raise RiskGateError(
            f"risk review: {len(hits)} finding{'s' * (len(hits) > 1)} at or above "
            f"risk-fail-on {fail_on}; the highest: {top.level} {top.rule}{where} in revision "
            f"{top.revision} (accept it with {ACCEPT_ATTRIBUTE} in the revision, with a reason)",
            step="risk",
        )


def review(
    project: AlembicProject,
    *,
    heads: list[str],
    target: str = "heads",
    live: sa.Connection | None = None,
    snapshot: LiveSnapshot | None = None,
    target_url: str = "",
    scratch_server_url: str = "",
    scratch_label: str = "",
    offline_sql: dict[str, str] | None = None,
    redact: Callable[[str], str] = lambda s: s,
    workspace: Path | None = None,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> RiskResult:
    """Review the revisions from `heads` (the live database's) to `target`.

    `live`: a connection to the target (its statistics are read first, unless `snapshot`
    holds them already: read before env.py ran on the target; neither: no live statistics).
    `scratch_server_url`: a server on which a scratch database may be created, the live schema
    copied into it from the target's catalog (on `live`, else on a session to `target_url`;
    no lock on any table of the target); empty: no rehearsal, the rules then read
    `offline_sql` (revision → Alembic's `--sql` text) where given."""
    started = time.perf_counter()
    result = RiskResult(lock_timeout=lock_timeout)
    pending = project.upgrade_path(heads, target)
    accepts = {r.revision: accepted_findings(project, r.revision) for r in pending}
    notes: list[str] = []
    if snapshot is None:
        snapshot = _read_snapshot(live, redact, notes)
    result.long_transactions = snapshot.long_transactions

    rehearsal: Rehearsal | None = None
    if pending and scratch_server_url:
        rehearsal = _rehearse_on_scratch(
            project,
            live,
            notes,
            heads=heads,
            target=target,
            target_url=target_url,
            scratch_server_url=scratch_server_url,
            redact=redact,
            workspace=workspace,
            version_table=version_table,
            version_table_schema=version_table_schema,
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
        )
        if rehearsal is not None:
            result.rehearsed = True
            result.scratch = scratch_label
    elif pending:
        notes.append(
            "not rehearsed (no scratch database: set scratch-database-url or install the "
            "embedded server): rules and live statistics only"
        )
    if rehearsal is None and pending and offline_sql is None:
        offline_sql, why = offline_statements(
            project, target_url or "postgresql://offline/offline", heads, target, workspace
        )
        if why:
            notes.append(redact(why))

    for rev in pending:
        entry = RiskRevision(revision=rev.revision, description=rev.description, path=rev.path)
        _review_revision(entry, rehearsal, offline_sql, snapshot, redact, lock_timeout)
        _accept(entry, accepts.get(rev.revision, {}))
        result.revisions.append(entry)

    result.level = max((r.level for r in result.revisions), key=level_rank, default="none")
    result.tables = _touched_tables(result, snapshot)
    result.note = "; ".join(notes)
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _read_snapshot(
    live: sa.Connection | None, redact: Callable[[str], str], notes: list[str]
) -> LiveSnapshot:
    """The live statistics, read on `live`; none (and a note) without a connection."""
    if live is not None:
        return read_live(live, redact=redact)
    notes.append("no live statistics (no target connection)")
    return LiveSnapshot()


def _touched_tables(result: RiskResult, snapshot: LiveSnapshot) -> list[TableStats]:
    """The live tables the findings name, by name, those that exist."""
    tables = sorted(
        {
            f.table: snapshot.find(f.table) for r in result.revisions for f in r.findings if f.table
        }.values(),
        key=lambda t: t.table,
    )
    return [t for t in tables if t.exists]


def _rehearse_on_scratch(
    project: AlembicProject,
    live: sa.Connection | None,
    notes: list[str],
    *,
    heads: list[str],
    target: str,
    target_url: str,
    scratch_server_url: str,
    redact: Callable[[str], str],
    workspace: Path | None,
    version_table: str,
    version_table_schema: str | None,
    lock_timeout: float | None,
    statement_timeout: float | None,
) -> Rehearsal | None:
    """A scratch database on `scratch_server_url`, the live schema copied into it (what could
    not be created is noted), the revisions rehearsed there. None (and a note) when it cannot
    be done."""
    try:
        if live is not None and live.in_transaction():
            live.rollback()
        with scratch_database(scratch_server_url) as scratch:
            if target_url or live is not None:
                skipped = copy_schema(live, target_url, scratch)
                if skipped:
                    notes.append(
                        f"{len(skipped)} object(s) of the live schema not copied to the "
                        f"scratch database (first: {redact(skipped[0])})"
                    )
            return rehearse(
                project,
                scratch,
                heads=heads,
                target=target,
                redact=redact,
                workspace=workspace,
                version_table=version_table,
                version_table_schema=version_table_schema,
                lock_timeout=lock_timeout,
                statement_timeout=statement_timeout,
            )
    except RehearsalUnavailable as exc:
        notes.append(f"not rehearsed ({redact(str(exc))}): rules and live statistics only")
        return None


def _accept(entry: RiskRevision, reasons: dict[str, str]) -> None:
    """Mark the findings the revision accepts (`db_deploy_accept`); its level is the highest
    of the others."""
    for f in entry.findings:
        f.accepted = reasons.get(f.rule, "")
    live_levels = [f.level for f in entry.findings if not f.accepted]
    entry.level = max(live_levels, key=level_rank, default="none")


def _review_revision(
    entry: RiskRevision,
    rehearsal: Rehearsal | None,
    offline_sql: dict[str, str] | None,
    snapshot: LiveSnapshot,
    redact: Callable[[str], str],
    lock_timeout: float | None,
) -> None:
    """Fill one revision's statements (rehearsed, else from the offline text) and findings."""
    if rehearsal is not None:
        entry.statements = rehearsal.traces.get(entry.revision, [])
        entry.error = rehearsal.errors.get(entry.revision, "")
        statements: list[tuple[str, bool | None]] = list(rehearsal.raw.get(entry.revision, []))
    else:
        text = (offline_sql or {}).get(entry.revision, "")
        statements = [(p.sql, None) for p in split(text)] if text else []
        entry.statements = [
            StatementTrace(entry.revision, i, shown_sql(sql, redact))
            for i, (sql, _) in enumerate(statements, 1)
        ]
    if rehearsal is not None:
        checked = check_revision(statements, session_lock_timeout=bool(lock_timeout))
    else:
        # Offline text starts outside any transaction and carries Alembic's BEGIN/COMMIT.
        checker = RuleChecker(session_lock_timeout=bool(lock_timeout), in_transaction=False)
        checked = [
            h for i, (sql, _) in enumerate(statements, 1) for h in checker.check(sql, index=i)
        ]
    entry.findings = _findings(
        entry.revision,
        entry.path,
        checked,
        entry.statements,
        rehearsal,
        snapshot,
        redact,
        lock_timeout,
    )


def _same(a: str, b: str) -> bool:
    a, b = a.replace('"', ""), b.replace('"', "")
    if a == b:
        return True
    if "." in a and "." in b:
        return False
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _findings(
    revision: str,
    path: str,
    hits: list[Hit],
    traces: list[StatementTrace],
    rehearsal: Rehearsal | None,
    live: LiveSnapshot,
    redact: Callable[[str], str],
    lock_timeout: float | None,
) -> list[RiskFinding]:
    out: list[RiskFinding] = []
    covered: set[tuple[int, str]] = set()  # (statement, table) a rule already speaks for
    for hit in hits:
        rule = RULES[hit.rule]
        trace = traces[hit.index - 1] if 0 < hit.index <= len(traces) else None
        stats = live.find(hit.table) if hit.table else live.find("")
        table = stats.table if stats.exists else hit.table
        lock, effect, measured = rule.lock, rule.effect, ""
        if rehearsal is not None and trace is not None and not trace.error:
            mine = [lk for lk in trace.locks if _same(lk.relation, table)]
            if mine:
                lock = max(mine, key=lambda lk: mode_rank(lk.mode)).mode
            rewritten = any(_same(t, table) for t in trace.rewritten)
            scanned = any(_same(t, table) for t in trace.scanned)
            if rule.effect in ("rewrite", "scan") and not rule.compat:
                effect = "rewrite" if rewritten else "scan" if scanned else "none"
            elif rewritten:
                effect = "rewrite"
            measured = _measured(trace, lock if mine else "", rewritten, scanned)
            covered.add((hit.index, table))
        level, outage = weigh(
            hit.rule, lock, effect, stats, lock_timeout=lock_timeout, compat=rule.compat
        )
        out.append(
            RiskFinding(
                revision=revision,
                rule=hit.rule,
                level=level,
                table=table,
                lock=lock,
                message=rule.why,
                safe=rule.safe,
                statement=shown_sql(hit.statement, redact) if hit.statement else "",
                path=path,
                line=trace.line if trace is not None else 0,
                source="rule",
                outage=outage,
                measured=measured,
            )
        )
    if rehearsal is not None:
        out += _measured_findings(revision, path, traces, covered, live, lock_timeout)
    candidates = [(f.table, f.lock, f.statement, f.line) for f in out if f.table]
    if rehearsal is not None:
        # Every strong lock measured on a live table counts, a plain ADD COLUMN's too: behind a
        # long transaction, it is the lock queue that makes the outage, not the statement.
        candidates += [
            (lk.relation, lk.mode, t.sql, t.line) for t in traces for lk in t.locks if lk.existed
        ]
    out += _contention(revision, path, candidates, live, lock_timeout)
    return out


def _measured(trace: StatementTrace, lock: str, rewritten: bool, scanned: bool) -> str:
    parts = [f"held {lock}" if lock else "no new lock on the table"]
    parts.append(
        "rewrote the table"
        if rewritten
        else "scanned the table"
        if scanned
        else "no rewrite, no scan"
    )
    parts.append(f"{trace.seconds * 1000:.0f} ms on the empty scratch copy")
    return "rehearsed: " + ", ".join(parts)


def _measured_findings(
    revision: str,
    path: str,
    traces: list[StatementTrace],
    covered: set[tuple[int, str]],
    live: LiveSnapshot,
    lock_timeout: float | None,
) -> list[RiskFinding]:
    """What only the rehearsal saw: a rewrite, or a scan under a lock that blocks writes, that
    no rule named (a user function's volatile default, SET LOGGED, a backfill under an earlier
    statement's lock…)."""
    out: list[RiskFinding] = []
    held: dict[str, str] = {}  # strongest lock held so far in this revision, per table
    for trace in traces:
        if not trace.in_transaction:
            held.clear()
        for lk in trace.locks:
            if mode_rank(lk.mode) > mode_rank(held.get(lk.relation, "")):
                held[lk.relation] = lk.mode
        for table in trace.rewritten:
            if any(i == trace.index and _same(t, table) for i, t in covered):
                continue
            lock = held.get(table, "AccessExclusiveLock")
            out.append(
                _measured_finding(
                    revision,
                    path,
                    trace,
                    "table-rewrite",
                    table,
                    lock,
                    "rewrite",
                    live,
                    lock_timeout,
                )
            )
        for table in trace.scanned:
            if any(i == trace.index and _same(t, table) for i, t in covered):
                continue
            lock = held.get(table, "")
            if mode_rank(lock) < mode_rank("ShareLock") or table in trace.rewritten:
                continue
            out.append(
                _measured_finding(
                    revision,
                    path,
                    trace,
                    "scan-under-lock",
                    table,
                    lock,
                    "scan",
                    live,
                    lock_timeout,
                )
            )
    return out


def _measured_finding(
    revision: str,
    path: str,
    trace: StatementTrace,
    rule: str,
    table: str,
    lock: str,
    effect: str,
    live: LiveSnapshot,
    lock_timeout: float | None,
) -> RiskFinding:
    stats = live.find(table)
    level, outage = weigh(rule, lock, effect, stats, lock_timeout=lock_timeout)
    safe = (
        "Find what rewrites it (a volatile default, SET LOGGED/UNLOGGED, SET TABLESPACE, a type "
        "change) and use expand/contract: a new column or table filled in batches"
        if rule == "table-rewrite"
        else "Run the scan outside the strong lock: NOT VALID then VALIDATE CONSTRAINT in a "
        "later transaction, or backfill in batches in a revision of its own"
    )
    return RiskFinding(
        revision=revision,
        rule=rule,
        level=level,
        table=table,
        lock=lock,
        message=MEASURED_RULES[rule].format(lock=lock or "its lock"),
        safe=safe,
        statement=trace.sql,
        path=path,
        line=trace.line,
        source="measured",
        outage=outage,
        measured=_measured(trace, lock, rule == "table-rewrite", rule == "scan-under-lock"),
    )


def _contention(
    revision: str,
    path: str,
    candidates: list[tuple[str, str, str, int]],
    live: LiveSnapshot,
    lock_timeout: float | None,
) -> list[RiskFinding]:
    """`lock-contention`: a table the revision locks so that reads or writes wait has sessions
    on it right now that the statement would queue behind. One finding per table, on its
    strongest lock. `candidates`: (table, lock, statement, line)."""
    from deployer.risk.level import blocks, contention

    strongest: dict[str, tuple[str, str, str, int]] = {}
    for table, lock, statement, line in candidates:
        stats = live.find(table)
        if not stats.exists or not blocks(lock):
            continue
        best = strongest.get(stats.table)
        if best is None or mode_rank(lock) > mode_rank(best[1]):
            strongest[stats.table] = (table, lock, statement, line)
    out: list[RiskFinding] = []
    for table, (_, lock, statement, line) in strongest.items():
        stats = live.find(table)
        waiting = contention(stats, lock)
        if not waiting:
            continue
        level, outage = weigh("lock-contention", lock, "instant", stats, lock_timeout=lock_timeout)
        who = ", ".join(
            f"pid {s.pid} ({s.application_name or '?'}, {s.mode}"
            f"{'' if s.granted else ' waiting'}, transaction open {s.transaction_seconds:.0f} s)"
            for s in waiting[:3]
        )
        out.append(
            RiskFinding(
                revision=revision,
                rule="lock-contention",
                level=level,
                table=table,
                lock=lock,
                message=f"{MEASURED_RULES['lock-contention']} Now: {who}.",
                safe="Deploy when those transactions have ended (or end them), and keep a short "
                "lock_timeout with retries (the lock-timeout-ladder input)",
                statement=statement,
                path=path,
                line=line,
                source="live",
                outage=outage,
            )
        )
    return out
