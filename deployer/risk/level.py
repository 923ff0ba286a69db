"""A finding's level: the lock it takes and what it does under it (measured on the scratch
database where it was rehearsed), weighed against the live table's size and the sessions on it.

The estimate is deliberately simple and stated with its assumptions: a rewrite or an index build
goes at about 50 MB/s, a validating scan at about 200 MB/s (a busy server with indexes to
rebuild goes slower). While it runs, an ACCESS EXCLUSIVE lock blocks reads and writes, a SHARE
(ROW EXCLUSIVE) or EXCLUSIVE lock blocks writes. A session holding a conflicting lock makes the
statement wait, and every query on the table queues behind the waiting statement, up to the
deploy's lock_timeout.

Levels: blocking reads and writes under 1 s is low, under 10 s medium, longer high; blocking
writes under 5 s low, under 60 s medium, longer high; weaker locks low. Contention raises a
blocking statement to at least medium, and to high for ACCESS EXCLUSIVE behind a transaction
open for a minute or more. Breaking the running application (drop/rename) is medium on a table
with rows. A CONCURRENTLY inside a transaction fails the deploy: high.
"""

from __future__ import annotations

from deployer.results.risk import SessionInfo, TableStats

REWRITE_BPS = 50e6
BUILD_BPS = 50e6
SCAN_BPS = 200e6

# Conflicting modes (PostgreSQL docs, "Conflicting Lock Modes").
_CONFLICTS: dict[str, set[str]] = {
    "AccessShareLock": {"AccessExclusiveLock"},
    "RowShareLock": {"ExclusiveLock", "AccessExclusiveLock"},
    "RowExclusiveLock": {
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareUpdateExclusiveLock": {
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareLock": {
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ShareRowExclusiveLock": {
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
    "ExclusiveLock": {
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    },
}
_CONFLICTS["AccessExclusiveLock"] = set(_CONFLICTS) | {"AccessExclusiveLock"}

WRITE_BLOCKING = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock"}


def conflicts(a: str, b: str) -> bool:
    return b in _CONFLICTS.get(a, set())


def blocks(lock: str) -> str:
    if lock == "AccessExclusiveLock":
        return "reads and writes"
    if lock in WRITE_BLOCKING:
        return "writes"
    return ""


def contention(stats: TableStats, lock: str) -> list[SessionInfo]:
    """Sessions on the live table the statement would wait for: those holding a conflicting
    lock, and those already waiting (the statement queues behind them), oldest first."""
    found = [s for s in stats.sessions if (s.granted and conflicts(lock, s.mode)) or not s.granted]
    return sorted(found, key=lambda s: -s.transaction_seconds)


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def weigh(
    rule: str,
    lock: str,
    effect: str,
    stats: TableStats,
    *,
    lock_timeout: float | None,
    compat: bool = False,
) -> tuple[str, str]:
    """(level, estimated outage in words) of one finding. `effect`: rewrite, build, scan,
    instant, or none (measured: the statement neither rewrote nor scanned the table)."""
    if rule == "concurrently-in-transaction":
        return (
            "high",
            "the revision fails (CONCURRENTLY cannot run in a transaction): the deploy stops",
        )
    if not stats.exists:
        return "low", "none: the table is not in the live database (new in this plan)"
    if rule == "not-null-without-default":
        if stats.rows > 0 or stats.bytes > 8192:
            return "high", f"the revision fails: {stats.table} has rows (~{max(stats.rows, 1):,})"
        return "low", f"none while {stats.table} is empty (it is now)"
    blocked = blocks(lock)
    rate = {"rewrite": REWRITE_BPS, "build": BUILD_BPS, "scan": SCAN_BPS}.get(effect)
    duration = stats.bytes / rate if rate else 0.0
    size = fmt_bytes(stats.bytes)
    verb = {"rewrite": "rewritten", "build": "read to build the index", "scan": "scanned"}
    if compat:
        level = "medium" if stats.rows > 0 or stats.bytes > 8192 else "low"
        outage = (
            "queries of the application version still running that use it fail until it is "
            "redeployed"
        )
    elif rule == "missing-lock-timeout":
        level, outage = "medium", "unbounded if a long transaction holds the table"
    elif not blocked:
        level, outage = "low", "none: the lock blocks neither reads nor writes"
    else:
        if lock == "AccessExclusiveLock":
            level = "low" if duration < 1 else "medium" if duration < 10 else "high"
        else:
            level = "low" if duration < 5 else "medium" if duration < 60 else "high"
        if rate:
            about = "under 1 s" if duration < 1 else f"about {fmt_seconds(duration)}"
            outage = (
                f"{about} of blocked {blocked} on {stats.table} "
                f"({size} {verb[effect]} at ~{rate / 1e6:.0f} MB/s)"
            )
        else:
            outage = f"{blocked} on {stats.table} blocked only while the lock is taken"
    waiting = contention(stats, lock) if blocked or rule == "missing-lock-timeout" else []
    if waiting:
        first = waiting[0]
        limit = f"up to lock_timeout {lock_timeout:g} s" if lock_timeout else "with no limit"
        outage += (
            f"; first it waits behind pid {first.pid} ({first.mode or 'open transaction'}, "
            f"transaction open {fmt_seconds(first.transaction_seconds)}) {limit}, and every "
            f"query on {stats.table} queues behind it"
        )
        if level == "low":
            level = "medium"
        if (lock == "AccessExclusiveLock" and first.transaction_seconds >= 60) or (
            rule == "missing-lock-timeout"
        ):
            level = "high"
    if stats.autovacuum and blocked:
        outage += f"; a vacuum is running on it ({stats.autovacuum})"
    return level, outage
