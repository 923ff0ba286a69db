"""Full deploys and no-op deploys of synthetic chains: db-deploy, bare Alembic, psql -f.

For each chain size, every round creates fresh databases and runs, in an order rotated from
round to round (each tool goes first in turn):

- `db-deploy deploy --database-url URL --migrations-path DIR` (preflight, lock, migrate,
  status, smoke, reports), as a user runs it;
- bare `alembic -c DIR/alembic.ini upgrade head` (DATABASE_URL set);
- `psql -X -q -v ON_ERROR_STOP=1 -f FILE` of what `alembic upgrade head --sql` emitted (once per
  size, untimed): the floor, the same SQL with a transaction per revision;

then, on the databases now at head, a no-op `db-deploy deploy` and `alembic current`.
Ratios are taken within each round. The three databases must end with the same catalog.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.chain import write_project
from bench.proc import VENV_BIN, child_env, deployer_env, run
from bench.server import Server
from bench.stats import ratios, rotate, summary

FULL = ("deploy", "alembic", "psql")
WARM_REVISIONS = False  # byte-compile the chains before timing (--warm-revisions)
NOOP = ("noop", "current")

#: One line per column, index, constraint and version row of the public schema: equal
#: fingerprints mean equal resulting schemas.
FINGERPRINT = """
SELECT count(*) FILTER (WHERE kind = 'table'), md5(string_agg(item, E'\\n' ORDER BY item))
FROM (
  SELECT 'table' AS kind, 'table ' || relname AS item FROM pg_class
   WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
  UNION ALL
  SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
    AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'index', pg_get_indexdef(x.indexrelid)
  FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
  WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'constraint',
         conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'version', 'version ' || version_num FROM public.alembic_version
) s
"""


def alembic_cmd(project: Path, *args: str) -> list[str]:
    return [str(VENV_BIN / "alembic"), "-c", str(project / "alembic.ini"), *args]


def deploy_cmd(project: Path, url: str, *args: str, candidate: Path | None = None) -> list[str]:
    """`db-deploy deploy …`; with `candidate`, `python -m deployer deploy …` run on the
    `deployer` package found in that folder (a patched copy being measured)."""
    head = (
        [str(VENV_BIN / "python"), "-m", "deployer"] if candidate else [str(VENV_BIN / "db-deploy")]
    )
    return [*head, "deploy", "--database-url", url, "--migrations-path", str(project), *args]


def candidate_env(candidate: Path | None, **extra: str) -> dict[str, str]:
    if candidate:
        extra["PYTHONPATH"] = str(candidate)
    return deployer_env(**extra)


def tool_command(
    tool: str, url: str, files: dict[str, Path], psql: str, candidate: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `tool` (one of FULL or NOOP, or a candidate's)
    against the database at `url`, for the chain in `files` (from `prepare`)."""
    project = files["project"]
    if tool in {"deploy", "noop"}:
        return deploy_cmd(project, url), deployer_env()
    if tool in {"candidate", "candidate_noop"}:
        return deploy_cmd(project, url, candidate=candidate), candidate_env(candidate)
    if tool == "alembic":
        return alembic_cmd(project, "upgrade", "head"), child_env(DATABASE_URL=url)
    if tool == "current":
        return alembic_cmd(project, "current"), child_env(DATABASE_URL=url)
    if tool == "psql":
        cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(files["sql"])]
        return cmd, child_env()
    raise ValueError(f"unknown tool {tool!r}")


