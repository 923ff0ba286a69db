"""Where the time goes: cProfile of each command, import costs, and round trips counted by the
server (`log_statement = all` on a scratch database of the bench's private cluster).

Buckets are cProfile cumulative times (recursion counted once), so they overlap: "migrations
loop" contains "server wait" and "SQL compile" for the revisions; "imports" is the time in
`importlib` loading modules, wherever it happens.
"""

from __future__ import annotations

import contextlib
import pstats
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.deploy import alembic_cmd, candidate_env, deploy_cmd, prepare
from bench.proc import VENV_BIN, child_env, deployer_env, portable, run
from bench.server import Server

#: Where the deployer's commands live: the pipeline before issue 14, deployer/commands/ after.
_COMMANDS = ("deployer/pipeline.py", "deployer/commands/shared.py", "deployer/commands/deploy.py")

# (label, file suffixes, function name): cumulative seconds of one function (summed over
# entries), in the first of the files that has it (the code moves; the bucket stays).
BUCKETS: list[tuple[str, tuple[str, ...], str]] = [
    ("imports (importlib)", ("<frozen importlib._bootstrap>",), "_find_and_load"),
    ("settings (load_settings)", ("deployer/settings.py",), "load_settings"),
    ("argument parser (build_parser)", ("deployer/cli.py",), "build_parser"),
    (
        "load the migrations folder (find_project)",
        ("deployer/alembic_project.py",),
        "find_project",
    ),
    ("revision map: load every revision file", ("alembic/script/revision.py",), "_revision_map"),
    ("preflight step", (*_COMMANDS, "deployer/steps/preflight.py"), "preflight"),
    ("env.py runs (all)", ("alembic/script/base.py",), "run_env"),
    ("  inspect_env (env.py, no-op work)", ("deployer/steps/migrate.py",), "inspect_env"),
    ("  migrations loop (run_migrations)", ("alembic/runtime/migration.py",), "run_migrations"),
    ("    revision upgrade() bodies (alembic ops)", ("alembic/operations/base.py",), "invoke"),
    ("    version table updates", ("alembic/runtime/migration.py",), "update_to_step"),
    ("status step", (*_COMMANDS, "deployer/steps/status.py"), "status"),
    ("smoke step", (*_COMMANDS, "deployer/steps/smoke.py"), "smoke"),
    ("reports (publish)", ("deployer/publish.py",), "publish"),
    ("SQL/DDL compile (SQLAlchemy Compiled)", ("sqlalchemy/sql/compiler.py",), "__init__"),
    ("server round trips (psycopg wait + send)", ("psycopg/connection.py",), "wait"),
    ("", ("psycopg/_cursor_base.py",), "_execute_send"),
    ("connect (psycopg)", ("psycopg/connection.py",), "connect"),
]


def _cum(stats: dict[Any, Any], suffixes: tuple[str, ...], name: str) -> tuple[float, int]:
    """Cumulative seconds and calls of the function(s) matching, in the first of `suffixes`
    that has one; for `__init__` in a module the largest entry (the base class every call goes
    through)."""
    for suffix in suffixes:
        hits = [
            (v[3], v[1])
            for (f, _line, n), v in stats.items()
            if n == name and (f.endswith(suffix) or f == suffix)
        ]
        if hits:
            if name == "__init__":
                return max(hits)
            return sum(h[0] for h in hits), sum(h[1] for h in hits)
    return 0.0, 0


def summarise_profile(path: Path, size: int, top: int = 12) -> dict[str, Any]:
    st = pstats.Stats(str(path))
    stats = st.stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    buckets: dict[str, Any] = {}
    last = ""
    for label, suffixes, name in BUCKETS:
        sec, calls = _cum(stats, suffixes, name)
        if not label:  # continuation of the previous bucket
            buckets[last]["seconds"] = round(buckets[last]["seconds"] + sec, 4)
            continue
        last = label
        buckets[label] = {"seconds": round(sec, 4), "calls": calls}
    # the upgrade() functions of the revision files themselves
    ups = [v for (f, _l, n), v in stats.items() if n == "upgrade" and "/versions/" in f]
    buckets["revision files' upgrade() (sum)"] = {
        "seconds": round(sum(v[3] for v in ups), 4),
        "calls": len(ups),
    }
    by_tottime = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    hot = [
        {
            "function": f"{_short(f)}:{line}({n})",
            "tottime": round(v[2], 4),
            "cumtime": round(v[3], 4),
            "calls": v[1],
        }
        for (f, line, n), v in by_tottime
    ]
    return {"total_s": round(total, 4), "per_revision_ms": None, "buckets": buckets, "hot": hot}


def _short(f: str) -> str:
    """A profiled file named without the machine's folders (see `report.portable`)."""
    return portable(f)


# --------------------------------------------------------------------------- round trips

