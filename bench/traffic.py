"""Traffic: what a deploy does to the queries of the database it changes (issue 19, points 1, 3).

On the embedded server, a hot table `hot` (ROWS rows, bigint key, a reference to `ref`, a
balance, a note) takes a steady paced load: `pgbench` from the server's own bin/ folder, N
clients (default 8), each at a fixed rate (`-R`, Poisson arrivals), 80 % point reads and 20 %
point updates on random keys, every transaction logged (`-l`: its end time and its latency,
counted from its *scheduled* start, so a query queued behind a lock and the ones scheduled
behind it count the whole wait: no coordinated omission). No `--latency-limit`: with `-R` it
skips the transactions already late instead of running them, which would hide the stall.

One run: the load starts; WARM_S later a blocker session opens a transaction, reads the hot
table (ACCESS SHARE) and holds it B seconds (default 20); LEAD_S after it took its lock, the
deploy of one revision that alters the hot table starts (`column`: add a NOT NULL column with
a constant default, which needs ACCESS EXCLUSIVE only briefly; `index`: CREATE INDEX, SHARE for
the build; `fk`: a validated foreign key to `ref`, SHARE ROW EXCLUSIVE on both for the scan).
The load runs until TAIL_S after the blocker ends. The deploy window is from the deploy
process's start to its exit; the application's latency in it is taken over every transaction
that overlapped it. A control run (`none`: the same load and blocker, no deploy) is measured in
every round; each deploy's throughput is compared with the control's over the same offsets
from the blocker's start.

The deploys, rotated within each round (each takes every place once in 3 rounds): bare
`alembic upgrade head`; `db-deploy deploy` as before the ladder (`--lock-timeout-ladder 10s
--lock-wait-budget 10s`: one 10 s attempt, the old `lock-timeout` default); `db-deploy deploy`
with its defaults. Every run starts on a fresh copy (CREATE DATABASE … TEMPLATE) of one
database at the base revision, deployed by db-deploy (its history table in place), loaded and
ANALYZEd once, after an untimed CHECKPOINT.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg

from bench import chain
from bench.deploy import alembic_cmd, deploy_cmd
from bench.proc import child_env, deployer_env, portable, run
from bench.server import Server
from bench.stats import fmt_x, rotate, summary

START, END = "<!-- traffic:start -->", "<!-- traffic:end -->"

TOOLS = ("alembic", "old", "new")
CONTROL = "none"
LABELS = {
    "alembic": "bare `alembic upgrade head`",
    "old": "db-deploy, old defaults (one 10 s attempt)",
    "new": "db-deploy, defaults (lock ladder)",
    CONTROL: "no deploy (control)",
}
OLD_FLAGS = ("--lock-timeout-ladder", "10s", "--lock-wait-budget", "10s")

#: case -> (what, the revision's upgrade body)
CASES: dict[str, tuple[str, str]] = {
    "column": (
        "add a NOT NULL column with a constant default",
        'op.add_column("hot", sa.Column("flag", sa.Boolean(), nullable=False, '
        "server_default=sa.false()))",
    ),
    "index": ("add an index", 'op.create_index("ix_hot_balance", "hot", ["balance"])'),
    "fk": (
        "add a foreign key (validated)",
        'op.create_foreign_key("fk_hot_ref", "hot", "ref", ["ref_id"], ["id"])',
    ),
}

BASE = """\
op.create_table(
    "ref",
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
)
op.create_table(
    "hot",
    sa.Column("id", sa.BigInteger(), primary_key=True),
    sa.Column("ref_id", sa.Integer(), nullable=False),
    sa.Column("balance", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("note", sa.Text()),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)"""

REF_ROWS = 1000
READ_PERCENT = 80
WARM_S = 2.0  # load before the blocker
LEAD_S = 1.0  # blocker's lock held before the deploy starts
TAIL_S = 8.0  # load after the blocker ends
APP = "bench-blocker"
#: A deploy run's figures summarised over the rounds.
FIGURES = (
    "p50_s",
    "p99_s",
    "max_s",
    "max_read_s",
    "max_write_s",
    "longest_gap_s",
    "throughput_vs_control",
    "window_s",
    "finished_after_blocker_released_s",
)


@dataclass
class Params:
    clients: int = 8
    rate: float = 25.0  # transactions per second per client
    blocker_s: float = 20.0
    rows: int = 200_000
    repeat: int = 3
    cases: Sequence[str] = tuple(CASES)
    tools: Sequence[str] = TOOLS

    @property
    def load_s(self) -> float:
        return WARM_S + self.blocker_s + TAIL_S


def _revision(rev: str, down: str | None, what: str, body: str) -> str:
    upgrade = "\n".join(f"    {line}" for line in body.splitlines())
    return (
        f'"""{what}\n\nRevision ID: {rev}\nRevises: {down or ""}\n"""\n\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f'revision = "{rev}"\n'
        f"down_revision = {down!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade() -> None:\n{upgrade}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def write_projects(folder: Path, cases: Sequence[str]) -> dict[str, Path]:
    """`base`: the hot tables only; one project per case: the base and the case's revision.
    env.py is the chain's, handing db-deploy's connection to Alembic (the cookbook pattern)."""
    out: dict[str, Path] = {}
    for name in ("base", *cases):
        project = folder / f"project-{name}"
        (project / "versions").mkdir(parents=True, exist_ok=True)
        (project / "alembic.ini").write_text(chain.ALEMBIC_INI.format(location=project.resolve()))
        (project / "env.py").write_text(chain.ENV_PY.format(shared=True))
        (project / "script.py.mako").write_text('"""${message}"""\n')
        (project / "versions" / "t0001_base.py").write_text(
            _revision("t0001", None, "the hot table", BASE)
        )
        if name != "base":
            what, body = CASES[name]
            (project / "versions" / f"t0002_{name}.py").write_text(
                _revision("t0002", "t0001", what, body)
            )
        out[name] = project
    return out


def _template(server: Server, folder: Path, project: Path, rows: int) -> str:
    """A database at the base revision, deployed by db-deploy, loaded and ANALYZEd."""
    db = server.create_database("traffic_tpl")
    url = server.url(db)
    run(
        deploy_cmd(project, url), env=deployer_env(), cwd=folder, log=folder / "base-deploy.log"
    ).check("base deploy of the traffic template")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ref (id, name) SELECT g, 'ref ' || g "
            f"FROM generate_series(1, {REF_ROWS}) g"
        )
        conn.execute(
            "INSERT INTO hot (id, ref_id, balance, note, updated_at) "
            f"SELECT g, 1 + g % {REF_ROWS}, 0, repeat('x', 40), now() "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("VACUUM ANALYZE")
    return db


def _scripts(folder: Path, rows: int) -> list[str]:
    read, write = folder / "read.sql", folder / "write.sql"
    read.write_text(f"\\set id random(1, {rows})\nSELECT balance, note FROM hot WHERE id = :id;\n")
    write.write_text(
        f"\\set id random(1, {rows})\n"
        "UPDATE hot SET balance = balance + 1, updated_at = now() WHERE id = :id;\n"
    )
    return ["-f", f"{read}@{READ_PERCENT}", "-f", f"{write}@{100 - READ_PERCENT}"]


@dataclass
class Txn:
    script: int  # 0 read, 1 write
    end: float  # epoch seconds
    latency: float | None  # seconds from its scheduled start; None: failed

    @property
    def start(self) -> float:
        return self.end - (self.latency or 0.0)


def parse_logs(folder: Path, prefix: str) -> list[Txn]:
    """pgbench's per-transaction logs (one file per thread): `client txn time script epoch us
    [lag]`, time in microseconds or `failed`/`skipped`."""
    out: list[Txn] = []
    for path in sorted(folder.glob(f"{prefix}.*")):
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) < 6 or f[2] == "skipped":
                continue
            end = int(f[4]) + int(f[5]) / 1e6
            latency = None if f[2] == "failed" else int(f[2]) / 1e6
            out.append(Txn(int(f[3]), end, latency))
    return out


class Blocker(threading.Thread):
    """A session that reads the hot table in a transaction and holds it `hold` seconds."""

    def __init__(self, url: str, hold: float) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, application_name=APP)
        self.hold = hold
        self.acquired = threading.Event()
        self.at = 0.0
        self.released = 0.0
        self.error = ""

    def run(self) -> None:
        try:
            with self.conn:
                self.conn.execute("SELECT count(*) FROM hot WHERE id <= 100").fetchone()
                self.at = time.time()
                self.acquired.set()
                time.sleep(self.hold)
                self.conn.commit()
                self.released = time.time()
        except Exception as exc:  # noqa: BLE001 - reported with the run
            self.error = f"{type(exc).__name__}: {exc}"
            self.acquired.set()


def _percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def window(txns: list[Txn], lo: float, hi: float) -> dict[str, Any]:
    """The application's figures over [lo, hi]: latency of every transaction that overlapped
    it, errors among those, and completions inside it per second."""
    hit = [t for t in txns if t.start <= hi and t.end >= lo]
    lat = sorted(t.latency for t in hit if t.latency is not None)
    by_kind = {
        kind: max((t.latency for t in hit if t.script == s and t.latency is not None), default=None)
        for s, kind in ((0, "read"), (1, "write"))
    }
    ends = sorted(t.end for t in txns if lo <= t.end <= hi and t.latency is not None)
    done = len(ends)
    marks = [lo, *ends, hi]
    span = max(hi - lo, 1e-9)
    return {
        "transactions": len(hit),
        "p50_s": _percentile(lat, 0.5),
        "p99_s": _percentile(lat, 0.99),
        "max_s": lat[-1] if lat else None,
        "max_read_s": by_kind["read"],
        "max_write_s": by_kind["write"],
        "late_over_0_5s": sum(1 for v in lat if v > 0.5),
        "errors": sum(1 for t in hit if t.latency is None),
        "throughput_tps": done / span,
        # the longest time in the window with no transaction completing: the stall
        "longest_gap_s": max(b - a for a, b in pairwise(marks)),
    }


def _report_facts(path: Path) -> dict[str, Any]:
    """Outcome, error and the lock attempts (where the report lists them) of a db-deploy run."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    attempts: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if "attempt" in k and isinstance(v, list):
                    attempts.extend(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc.get("migrate") or {})
    return {
        "status": doc.get("status"),
        "error": portable(str(doc.get("error") or ""))[:300],
        "lock_attempts": len(attempts),
        "attempts": attempts[:40],
    }


def _command(tool: str, project: Path, url: str, report: Path) -> tuple[list[str], dict[str, str]]:
    if tool == "alembic":
        return alembic_cmd(project, "upgrade", "head"), child_env(DATABASE_URL=url)
    extra = OLD_FLAGS if tool == "old" else ()
    return deploy_cmd(project, url, "--report-file", str(report), *extra), deployer_env()


def one_run(
    server: Server, db: str, project: Path | None, tool: str, p: Params, folder: Path, tag: str
) -> dict[str, Any]:
    """The load, the blocker and (unless `tool` is the control) the deploy, on database `db`."""
    url = server.url(db)
    prefix = f"{tag}-pgbench"
    cmd = [
        str(server.bin_dir / "pgbench"), "-n", "-M", "prepared",
        "-h", server.host, "-U", "postgres",
        "-c", str(p.clients), "-j", str(min(2, p.clients)),
        "-R", f"{p.rate * p.clients:g}", "-T", f"{p.load_s:.0f}",
        "-l", "--log-prefix", prefix, "--failures-detailed",
        *_scripts(folder, p.rows), db,
    ]  # fmt: skip
    blocker = Blocker(url, p.blocker_s)
    out_path = folder / f"{tag}-load.out"
    with out_path.open("wb") as sink:
        load = subprocess.Popen(
            cmd, cwd=folder, stdout=sink, stderr=subprocess.STDOUT, env=child_env()
        )
        load_start = time.time()
        try:
            time.sleep(WARM_S)
            blocker.start()
            if not blocker.acquired.wait(60) or blocker.error:
                raise RuntimeError(
                    f"the blocker did not take its lock: {blocker.error or 'timeout'}"
                )
            time.sleep(LEAD_S)
            got: dict[str, Any] = {"tool": tool, "tag": tag}
            if project is not None:
                report = folder / f"{tag}-report.json"
                dcmd, env = _command(tool, project, url, report)
                started = time.time()
                m = run(dcmd, env=env, cwd=folder, log=folder / f"{tag}-deploy.log")
                finished = time.time()
                got["deploy"] = {
                    "exit_code": m.returncode,
                    "seconds": finished - started,
                    **(_report_facts(report) if tool != "alembic" else {}),
                }
                if m.returncode != 0:
                    tail = m.output.strip().splitlines()[-3:]
                    got["deploy"]["output_tail"] = [portable(line)[:300] for line in tail]
                got["window"] = [started, finished]
            blocker.join(p.blocker_s + 60)
            load.wait(p.load_s + 120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    output = out_path.read_text(errors="replace")
    got["load"] = {
        "start": load_start,
        "exit_code": load.returncode,
        "aborted_clients": output.count("aborted in command"),
        "errors_shown": [portable(x)[:300] for x in output.splitlines() if "ERROR" in x][:5],
    }
    got["blocker"] = {"at": blocker.at, "released": blocker.released, "error": blocker.error}
    got["txns"] = parse_logs(folder, prefix)
    for f in folder.glob(f"{prefix}.*"):
        f.unlink()
    return got


def _copy(server: Server, template: str) -> str:
    name = server.create_database("traffic_x")  # a unique name, then replaced by the copy
    server.drop_database(name)
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    server.execute("postgres", "CHECKPOINT")
    return name


def _measure(run_: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """The figures of one deploy run, and the control's over the same offsets."""
    lo, hi = run_["window"]
    fig = window(run_["txns"], lo, hi)
    blk = run_["blocker"]["at"]
    c_lo, c_hi = control["blocker"]["at"] + (lo - blk), control["blocker"]["at"] + (hi - blk)
    c_end = control["load"]["start"] + 1e9  # the control's load may be shorter: clip below
    if control["txns"]:
        c_end = max(t.end for t in control["txns"])
    c_fig = window(control["txns"], c_lo, min(c_hi, c_end))
    load_end = max((t.end for t in run_["txns"]), default=hi)
    dep = run_["deploy"]
    return {
        **{k: fig[k] for k in fig},
        "window_s": hi - lo,
        "deploy_starts_after_blocker_s": lo - blk,
        "finished_after_blocker_released_s": hi - run_["blocker"]["released"],
        "load_covered_window": load_end >= hi,
        "control": c_fig,
        "throughput_vs_control": (
            fig["throughput_tps"] / c_fig["throughput_tps"] if c_fig["throughput_tps"] else None
        ),
        "deploy": dep,
        "outcome": "success" if dep["exit_code"] == 0 else "failed",
        "app_errors_whole_run": sum(1 for t in run_["txns"] if t.latency is None)
        + run_["load"]["aborted_clients"],
        "load_errors_shown": run_["load"]["errors_shown"],
    }


def _order(k: int, cases: Sequence[str], tools: Sequence[str]) -> list[tuple[str, str]]:
    runs = [(c, t) for i, c in enumerate(cases) for t in rotate(list(tools), k + i)]
    runs.insert((k * len(tools)) % (len(runs) + 1), ("", CONTROL))
    return runs


def run_suite(server: Server, work: Path, p: Params, say: Callable[[str], None]) -> dict[str, Any]:
    folder = work / "traffic"
    folder.mkdir(parents=True, exist_ok=True)
    projects = write_projects(folder, p.cases)
    template = _template(server, folder, projects["base"], p.rows)
    rounds: list[dict[str, Any]] = []
    try:
        for k in range(p.repeat):
            raw: dict[tuple[str, str], dict[str, Any]] = {}
            for case, tool in _order(k, p.cases, p.tools):
                db = _copy(server, template)
                tag = f"r{k + 1}-{case or 'control'}-{tool}"
                try:
                    raw[(case, tool)] = one_run(
                        server, db, projects[case] if case else None, tool, p, folder, tag
                    )
                finally:
                    server.drop_database(db)
                r = raw[(case, tool)]
                if tool != CONTROL:
                    d = r["deploy"]
                    lo, hi = r["window"]
                    w = window(r["txns"], lo, hi)
                    say(
                        f"  traffic round {k + 1}, {case}, {tool}: deploy exit {d['exit_code']} "
                        f"in {d['seconds']:.1f} s; app max {_ms(w['max_s'])}, "
                        f"p99 {_ms(w['p99_s'])}, errors {w['errors']}"
                    )
            control = raw[("", CONTROL)]
            rounds.append(
                {
                    "round": k + 1,
                    "order": [f"{c or 'control'}/{t}" for c, t in _order(k, p.cases, p.tools)],
                    "control_errors": sum(1 for t in control["txns"] if t.latency is None)
                    + control["load"]["aborted_clients"],
                    "runs": {
                        f"{c}/{t}": _measure(r, control)
                        for (c, t), r in raw.items()
                        if t != CONTROL
                    },
                }
            )
    finally:
        server.drop_database(template)
    return summarise(rounds, p)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f} ms"


def summarise(rounds: list[dict[str, Any]], p: Params) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for case in p.cases:
        per: dict[str, Any] = {}
        for tool in p.tools:
            rs = [r["runs"][f"{case}/{tool}"] for r in rounds if f"{case}/{tool}" in r["runs"]]
            per[tool] = {
                **{key: summary([r[key] for r in rs if r[key] is not None]) for key in FIGURES},
                "deploy_s": summary([r["deploy"]["seconds"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "errors_whole_run": sum(r["app_errors_whole_run"] for r in rs),
                "late_over_0_5s": sum(r["late_over_0_5s"] for r in rs),
                "outcomes": {
                    o: sum(1 for r in rs if r["outcome"] == o) for o in ("success", "failed")
                },
                "lock_attempts": [r["deploy"].get("lock_attempts") for r in rs],
                "load_covered_window": all(r["load_covered_window"] for r in rs),
            }
            ctl = [r["control"] for r in rs]
            per[tool]["control"] = {
                k: summary([c[k] for c in ctl if c[k] is not None])
                for k in ("p50_s", "p99_s", "max_s", "longest_gap_s")
            }
        ratios = {}
        for other in ("new", "old"):
            if "alembic" in p.tools and other in p.tools:
                ratios[f"alembic/{other}"] = summary(
                    [
                        r["runs"][f"{case}/alembic"]["max_s"]
                        / r["runs"][f"{case}/{other}"]["max_s"]
                        for r in rounds
                        if r["runs"][f"{case}/alembic"]["max_s"]
                        and r["runs"][f"{case}/{other}"]["max_s"]
                    ]
                )
        cases[case] = {"what": CASES[case][0], "tools": per, "max_latency_ratios": ratios}
    return {
        "params": {
            "clients": p.clients,
            "rate_per_client": p.rate,
            "blocker_s": p.blocker_s,
            "rows": p.rows,
            "read_percent": READ_PERCENT,
            "warm_s": WARM_S,
            "lead_s": LEAD_S,
            "tail_s": TAIL_S,
            "rounds": p.repeat,
            "old_flags": " ".join(OLD_FLAGS),
        },
        "cases": cases,
        "control_errors": sum(r["control_errors"] for r in rounds),
        "rounds": rounds,
    }


def _msv(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _fs(s: dict[str, Any] | None) -> str:
    """`median (min–max)` in milliseconds."""
    if not s or s.get("median") is None:
        return "–"
    if s["n"] == 1:
        return _msv(s["median"])
    return f"{_msv(s['median'])} ({_msv(s['min'])}–{_msv(s['max'])})"


def _med(s: dict[str, Any] | None) -> str:
    return "–" if not s or s.get("median") is None else _msv(s["median"])


def _f1(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "–"
    if s["n"] == 1:
        return f"{s['median']:.1f}"
    return f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"


def _pct(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.0%}" + (f" ({s['min']:.0%}–{s['max']:.0%})" if s["n"] > 1 else "")


def table(results: dict[str, Any]) -> list[str]:
    tr = results.get("traffic")
    if not tr:
        return []
    p = tr["params"]
    lines = [
        "",
        f"**Traffic** ({p['clients']} clients × {p['rate_per_client']:g} tps, "
        f"{p['read_percent']} % reads, hot table of {p['rows']:,} rows; blocker holds ACCESS "
        f"SHARE {p['blocker_s']:g} s, the deploy starts {p['lead_s']:g} s into it; "
        f"{p['rounds']} rotated round(s); latency in ms over the deploy window, median (min–max) "
        "of the rounds)",
    ]
    for case, c in tr["cases"].items():
        lines += [
            "",
            f"*{case}: {c['what']}*",
            "",
            "| deploy | app p50 | app p99 | app max | longest gap | max read / write (median) "
            "| app errors | throughput vs no deploy | deploy outcome | deploy s "
            "| ends after blocker, s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for tool, t in c["tools"].items():
            o = t["outcomes"]
            outcome = ", ".join(f"{n} {k}" for k, n in o.items() if n)
            tries = [n for n in t["lock_attempts"] if n]
            if tries:
                lo, hi = min(tries), max(tries)
                span = f"{lo}" if lo == hi else f"{lo}–{hi}"
                outcome += f" ({span} lock attempt{'s' if hi > 1 else ''})"
            lines.append(
                f"| {LABELS[tool]} | {_fs(t['p50_s'])} | {_fs(t['p99_s'])} | {_fs(t['max_s'])} "
                f"| {_fs(t['longest_gap_s'])} | {_med(t['max_read_s'])} / {_med(t['max_write_s'])} "
                f"| {t['errors']} "
                f"| {_pct(t['throughput_vs_control'])} | {outcome} | {_f1(t['deploy_s'])} "
                f"| {_f1(t['finished_after_blocker_released_s'])} |"
            )
        ctl = c["tools"].get("new", next(iter(c["tools"].values())))["control"]
        lines.append(
            f"| {LABELS[CONTROL]}, same window | {_fs(ctl['p50_s'])} | {_fs(ctl['p99_s'])} "
            f"| {_fs(ctl['max_s'])} | {_fs(ctl['longest_gap_s'])} | | {tr['control_errors']} "
            "| 100% | | | |"
        )
        ratios = c["max_latency_ratios"]
        if ratios:
            lines += [
                "",
                "Worst application latency, bare Alembic / db-deploy (pair by pair): "
                + "; ".join(f"{LABELS[k.split('/')[1]]} {fmt_x(v)}" for k, v in ratios.items())
                + ".",
            ]
    return lines


def goals(results: dict[str, Any]) -> list[str]:
    """Issue 19 point 3, judged on the column case (every round must meet it)."""
    tr = results.get("traffic")
    if not tr or "column" not in tr["cases"]:
        return []
    p, c = tr["params"], tr["cases"]["column"]["tools"]
    out = []
    new = c.get("new")
    if new and new["max_s"]["max"] is not None:
        worst = new["max_s"]["max"]
        late = new["finished_after_blocker_released_s"]["max"]
        ok = (
            worst < 0.5
            and new["errors"] == 0
            and new["outcomes"]["failed"] == 0
            and late is not None
            and late <= 5.0
        )
        out.append(
            f"traffic, column with a default, {p['clients']} clients, {p['blocker_s']:g} s "
            f"blocker: db-deploy app max {worst * 1000:.0f} ms (< 500 ms), {new['errors']} app "
            f"errors, {new['outcomes']['success']}/{sum(new['outcomes'].values())} deploys "
            f"succeeded, at most {late:.1f} s after the blocker ended (≤ 5 s) → "
            + ("met" if ok else "**not met**")
            + (
                ""
                if p["blocker_s"] >= 20 and p["clients"] >= 8
                else " (at this size; the goal is set for a 20 s blocker and 8 clients)"
            )
        )
    alembic = c.get("alembic")
    if alembic and alembic["max_s"]["median"] is not None:
        out.append(
            f"traffic, bare Alembic stalls the app {alembic['max_s']['median']:.1f} s "
            f"(blocker {p['blocker_s']:g} s, the deploy starting {p['lead_s']:g} s into it)"
        )
    ratio = tr["cases"]["column"]["max_latency_ratios"].get("alembic/new")
    if ratio and ratio.get("median") is not None:
        out.append(f"traffic, worst app latency bare Alembic / db-deploy: {fmt_x(ratio)}")
    return out


def markdown(results: dict[str, Any]) -> str:
    """The generated block of bench/README.md's traffic section."""
    meta = results.get("meta", {})
    head = (
        f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}; "
        f"{meta.get('deployer', '?')}."
    )
    body = [head, *table(results), "", "Goal (issue 19, point 3):", ""]
    body += [f"- {g}" for g in goals(results)]
    return "\n".join(body)