def prepare(work: Path, size: int, server: Server, *, shared: bool = False) -> dict[str, Path]:
    """Write the project, check it loads, byte-compile it with --warm-revisions (by default
    every tool compiles the revision files on every run, as in the image on a fresh CI
    checkout), and render the offline SQL for psql."""
    project = write_project(work / f"chain{size}{'-shared' if shared else ''}", size, shared=shared)
    env = child_env(DATABASE_URL=server.url("postgres"))
    run(alembic_cmd(project, "heads"), env=env).check(f"alembic heads ({size})")
    if WARM_REVISIONS:
        import compileall

        compileall.compile_dir(str(project), quiet=1)
    sql = work / f"chain{size}.sql"
    out = subprocess.run(
        alembic_cmd(project, "upgrade", "head", "--sql"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    sql.write_text(out)
    return {"project": project, "sql": sql}


def settle(server: Server) -> None:
    """CHECKPOINT before a timed command (untimed): the dirty pages and WAL that the previous
    command (or CREATE/DROP DATABASE) left are written now, not by a checkpoint that would land
    in the middle of whichever tool runs next."""
    server.execute("postgres", "CHECKPOINT")


def fingerprint(server: Server, db: str) -> tuple[int, str]:
    rows = server.execute(db, FINGERPRINT)
    return int(rows[0][0]), str(rows[0][1])


def one_round(
    server: Server,
    work: Path,
    files: dict[str, Path],
    size: int,
    k: int,
    *,
    check: bool,
    candidate: Path | None = None,
    keep: list[str] | None = None,
) -> dict[str, Any]:
    full = [*FULL, "candidate"] if candidate else list(FULL)
    noop = [*NOOP, "candidate_noop"] if candidate else list(NOOP)
    dbs = {tool: server.create_database(f"d{size}") for tool in full}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    out: dict[str, Any] = {"order": rotate(full, k), "rss_kb": {}, "cpu_s": {}}

    def command(tool: str, db: str) -> tuple[list[str], dict[str, str]]:
        return tool_command(tool, server.url(db), files, server.psql, candidate)

    home = {"noop": "deploy", "current": "alembic", "candidate_noop": "candidate"}
    try:
        for tool in out["order"]:
            cmd, env = command(tool, dbs[tool])
            settle(server)
            m = run(cmd, env=env, cwd=work, log=logs / f"{tool}-{size}.log")
            m.check(f"{tool} at {size} revisions")
            out[tool], out["rss_kb"][tool], out["cpu_s"][tool] = m.seconds, m.maxrss_kb, m.cpu_s
        if check:
            prints = {tool: fingerprint(server, dbs[tool]) for tool in full}
            tables = {p[0] for p in prints.values()}
            out["schemas_identical"] = len({p[1] for p in prints.values()}) == 1
            out["tables"] = sorted(tables)
            if not out["schemas_identical"] or tables != {size + 1}:  # + alembic_version
                raise RuntimeError(f"resulting schemas differ at {size} revisions: {prints}")
        # The databases are at head now: nothing pending. A deploy's first no-op also writes
        # what it did not record (the history baseline, when env.py used its own engine):
        # timed apart as `*_first`; the steady state is the second.
        for tool in rotate(noop, k):
            cmd, env = command(tool, dbs[home[tool]])
            if tool != "current":
                settle(server)
                m = run(cmd, env=env, cwd=work, log=logs / f"{tool}-first-{size}.log")
                m.check(f"first {tool} at {size} revisions")
                out[f"{tool}_first"] = m.seconds
            report = work / "db-deploy-report.json"
            report.unlink(missing_ok=True)
            settle(server)
            m = run(cmd, env=env, cwd=work, log=logs / f"{tool}-{size}.log")
            m.check(f"{tool} at {size} revisions")
            out[tool], out["rss_kb"][tool], out["cpu_s"][tool] = m.seconds, m.maxrss_kb, m.cpu_s
            if tool == "noop" and report.is_file():  # where the no-op's time goes, in-process
                out["noop_steps"] = json.loads(report.read_text()).get("steps") or {}
    finally:
        # Dropping databases of hundreds of tables leaves the machine busy for seconds
        # (thousands of files unlinked): whichever tool ran next was 30-45 % slower. The
        # suite drops them all at its end instead.
        if keep is None:
            for db in dbs.values():
                server.drop_database(db)
        else:
            keep.extend(dbs.values())
    return out


def run_suite(
    server: Server,
    work: Path,
    sizes: list[int],
    repeat: int,
    progress: Any,
    candidate: Path | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    keep: list[str] = []
    try:
        for size in sizes:
            files = prepare(work, size, server)
            # An untimed warm-up round first (it also checks that the three commands build the
            # same schema): the first commands on a new chain ran up to 45 % slower.
            one_round(server, work, files, size, 0, check=True, candidate=candidate, keep=keep)
            rounds = []
            for k in range(repeat):
                r = one_round(
                    server, work, files, size, k, check=False, candidate=candidate, keep=keep
                )
                rounds.append(r)
                progress(
                    f"  {size} revisions, round {k + 1}/{repeat}: "
                    + ", ".join(f"{t} {r[t]:.2f}s" for t in r if isinstance(r[t], float))
                )
            results[str(size)] = {"rounds": rounds, **summarise(rounds)}
    finally:
        for db in keep:
            server.drop_database(db)
    return results


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    tools = list(rounds[0]["rss_kb"])
    times = {tool: summary([r[tool] for r in rounds]) for tool in tools}
    for tool in ("noop_first", "candidate_noop_first"):
        if tool in rounds[0]:
            times[tool] = summary([r[tool] for r in rounds])
    rss = {tool: summary([r["rss_kb"][tool] for r in rounds]) for tool in tools}
    pairs = [
        ("deploy", "alembic"),
        ("alembic", "psql"),
        ("deploy", "psql"),
        ("noop", "current"),
        ("noop_first", "current"),
        ("candidate", "alembic"),
        ("candidate", "deploy"),
        ("candidate_noop", "current"),
        ("candidate_noop", "noop"),
        ("candidate_noop_first", "noop_first"),
    ]
    steps: dict[str, Any] = {}
    for r in rounds:
        for name, sec in (r.get("noop_steps") or {}).items():
            steps.setdefault(name, []).append(sec)
    cpu_rounds = [r["cpu_s"] for r in rounds]
    return {
        "seconds": times,
        "cpu_seconds": {tool: summary([c[tool] for c in cpu_rounds]) for tool in tools},
        "cpu_ratios": {
            f"{a}/{b}": ratios(cpu_rounds, a, b)
            for a, b in [
                ("deploy", "alembic"),
                ("noop", "current"),
                ("candidate", "alembic"),
                ("candidate", "deploy"),
                ("candidate_noop", "current"),
                ("candidate_noop", "noop"),
            ]
            if a in tools
        },
        "noop_steps": {name: summary(vals) for name, vals in steps.items()},
        "peak_rss_kb": rss,
        "ratios": {f"{a}/{b}": ratios(rounds, a, b) for a, b in pairs if a in times},
        "schemas_identical": all(r.get("schemas_identical", True) for r in rounds),
    }