_HEAD = re.compile(r"^\d{4}-\d\d-\d\d \S+ \S+ \[(?P<pid>\d+)\] (?P<app>[^|]*)\|(?P<db>[^|]*)\| ?")
_STMT = re.compile(r"^LOG:  (?:statement|execute [^:]*): ?(?P<sql>.*)$", re.DOTALL)
_COMMENT = re.compile(r"--[^\n]*")


def log_statements(text: str, db: str) -> list[tuple[str, str]]:
    """(pid, statement) of every statement logged for `db`; an entry's continuation lines (a
    multi-line statement) are joined to it."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            entries.append([m.group("pid"), m.group("db"), line[m.end() :]])
        elif entries:
            entries[-1][2] += "\n" + line
    out = []
    for pid, dbname, body in entries:
        m = _STMT.match(body)
        if m and dbname == db:
            out.append((pid, " ".join(_COMMENT.sub(" ", m.group("sql")).split())))
    return out


def classify(sql: str) -> str:
    s = sql.strip().lstrip("(").rstrip(";").upper()
    first = s.split(None, 1)[0].rstrip(";") if s else ""
    if s.startswith("ROLLBACK TO") or first in {"SAVEPOINT", "RELEASE"}:
        return "savepoints"
    if first in {"BEGIN", "COMMIT", "ROLLBACK", "START", "END"}:
        return "transaction (BEGIN/COMMIT/ROLLBACK)"
    if first in {"SET", "SHOW", "RESET"} or "CURRENT_SETTING" in s[:80]:
        return "session settings (SET/SHOW/current_setting)"
    if "ALEMBIC_VERSION" in s:
        return "version table"
    if first in {"CREATE", "ALTER", "DROP", "COMMENT", "GRANT"}:
        return "DDL (the migrations)"
    if "ADVISORY" in s:
        return "deploy lock"
    if any(k in s for k in ("PG_CATALOG", "PG_CLASS", "INFORMATION_SCHEMA", "PG_NAMESPACE")):
        return "catalog queries"
    if first == "SELECT":
        return "other SELECT"
    return "other"


@contextlib.contextmanager
def statement_logging(server: Server) -> Iterator[None]:
    with server.admin() as conn:
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a|%d| '")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with server.admin() as conn:
            conn.execute("ALTER SYSTEM RESET log_line_prefix")
            conn.execute("SELECT pg_reload_conf()")


def _excerpt(lines: list[str], head: int = 70, tail: int = 50) -> list[str]:
    if len(lines) <= head + tail:
        return lines
    return [*lines[:head], f"… {len(lines) - head - tail} more …", *lines[-tail:]]


def count_statements(
    server: Server, db: str, cmd: list[str], env: dict[str, str], cwd: Path
) -> dict[str, Any]:
    """Run `cmd` with every statement on `db` logged; return counts by class and connection."""
    with server.admin() as conn:
        conn.execute(f"ALTER DATABASE \"{db}\" SET log_statement = 'all'")
    offset = server.log.stat().st_size
    run(cmd, env=env, cwd=cwd).check(" ".join(cmd[:3]))
    with server.admin() as conn:
        conn.execute(f'ALTER DATABASE "{db}" RESET log_statement')
    with open(server.log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    classes: Counter[str] = Counter()
    pids: set[str] = set()
    samples: dict[str, str] = {}
    statements = log_statements(text, db)
    total = len(statements)
    for pid, sql in statements:
        pids.add(pid)
        c = classify(sql)
        classes[c] += 1
        samples.setdefault(c, sql[:160])
    return {
        "statements": total,
        "sessions": len(pids),
        "by_class": dict(classes.most_common()),
        "samples": samples,
        "sequence": _excerpt([f"[{pid}] {sql[:140]}" for pid, sql in statements]),
    }


def run_suite(
    server: Server, work: Path, size: int, progress: Any, candidate: Path | None = None
) -> dict[str, Any]:
    files = prepare(work, size, server)
    project, sql = files["project"], files["sql"]
    out: dict[str, Any] = {"size": size, "cprofile": {}, "round_trips": {}}
    py = str(VENV_BIN / "python")
    prof_dir = work / "profiles"
    prof_dir.mkdir(exist_ok=True)

    # cProfile: full deploy then no-op on one database; alembic upgrade then current on another.
    dbs = [server.create_database("p"), server.create_database("p")]
    try:
        runs = {
            "deploy": ([py, "-m", "cProfile", "-o", "{out}", "-m", "deployer"], dbs[0]),
            "noop": ([py, "-m", "cProfile", "-o", "{out}", "-m", "deployer"], dbs[0]),
            "alembic": ([py, "-m", "cProfile", "-o", "{out}", str(VENV_BIN / "alembic")], dbs[1]),
            "current": ([py, "-m", "cProfile", "-o", "{out}", str(VENV_BIN / "alembic")], dbs[1]),
        }
        for name, (prefix, db) in runs.items():
            target = prof_dir / f"{name}-{size}.prof"
            head = [p.replace("{out}", str(target)) for p in prefix]
            url = server.url(db)
            if name in {"deploy", "noop"}:
                cmd = head + deploy_cmd(project, url)[1:]
                # The deployer in the profiled process itself: as the supervising parent
                # (deployer/supervise.py) it would fork a child and profile only the wait.
                env = deployer_env(DB_DEPLOY_CHILD="")
                if name == "noop":  # steady state: the first no-op writes the history baseline
                    run(deploy_cmd(project, url), env=env, cwd=work).check("first no-op")
            else:
                verb = ["upgrade", "head"] if name == "alembic" else ["current"]
                cmd = head + alembic_cmd(project, *verb)[1:]
                env = child_env(DATABASE_URL=url)
            run(cmd, env=env, cwd=work, log=work / "logs" / f"prof-{name}.log").check(name)
            out["cprofile"][name] = summarise_profile(target, size)
            progress(f"  profiled {name}: {out['cprofile'][name]['total_s']:.2f}s under cProfile")
    finally:
        for db in dbs:
            server.drop_database(db)

    # import time of a no-op deploy's process, per top-level package
    out["imports_deploy"] = _importtime(server, project)

    # round trips, as the server saw them
    with statement_logging(server):
        dbs = [server.create_database("r") for _ in range(4 if candidate else 3)]
        try:
            u = [server.url(d) for d in dbs]
            plans = {
                "deploy": (dbs[0], deploy_cmd(project, u[0]), deployer_env()),
                "noop (first)": (dbs[0], deploy_cmd(project, u[0]), deployer_env()),
                "noop": (dbs[0], deploy_cmd(project, u[0]), deployer_env()),
                "alembic": (
                    dbs[1],
                    alembic_cmd(project, "upgrade", "head"),
                    child_env(DATABASE_URL=u[1]),
                ),
                "current": (dbs[1], alembic_cmd(project, "current"), child_env(DATABASE_URL=u[1])),
                "psql": (
                    dbs[2],
                    [server.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", u[2], "-f", str(sql)],
                    child_env(),
                ),
            }
            if candidate:
                cand = (deploy_cmd(project, u[3], candidate=candidate), candidate_env(candidate))
                plans["candidate"] = (dbs[3], *cand)
                plans["candidate noop"] = (dbs[3], *cand)
            for name, (db, cmd, env) in plans.items():
                res = count_statements(server, db, cmd, env, work)
                full = name in {"deploy", "alembic", "psql", "candidate"}
                res["per_revision"] = round(res["statements"] / size, 2) if full else None
                out["round_trips"][name] = res
                progress(
                    f"  round trips {name}: {res['statements']} statements on "
                    f"{res['sessions']} sessions"
                )
        finally:
            for db in dbs:
                server.drop_database(db)
    return out


def _imports(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Module → self import seconds, from `python -X importtime` (second run: warm caches)."""
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    mods: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            mods[m.group(4)] = int(m.group(1)) / 1e6
    return mods


