"""`python -m bench [--quick] [--sizes 50,200,500] [--repeat N] …`: see bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import deploy, latency, masking, proc, profile, proposals, report, smoke, startup
from bench.server import embedded

SUITES = (
    "startup", "deploy", "network", "smoke", "profile", "fleet", "masking", "risk", "traffic",
)  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
DIFF = RESULTS.with_name("proposals.diff")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of db-deploy against bare Alembic and psql -f, on an embedded "
        "PostgreSQL. Prints a table of figures; see bench/README.md.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 rounds")
    p.add_argument("--sizes", help="chain sizes (default 50,200,500; quick 10,40)")
    p.add_argument(
        "--repeat",
        type=int,
        help="rounds per size (default 5; quick 2), rounded up to a multiple of the commands "
        "in a round (3: db-deploy, alembic, psql; 4 with --candidate)",
    )
    p.add_argument(
        "--smoke-rows",
        type=int,
        help="rows in the loaded smoke database (default 6000000; quick 1000000)",
    )
    p.add_argument("--smoke-repeat", type=int, help="smoke rounds (default 5; quick 2)")
    p.add_argument("--startup-repeat", type=int, help="start-up rounds (default 10; quick 3)")
    p.add_argument("--profile-size", type=int, help="chain size profiled (default 200; quick 40)")
    p.add_argument(
        "--masking-chunks",
        type=int,
        help="masking suite: writes of 100 characters (default 1000000; quick 100000)",
    )
    p.add_argument("--masking-repeat", type=int, help="masking rounds (default 5; quick 2)")
    p.add_argument("--risk-repeat", type=int, help="risk review rounds (default 5; quick 2)")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=2.0,
        help="network suite: round-trip time added by the delaying proxy (default 2 ms)",
    )
    p.add_argument(
        "--latency-size", type=int, help="network suite: chain size (default 200; quick 40)"
    )
    p.add_argument(
        "--latency-repeat",
        type=int,
        help="network suite: rounds (default 3; quick 1), rounded up to a multiple of the "
        f"commands in a round ({len(deploy.FULL)})",
    )
    p.add_argument("--traffic-clients", type=int, default=8, help="traffic: clients (8)")
    p.add_argument("--traffic-rate", type=float, default=25.0, help="traffic: tps per client (25)")
    p.add_argument(
        "--traffic-blocker", type=float, help="traffic: seconds the blocker holds (20; quick 6)"
    )
    p.add_argument(
        "--traffic-rows", type=int, help="traffic: rows of the hot table (200000; quick 50000)"
    )
    p.add_argument("--traffic-repeat", type=int, help="traffic: rounds (3; quick 1)")
    p.add_argument(
        "--traffic-cases", help="traffic: among column,index,fk (default all; quick column)"
    )
    p.add_argument("--traffic-tools", help="traffic: deploys among alembic,old,new (default all)")
    p.add_argument("--only", help=f"comma-separated suites among {','.join(SUITES)} (default all)")
    p.add_argument("--skip", default="", help="comma-separated suites to leave out")
    p.add_argument(
        "--data-dir",
        help="keep the cluster here (reuses the loaded smoke database "
        "next time); default: a temporary folder under /tmp, deleted at exit",
    )
    p.add_argument(
        "--json",
        help="write the results here (default bench/results/latest.json for full runs, "
        "bench/results/traffic.json for `--only traffic`, nowhere for --quick)",
    )
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="regenerate the results and profile sections of bench/README.md",
    )
    p.add_argument("--from-json", help="no measuring: print (and --write-readme) from this file")
    p.add_argument(
        "--candidate",
        help="also measure `python -m deployer` from this folder (holding a patched copy of "
        "the deployer package), interleaved with the installed one; `proposals` builds it from "
        "bench/proposals.py",
    )
    p.add_argument(
        "--warm-revisions",
        action="store_true",
        help="byte-compile the chains' revision files before timing (a developer re-running "
        "locally); default: compiled on every run, as in the image on a fresh CI checkout",
    )
    p.add_argument(
        "--deployer-ref",
        help="measure deployer/ as committed at this git ref (e.g. HEAD) instead of the working "
        "tree as it is at start",
    )
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (logs, chains)")
    a = p.parse_args(argv)
    q = a.quick
    a.sizes = [int(s) for s in (a.sizes or ("10,40" if q else "50,200,500")).split(",") if s]
    # Every tool takes every place in a round equally often: where a command runs in its round
    # moved its time by 10-30 % here (in a direction that changed with the method), so the
    # rounds are rounded up to a multiple of the commands in one.
    per_round = len(deploy.FULL) + (1 if a.candidate else 0)
    a.repeat = -(-(a.repeat or (2 if q else 5)) // per_round) * per_round
    a.smoke_rows = a.smoke_rows if a.smoke_rows is not None else (1_000_000 if q else 6_000_000)
    a.smoke_repeat = a.smoke_repeat or (2 if q else 5)
    a.startup_repeat = a.startup_repeat or (3 if q else 10)
    a.profile_size = a.profile_size or (40 if q else 200)
    a.masking_chunks = a.masking_chunks or (100_000 if q else 1_000_000)
    a.masking_repeat = a.masking_repeat or (2 if q else 5)
    a.risk_repeat = a.risk_repeat or (2 if q else 5)
    a.latency_size = a.latency_size or (40 if q else 200)
    a.latency_repeat = -(-(a.latency_repeat or (1 if q else 3)) // len(deploy.FULL)) * len(
        deploy.FULL
    )
    a.traffic_blocker = a.traffic_blocker or (6.0 if q else 20.0)
    a.traffic_rows = a.traffic_rows or (50_000 if q else 200_000)
    a.traffic_repeat = a.traffic_repeat or (1 if q else 3)
    a.traffic_cases = a.traffic_cases or ("column" if q else None)
    chosen = [s for s in (a.only or ",".join(SUITES)).split(",") if s]
    skip = set(a.skip.split(",")) - {""}
    bad = [s for s in [*chosen, *skip] if s not in SUITES]
    if bad:
        p.error(f"unknown suite(s) {', '.join(bad)}: choose among {', '.join(SUITES)}")
    a.suites = [s for s in SUITES if s in chosen and s not in skip]
    return a


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"{platform.machine()} Linux, {cpus} cores, {mem:.0f} GiB, load {load:.1f} at start"


def deployer_state(measured: Path, ref: str | None) -> str:
    """The commit, and a digest of the deployer/ measured (others edit the tree concurrently)."""
    import hashlib
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "--short", ref or "HEAD"],
        cwd=proc.REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    digest = hashlib.sha256()
    for f in sorted(measured.rglob("*.py")):
        digest.update(f.read_bytes())
    tree = f"deployer/ at {ref}" if ref else "deployer/ of the working tree"
    return f"commit {head or '?'}, {tree}, sha256 {digest.hexdigest()[:12]}"


def traffic_params(a: argparse.Namespace) -> Any:
    from bench import traffic

    def pick(given: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
        chosen = tuple(x for x in (given or ",".join(known)).split(",") if x)
        bad = [x for x in chosen if x not in known]
        if bad:
            raise SystemExit(f"--traffic-{what}: unknown {', '.join(bad)} (among {known})")
        return chosen

    return traffic.Params(
        clients=a.traffic_clients,
        rate=a.traffic_rate,
        blocker_s=a.traffic_blocker,
        rows=a.traffic_rows,
        repeat=a.traffic_repeat,
        cases=pick(a.traffic_cases, tuple(traffic.CASES), "cases"),
        tools=pick(a.traffic_tools, traffic.TOOLS, "tools"),
    )


def measure(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-work-"))
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "python": platform.python_version(),
            "quick": a.quick,
            "sizes": a.sizes,
            "repeat": a.repeat,
            "smoke_rows": a.smoke_rows,
            "suites": a.suites,
            "revision_bytecode": "warm" if a.warm_revisions else "cold (as in CI)",
        }
    }
    # db-deploy runs from a byte-compiled snapshot of deployer/ taken now (see proc.snapshot).
    source = (
        proc.export(a.deployer_ref, work / "export") if a.deployer_ref else proc.REPO / "deployer"
    )
    proc.BASELINE = proc.snapshot(source, work / "baseline")
    results["meta"]["deployer"] = deployer_state(proc.BASELINE / "deployer", a.deployer_ref)
    deploy.WARM_REVISIONS = a.warm_revisions
    candidate = Path(a.candidate).resolve() if a.candidate else None
    if a.candidate == "proposals":
        candidate, problems, diff = proposals.build(work / "candidate")
        for problem in problems:
            say(f"proposal not applied: {problem}")
        results["meta"]["proposals_not_applied"] = problems
        DIFF.parent.mkdir(parents=True, exist_ok=True)
        DIFF.write_text(diff)
        say(f"candidate: deployer with the proposals applied (diff in {DIFF})")
    if candidate and not (candidate / "deployer" / "__init__.py").is_file():
        raise SystemExit(f"--candidate {candidate}: no deployer package there")
    if candidate:
        candidate = proc.snapshot(candidate / "deployer", work / "candidate-compiled")
    results["meta"]["candidate"] = str(candidate) if candidate else None
    started = time.perf_counter()
    try:
        with embedded(a.data_dir) as server:
            results["meta"]["server_version"] = server.server_version()
            say(f"embedded PostgreSQL {results['meta']['server_version']} at {server.host}")
            if "startup" in a.suites:
                say("start-up …")
                results["startup"] = startup.run_suite(work, a.startup_repeat, say)
            if "deploy" in a.suites:
                say("deploys …")
                results["deploy"] = deploy.run_suite(
                    server, work, a.sizes, a.repeat, say, candidate
                )
            if "network" in a.suites:
                say(f"deploys {a.latency_ms:g} ms away …")
                results["network"] = latency.run_suite(
                    server, work, a.latency_size, a.latency_ms, a.latency_repeat, say
                )
            if "smoke" in a.suites:
                say("smoke …")
                results["smoke"] = smoke.run_suite(
                    server, work, a.smoke_rows, a.smoke_repeat, say, candidate
                )
            if "profile" in a.suites:
                say("profile …")
                results["profile"] = profile.run_suite(server, work, a.profile_size, say, candidate)
            if "masking" in a.suites:
                say("masking …")
                results["masking"] = masking.run_suite(a.masking_chunks, a.masking_repeat, say)
            if "fleet" in a.suites:
                from bench import fleet as fleet_suite

                say("fleet …")
                results["fleet"] = fleet_suite.run_suite(
                    server, work, say, targets=10 if a.quick else fleet_suite.TARGETS
                )
            if "risk" in a.suites:
                from bench import risk as risk_suite

                say("risk review …")
                results["risk"] = risk_suite.run_suite(server, work, a.risk_repeat, say)
            if "traffic" in a.suites:
                from bench import traffic

                say("traffic …")
                results["traffic"] = traffic.run_suite(server, work, traffic_params(a), say)
    finally:
        if a.keep_work:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
    else:
        results = measure(a)
        default = RESULTS.with_name("traffic.json") if a.suites == ["traffic"] else RESULTS
        target = Path(a.json) if a.json else (None if a.quick else default)
        if target:
            report.write_json(results, target)
            say(f"results written to {target}")
    print("\n".join([report.table(results), *masking.table(results)]))
    from bench import fleet as fleet_suite

    for line in fleet_suite.table(results):
        print(line)
    from bench import risk as risk_suite

    for line in risk_suite.table(results):
        print(line)
    from bench import traffic

    for line in traffic.table(results):
        print(line)
    print("\nGoals:")
    for line in [*report.goals(results), *masking.goals(results), *traffic.goals(results)]:
        print(f"- {line}")
    if results.get("profile"):
        print()
        print(report.profile_markdown(results["profile"]))
    if a.write_readme:
        report.write_readme(results)
        say(f"updated {report.README}")
    return 0
