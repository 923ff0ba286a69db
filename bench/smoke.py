"""Smoke on 50 tables holding many rows, against the same schema empty and a naive count.

The loaded database is built once per invocation (or kept in `--data-dir` between
invocations): 50 narrow tables (bigint key, int, timestamptz), ten of 1,000 rows (counted
exactly by db-deploy) and forty sharing the rest (estimated from the catalog), filled with
`INSERT … SELECT generate_series`, then VACUUM ANALYZE. Each round runs, in rotated order,
`db-deploy smoke` on the loaded and on the empty database and the naive exact count on the
loaded one. Compared: the whole command's wall time and the smoke step's own time (from the
JSON report).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.proc import REPO, VENV_BIN, child_env, deployer_env, run
from bench.server import Server
from bench.stats import ratios, rotate, summary

TABLES = 50
SMALL_TABLES = 10
SMALL_ROWS = 1_000
TOOLS = ("smoke_full", "smoke_empty", "naive_full")


def layout(total_rows: int) -> list[int]:
    """Rows per table: ten small ones, the rest shared by the other forty."""
    big = TABLES - SMALL_TABLES
    rest = max(0, total_rows - SMALL_TABLES * SMALL_ROWS)
    sizes = [SMALL_ROWS] * SMALL_TABLES + [rest // big] * big
    sizes[-1] += rest - (rest // big) * big
    return sizes


def _create(conn: psycopg.Connection, sizes: list[int], *, fill: bool, progress: Any) -> None:
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '256MB'")
    for i, n in enumerate(sizes):
        t = f"s{i:02d}"
        conn.execute(
            f"CREATE TABLE {t} (id bigint PRIMARY KEY, tenant_id int NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
        if fill and n:
            conn.execute(
                f"INSERT INTO {t} (id, tenant_id, created_at) SELECT g, g % 97, "
                f"'2026-01-01'::timestamptz + g * interval '1 second' "
                f"FROM generate_series(1, {n}) g"
            )
        if fill and i % 10 == 9:
            progress(f"  loading: {i + 1}/{len(sizes)} tables")
    conn.execute("VACUUM ANALYZE")


def ensure_databases(server: Server, total_rows: int, progress: Any) -> dict[str, str]:
    """The loaded and the empty database, reused when a kept cluster already has them."""
    sizes = layout(total_rows)
    names = {"full": f"smoke_full_{total_rows}", "empty": "smoke_empty"}
    for kind, name in names.items():
        marker = f"bench smoke {kind} {sizes}"
        if server.database_exists(name):
            with server.admin() as conn:
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = %s",
                    (name,),
                ).fetchone()
            if row and row[0] == marker:
                progress(f"  reusing {name}")
                continue
            server.drop_database(name)
        with server.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        progress(f"  creating {name} ({sum(sizes) if kind == 'full' else 0:,} rows)")
        started = time.perf_counter()
        with psycopg.connect(server.url(name), autocommit=True) as conn:
            _create(conn, sizes, fill=(kind == "full"), progress=progress)
        progress(f"  {name} ready in {time.perf_counter() - started:.0f}s")
        with server.admin() as conn:
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{marker}'")
    return names


def _smoke(
    server: Server, work: Path, db: str, tag: str, candidate: Path | None = None
) -> tuple[float, float | None, int]:
    report = work / f"smoke-{tag}.json"
    report.unlink(missing_ok=True)
    head = (
        [str(VENV_BIN / "python"), "-m", "deployer"] if candidate else [str(VENV_BIN / "db-deploy")]
    )
    m = run(
        [
            *head,
            "smoke",
            "--database-url",
            server.url(db),
            "--report-file",
            str(report),
        ],
        env=deployer_env(PYTHONPATH=str(candidate)) if candidate else deployer_env(),
        cwd=work,
        log=work / f"smoke-{tag}.log",
    ).check(f"db-deploy smoke ({tag})")
    step = None
    if report.is_file():
        data = json.loads(report.read_text())
        step = (data.get("steps") or {}).get("smoke")
        if step is None:
            step = (data.get("smoke") or {}).get("seconds")
    return m.seconds, step, m.maxrss_kb


def _naive(server: Server, work: Path, db: str) -> tuple[float, float, int, int]:
    m = run(
        [str(VENV_BIN / "python"), "-m", "bench.naive_count", server.url(db)],
        env=child_env(PYTHONPATH=str(REPO)),
        cwd=work,
        log=work / "naive.log",
    ).check("naive count")
    data = json.loads(m.output.strip().splitlines()[-1])
    return m.seconds, float(data["seconds"]), int(data["rows"]), m.maxrss_kb


def run_suite(
    server: Server,
    work: Path,
    total_rows: int,
    repeat: int,
    progress: Any,
    candidate: Path | None = None,
) -> dict[str, Any]:
    dbs = ensure_databases(server, total_rows, progress)
    tools = [*TOOLS, "candidate_full", "candidate_empty"] if candidate else list(TOOLS)
    rounds = []
    for k in range(repeat):
        r: dict[str, Any] = {"order": rotate(tools, k), "rss_kb": {}}
        for tool in r["order"]:
            if tool == "naive_full":
                r[tool], r["naive_full_query"], r["rows"], r["rss_kb"][tool] = _naive(
                    server, work, dbs["full"]
                )
                continue
            kind = "full" if tool.endswith("full") else "empty"
            cand = candidate if tool.startswith("candidate") else None
            r[tool], r[f"{tool}_step"], r["rss_kb"][tool] = _smoke(
                server, work, dbs[kind], tool, cand
            )
        rounds.append(r)
        progress(
            f"  smoke round {k + 1}/{repeat}: "
            + ", ".join(f"{t} {r[t]:.2f}s" for t in tools)
            + " (steps "
            + ", ".join(f"{t} {r[t + '_step']}" for t in tools if t != "naive_full")
            + f"; naive queries {r['naive_full_query']:.3f}s)"
        )
    keys = [*tools, *(f"{t}_step" for t in tools if t != "naive_full"), "naive_full_query"]
    pairs = {
        "full/empty (command)": ("smoke_full", "smoke_empty"),
        "full/empty (step)": ("smoke_full_step", "smoke_empty_step"),
        "naive/smoke (command)": ("naive_full", "smoke_full"),
        "naive/smoke (queries vs step)": ("naive_full_query", "smoke_full_step"),
    }
    if candidate:
        pairs |= {
            "candidate full/empty (command)": ("candidate_full", "candidate_empty"),
            "candidate full/empty (step)": ("candidate_full_step", "candidate_empty_step"),
            "candidate/current full (step)": ("candidate_full_step", "smoke_full_step"),
        }
    return {
        "tables": TABLES,
        "rows": total_rows,
        "layout": layout(total_rows),
        "rounds": rounds,
        "seconds": {key: summary([r[key] for r in rounds]) for key in keys},
        "ratios": {name: ratios(rounds, a, b) for name, (a, b) in pairs.items()},
    }


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(layout(int(sys.argv[1]) if len(sys.argv) > 1 else 6_000_000))