def _by_package(mods: dict[str, float], top: int = 14) -> dict[str, float]:
    c: dict[str, float] = {}  # seconds by package
    for name, sec in mods.items():
        c[name.split(".", 1)[0]] = c.get(name.split(".", 1)[0], 0.0) + sec
    ranked = sorted(c.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {k: round(v, 4) for k, v in ranked}


def _importtime(server: Server, project: Path) -> dict[str, Any]:
    """What a no-op deploy imports, and what it imports beyond `alembic current`."""
    db = server.create_database("i")
    try:
        url = server.url(db)
        run(alembic_cmd(project, "upgrade", "head"), env=child_env(DATABASE_URL=url)).check("up")
        py = [str(VENV_BIN / "python"), "-X", "importtime"]
        deploy = _imports(
            [*py, "-m", "deployer", *deploy_cmd(project, url)[1:]], deployer_env(), project.parent
        )
        current = _imports(
            [*py, *alembic_cmd(project, "current")], child_env(DATABASE_URL=url), project.parent
        )
    finally:
        server.drop_database(db)
    extra = {k: v for k, v in deploy.items() if k not in current}
    own = {k: round(v, 4) for k, v in deploy.items() if k.split(".")[0] == "deployer"}
    return {
        "what": "no-op deploy against alembic current",
        "total_import_s": round(sum(deploy.values()), 4),
        "alembic_current_import_s": round(sum(current.values()), 4),
        "extra_import_s": round(sum(extra.values()), 4),
        "top_packages_s": _by_package(deploy),
        "extra_by_package_s": _by_package(extra),
        "deployer_modules_s": dict(sorted(own.items(), key=lambda kv: -kv[1])),
    }
