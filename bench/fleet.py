"""The fleet suite: `db-deploy fleet` over 50 targets on the embedded server with the reference
schema (migrations/): 48 healthy databases, one whose first revision breaks (its table already
exists) and one unreachable (a socket folder that does not exist). Wall time with max-parallel
1, 2 and 4 (fresh databases each time), a re-run (every healthy target a no-op), and peak
memory: the largest single process and the whole process tree at its peak (sampled /proc)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import proc
from bench.server import Server

TARGETS = 50
PARALLEL = (1, 2, 4)
BROKEN_SQL = "CREATE TABLE connectors (id int)"  # the reference schema's first table


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and every descendant, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        todo += [p for p, parent in parents.items() if parent == pid]
    return total


def _run(server: Server, work: Path, names: list[str], parallel: int) -> dict[str, Any]:
    env = proc.deployer_env(
        **{
            "INPUT_FLEET-FILE": "fleet.yml",
            "INPUT_MAX-PARALLEL": str(parallel),
            "INPUT_REPORT-FILE": "db-deploy-report.json",  # outside GitHub: only when asked
        }
    )
    peak = 0
    done = threading.Event()
    started = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "deployer", "fleet"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(p.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    report = json.loads((work / "db-deploy-report.json").read_text())
    fleet = report["extra"]["fleet"]
    statuses: dict[str, int] = {}
    for t in fleet["targets"]:
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    target_seconds = sorted(t["seconds"] for t in fleet["targets"] if t["status"] != "failed")
    return {
        "max_parallel": parallel,
        "seconds": round(seconds, 2),
        "exit_code": os.waitstatus_to_exitcode(status),
        "status": report["status"],
        "statuses": statuses,
        "failed": sorted(t["name"] for t in fleet["targets"] if t["status"] == "failed"),
        "median_target_s": target_seconds[len(target_seconds) // 2] if target_seconds else 0,
        "peak_process_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_mb": round(peak / 2**20, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def _fresh(server: Server, names: list[str]) -> None:
    with server.admin() as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    import psycopg

    with psycopg.connect(server.url(names[1]), autocommit=True) as conn:
        conn.execute(BROKEN_SQL)


def run_suite(
    server: Server, work: Path, say: Callable[[str], None], targets: int = TARGETS
) -> dict[str, Any]:
    folder = work / "fleet"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(proc.REPO / "migrations", folder / "migrations")
    names = [f"fleet_{i:03d}" for i in range(targets - 1)]
    lines = [
        "defaults:",
        f"  database-url: postgresql://postgres@/{{name}}?host={server.host}",
        "  migrations-path: migrations",
        "targets:",
        f"  - {{name: {names[0]}, wave: 0}}",
        *(f"  - {{name: {n}, wave: 1}}" for n in names[1:]),
        "  - name: unreachable",
        "    wave: 1",
        "    database-url: postgresql://postgres@/x?host=/nonexistent-socket-dir",
        "    connect-retries: 1",
    ]
    (folder / "fleet.yml").write_text("\n".join(lines) + "\n")
    runs = []
    for parallel in PARALLEL:
        _fresh(server, names)
        say(f"fleet of {targets}, max-parallel {parallel} …")
        runs.append(_run(server, folder, names, parallel))
    say("fleet re-run (no-ops), max-parallel 4 …")
    rerun = _run(server, folder, names, 4)
    with server.admin() as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "targets": targets,
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
        "rerun": rerun,
    }


def table(results: dict[str, Any]) -> list[str]:
    f = results.get("fleet")
    if not f:
        return []
    base = f["runs"][0]["seconds"]
    out = [
        "",
        f"Fleet: {f['targets']} targets (reference schema; 1 broken, 1 unreachable), "
        f"{f['cpus']} CPUs",
        "",
        "| max-parallel | wall s | speed-up | deploy s inside a child (median) | peak process MB | "
        "peak tree MB | CPU s | outcome |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [*f["runs"], {**f["rerun"], "max_parallel": f"{f['rerun']['max_parallel']} (re-run)"}]:
        outcome = ", ".join(f"{v} {k}" for k, v in sorted(r["statuses"].items()))
        out.append(
            f"| {r['max_parallel']} | {r['seconds']:.1f} | {base / r['seconds']:.2f}× | "
            f"{r['median_target_s']:.2f} | {r['peak_process_mb']:.0f} | {r['peak_tree_mb']:.0f} | "
            f"{r['cpu_s']:.0f} | {outcome} |"
        )
    return out
