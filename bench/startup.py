"""Start-up: what a command costs before it does anything.

Rounds, in rotated order, of `python -c pass` (the interpreter's floor), `alembic --help` and
`db-deploy --help`; and one `python -X importtime` of `db-deploy --help` to see which
packages a command that needs no database still imports.

The settings floor, in rounds of their own: importing what `alembic current` imports
(SQLAlchemy, psycopg, Alembic's runtime), then the same plus pydantic-settings, then plus
`deployer.settings` (the Settings class built). The differences are what the settings library
the project chose costs every command, whatever the deployer does after. Last, the same imports
with the settings under the collector policy of a `db-deploy` process
(`deployer.cli.console_main`: collector off while starting, then the start-up heap frozen):
what that policy gives back.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from bench.proc import VENV_BIN, child_env, deployer_env, run
from bench.stats import ratios, rotate, summary

TOOLS = ("python", "alembic_help", "deploy_help")
HEAVY = ("sqlalchemy", "alembic", "pydantic", "pydantic_settings", "psycopg", "requests", "mako")


def _cmd(tool: str) -> list[str]:
    if tool == "python":
        return [str(VENV_BIN / "python"), "-c", "pass"]
    if tool == "alembic_help":
        return [str(VENV_BIN / "alembic"), "--help"]
    return [str(VENV_BIN / "db-deploy"), "--help"]


def import_profile(args: list[str]) -> dict[str, Any]:
    """`python -X importtime -m deployer ARGS`: cumulative import time per top-level package."""
    proc = subprocess.run(
        [str(VENV_BIN / "python"), "-X", "importtime", "-m", "deployer", *args],
        env=deployer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    top: dict[str, float] = {}
    total = 0.0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        pkg = name.split(".", 1)[0]
        top[pkg] = top.get(pkg, 0.0) + self_us / 1e6
        total += self_us / 1e6
    heavy = {p: round(top[p], 4) for p in HEAVY if p in top}
    biggest = dict(sorted(top.items(), key=lambda kv: -kv[1])[:12])
    return {
        "args": args,
        "total_import_s": round(total, 4),
        "heavy_packages": heavy,
        "top_packages_s": {k: round(v, 4) for k, v in biggest.items()},
    }


SHARED = "import sqlalchemy, psycopg, alembic.script, alembic.runtime.environment, alembic.config"
FLOOR = {
    "shared": SHARED,
    "pydantic_settings": f"{SHARED}; import pydantic_settings",
    "settings": f"{SHARED}; import deployer.settings",
    "settings_owned": (
        f"import gc; gc.disable(); {SHARED}; import deployer.settings; gc.freeze(); gc.enable()"
    ),
}


def settings_floor(repeat: int) -> dict[str, Any]:
    rounds = []
    for k in range(repeat):
        r: dict[str, Any] = {"order": rotate(list(FLOOR), k)}
        for name in r["order"]:
            cmd = [str(VENV_BIN / "python"), "-c", FLOOR[name]]
            r[name] = run(cmd, env=deployer_env()).check(name).seconds
        rounds.append(r)
    out: dict[str, Any] = {name: summary([r[name] for r in rounds]) for name in FLOOR}
    # Differences of medians: single rounds vary more than the differences measured.
    out["library_s"] = out["pydantic_settings"]["median"] - out["shared"]["median"]
    out["class_s"] = out["settings"]["median"] - out["pydantic_settings"]["median"]
    out["owned_s"] = out["settings_owned"]["median"] - out["shared"]["median"]
    return out


def run_suite(work: Path, repeat: int, progress: Any) -> dict[str, Any]:
    rounds = []
    for k in range(repeat):
        r: dict[str, Any] = {"order": rotate(TOOLS, k), "rss_kb": {}}
        for tool in r["order"]:
            env = deployer_env() if tool == "deploy_help" else child_env()
            m = run(_cmd(tool), env=env, cwd=work).check(tool)
            r[tool], r["rss_kb"][tool] = m.seconds, m.maxrss_kb
        rounds.append(r)
    progress(
        "  start-up: "
        + ", ".join(f"{t} {summary([r[t] for r in rounds])['median']:.3f}s" for t in TOOLS)
    )
    return {
        "rounds": rounds,
        "seconds": {t: summary([r[t] for r in rounds]) for t in TOOLS},
        "peak_rss_kb": {t: summary([r["rss_kb"][t] for r in rounds]) for t in TOOLS},
        "ratios": {"deploy_help/alembic_help": ratios(rounds, "deploy_help", "alembic_help")},
        "imports_help": import_profile(["--help"]),
        "settings_floor": settings_floor(max(repeat, 15)),
    }
