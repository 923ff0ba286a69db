"""The table printed at the end, the JSON file and the results section of bench/README.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.proc import portable
from bench.stats import fmt_s, fmt_x

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PSTART, PEND = "<!-- profile:start -->", "<!-- profile:end -->"

GOALS = {
    "deploy/alembic": 1.15,
    "noop/current": 1.2,
    "smoke full/empty": 1.5,
}


def _verdict(ratio: dict[str, Any] | None, goal: float) -> str:
    if not ratio or ratio.get("median") is None:
        return "–"
    return "met" if ratio["median"] <= goal else "**not met**"


def _mb(kb: float | None) -> str:
    return "–" if kb is None else f"{kb / 1024:.0f} MB"


def table(results: dict[str, Any]) -> str:
    """Markdown tables of every figure measured (also what `make bench` prints)."""
    out: list[str] = []
    meta = results.get("meta", {})
    out.append(
        f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}; PostgreSQL "
        f"{meta.get('server_version', '?')} (embedded, Unix socket); Python "
        f"{meta.get('python', '?')}; medians of {meta.get('repeat', '?')} interleaved runs "
        f"(min–max); ratios taken pair by pair within each run. Measured: "
        f"{meta.get('deployer', '?')}."
    )
    dep = results.get("deploy")
    if dep:
        out += [
            "",
            "**Full deploy** (fresh database; seconds)",
            "",
            "| revisions | psql -f | alembic upgrade head | db-deploy deploy | alembic / psql "
            "| db-deploy / alembic | goal ≤ 1.15× | same schema |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for size, r in dep.items():
            s, x = r["seconds"], r["ratios"]
            goal = (
                _verdict(x["deploy/alembic"], 1.15) if int(size) >= 200 else "(n/a, goal at ≥ 200)"
            )
            out.append(
                f"| {size} | {fmt_s(s['psql'])} | {fmt_s(s['alembic'])} | {fmt_s(s['deploy'])} "
                f"| {fmt_x(x['alembic/psql'])} | {fmt_x(x['deploy/alembic'])} | {goal} "
                f"| {'yes' if r.get('schemas_identical') else 'NO'} |"
            )
        if any("cpu_seconds" in r for r in dep.values()):
            out += [
                "",
                "**Client CPU** (user + system seconds of the command's own process, from wait4; "
                "the server's work is not in it, and a busy machine disturbs it far less than "
                "wall time)",
                "",
                "| revisions | alembic upgrade | db-deploy deploy | ratio | alembic current "
                "| db-deploy no-op | ratio | candidate / db-deploy (deploy, no-op) |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for size, r in dep.items():
                c, x = r.get("cpu_seconds"), r.get("cpu_ratios", {})
                if not c:
                    continue
                cand_x = (
                    f"{fmt_x(x.get('candidate/deploy'))}, {fmt_x(x.get('candidate_noop/noop'))}"
                    if "candidate/deploy" in x
                    else "–"
                )
                out.append(
                    f"| {size} | {fmt_s(c['alembic'])} | {fmt_s(c['deploy'])} "
                    f"| {fmt_x(x['deploy/alembic'])} | {fmt_s(c['current'])} "
                    f"| {fmt_s(c['noop'])} | {fmt_x(x['noop/current'])} | {cand_x} |"
                )
        cand = [(size, r) for size, r in dep.items() if "candidate" in r["seconds"]]
        if cand:
            out += [
                "",
                "**Candidate** (`--candidate`: the proposed changes, interleaved in the same "
                "rounds; seconds)",
                "",
                "| revisions | candidate deploy | candidate / alembic | candidate / db-deploy "
                "| candidate no-op | candidate no-op / alembic current | candidate no-op / no-op |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for size, r in cand:
                s, x = r["seconds"], r["ratios"]
                out.append(
                    f"| {size} | {fmt_s(s['candidate'])} | {fmt_x(x['candidate/alembic'])} "
                    f"| {fmt_x(x['candidate/deploy'])} | {fmt_s(s['candidate_noop'])} "
                    f"| {fmt_x(x['candidate_noop/current'])} | {fmt_x(x['candidate_noop/noop'])} |"
                )
        out += [
            "",
            "**No-op deploy** (database already at head; seconds)",
            "",
            "| revisions | alembic current | db-deploy deploy (no-op) | ratio | goal ≤ 1.2× "
            "| first no-op after a deploy | ratio |",
            "| ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for size, r in dep.items():
            s, x = r["seconds"], r["ratios"]
            out.append(
                f"| {size} | {fmt_s(s['current'])} | {fmt_s(s['noop'])} "
                f"| {fmt_x(x['noop/current'])} | {_verdict(x['noop/current'], 1.2)} "
                f"| {fmt_s(s.get('noop_first'))} | {fmt_x(x.get('noop_first/current'))} |"
            )
        for size, r in dep.items():
            st = r.get("noop_steps") or {}
            if st:
                parts = ", ".join(
                    f"{name} {v['median'] * 1000:.0f} ms" for name, v in st.items() if v["median"]
                )
                out.append(
                    f"\nNo-op at {size} revisions, the report's step times (medians): {parts}."
                )
        out += [
            "",
            "**Peak memory** (max RSS of the process, ru_maxrss)",
            "",
            "| revisions | psql | alembic upgrade head | db-deploy deploy | db-deploy no-op "
            "| alembic current |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for size, r in dep.items():
            m = r["peak_rss_kb"]
            out.append(
                f"| {size} | {_mb(m['psql']['max'])} | {_mb(m['alembic']['max'])} "
                f"| {_mb(m['deploy']['max'])} | {_mb(m['noop']['max'])} "
                f"| {_mb(m['current']['max'])} |"
            )
    st = results.get("startup")
    if st:
        s = st["seconds"]
        imp = st.get("imports_help", {})
        heavy = ", ".join(
            f"{k} {v * 1000:.0f} ms" for k, v in imp.get("heavy_packages", {}).items()
        )
        out += [
            "",
            "**Start-up** (seconds)",
            "",
            "| python -c pass | alembic --help | db-deploy --help | db-deploy / alembic |",
            "| ---: | ---: | ---: | ---: |",
            f"| {fmt_s(s['python'], 3)} | {fmt_s(s['alembic_help'], 3)} "
            f"| {fmt_s(s['deploy_help'], 3)} | {fmt_x(st['ratios']['deploy_help/alembic_help'])} |",
            "",
            f"`db-deploy --help` imports {imp.get('total_import_s', 0) * 1000:.0f} ms of modules; "
            f"heavy packages among them: {heavy or 'none'}.",
        ]
        fl = st.get("settings_floor")
        if fl:
            both = fl["library_s"] + fl["class_s"]
            line = (
                f"Settings floor (medians of {fl['shared']['n']} interleaved rounds): importing "
                f"what `alembic current` imports takes {fl['shared']['median']:.3f} s; "
                f"pydantic-settings adds {fl['library_s']:.3f} s and building the Settings class "
                f"{fl['class_s']:.3f} s: {both:.3f} s before the deployer does anything."
            )
            dep_ = results.get("deploy") or {}
            if dep_:
                small = min(dep_, key=int)
                cur = dep_[small]["seconds"]["current"]["median"]
                line += (
                    f" That is {both / cur:.0%} of `alembic current` at {small} revisions "
                    f"({cur:.2f} s)."
                )
            if "owned_s" in fl:
                owned = fl["owned_s"]
                line += (
                    " The same imports with the settings, under the collector policy of a "
                    "`db-deploy` process (collector off while it starts, then the start-up heap "
                    "frozen: `deployer.cli.console_main`), take "
                    f"{fl['settings_owned']['median']:.3f} s: "
                    + (
                        f"{-owned:.3f} s less than Alembic's imports alone, which `alembic` runs "
                        "with the collector on and takes apart at exit."
                        if owned < 0
                        else f"{owned:.3f} s more than Alembic's imports alone."
                    )
                )
            out += ["", line]
    sm = results.get("smoke")
    if sm:
        s, x = sm["seconds"], sm["ratios"]
        out += [
            "",
            f"**Smoke** ({sm['tables']} tables, {sm['rows']:,} rows in all; seconds)",
            "",
            "| | whole command | smoke step / queries |",
            "| --- | ---: | ---: |",
            f"| db-deploy smoke, empty schema | {fmt_s(s['smoke_empty'])} "
            f"| {fmt_s(s['smoke_empty_step'], 3)} |",
            f"| db-deploy smoke, {sm['rows']:,} rows | {fmt_s(s['smoke_full'])} "
            f"| {fmt_s(s['smoke_full_step'], 3)} |",
            f"| naive exact count(*) per table | {fmt_s(s['naive_full'])} "
            f"| {fmt_s(s['naive_full_query'], 3)} |",
            f"| full / empty (goal ≤ 1.5×) | {fmt_x(x['full/empty (command)'])} "
            f"| {fmt_x(x['full/empty (step)'])} — "
            f"{_verdict(x['full/empty (step)'], 1.5)} |",
            f"| naive / db-deploy | {fmt_x(x['naive/smoke (command)'])} "
            f"| {fmt_x(x['naive/smoke (queries vs step)'])} |",
        ]
        if "candidate_full" in s:
            out += [
                f"| candidate smoke, empty schema | {fmt_s(s['candidate_empty'])} "
                f"| {fmt_s(s['candidate_empty_step'], 3)} |",
                f"| candidate smoke, {sm['rows']:,} rows | {fmt_s(s['candidate_full'])} "
                f"| {fmt_s(s['candidate_full_step'], 3)} |",
                f"| candidate full / empty | {fmt_x(x['candidate full/empty (command)'])} "
                f"| {fmt_x(x['candidate full/empty (step)'])} — "
                f"{_verdict(x['candidate full/empty (step)'], 1.5)} |",
                f"| candidate / db-deploy, {sm['rows']:,} rows (step) | "
                f"| {fmt_x(x['candidate/current full (step)'])} |",
            ]
    net = results.get("network")
    if net:
        s, x = net["seconds"], net["ratios"]
        out += [
            "",
            f"**On a database {net['rtt_ms']:g} ms away** ({net['size']} revisions, fresh "
            "databases, through a proxy adding that round-trip time; seconds)",
            "",
            "| psql -f | alembic upgrade head | db-deploy deploy | db-deploy / alembic "
            "| same schema |",
            "| ---: | ---: | ---: | ---: | --- |",
            f"| {fmt_s(s['psql'])} | {fmt_s(s['alembic'])} | {fmt_s(s['deploy'])} "
            f"| {fmt_x(x['deploy/alembic'])} | {'yes' if net.get('schemas_identical') else 'NO'} |",
        ]
    return "\n".join(out)


def goals(results: dict[str, Any]) -> list[str]:
    lines = []
    dep = results.get("deploy", {})
    for size, r in dep.items():
        if int(size) >= 200:
            x = r["ratios"]["deploy/alembic"]
            cpu = r.get("cpu_ratios", {}).get("deploy/alembic")
            lines.append(
                f"full deploy ≤ 1.15× alembic at {size}: {fmt_x(x)} → {_verdict(x, 1.15)}"
                + (f" (client CPU {fmt_x(cpu)})" if cpu else "")
            )
    for size, r in dep.items():
        x = r["ratios"]["noop/current"]
        cpu = r.get("cpu_ratios", {}).get("noop/current")
        lines.append(
            f"no-op ≤ 1.2× alembic current at {size}: {fmt_x(x)} → {_verdict(x, 1.2)}"
            + (f" (client CPU {fmt_x(cpu)})" if cpu else "")
        )
    sm = results.get("smoke")
    if sm:
        x = sm["ratios"]["full/empty (step)"]
        lines.append(
            f"smoke on {sm['rows']:,} rows ≤ 1.5× empty (step): {fmt_x(x)} → {_verdict(x, 1.5)}"
        )
    big = max((int(s) for s in dep), default=0)
    if big:
        kb = dep[str(big)]["peak_rss_kb"]["deploy"]["max"]
        lines.append(f"peak memory of a {big}-revision deploy: {_mb(kb)}")
    return lines


def profile_markdown(prof: dict[str, Any]) -> str:
    if not prof:
        return ""
    size = prof["size"]
    cp = prof["cprofile"]
    names = [n for n in ("deploy", "alembic", "noop", "current") if n in cp]
    out = [
        f"cProfile at {size} revisions (cumulative seconds under the profiler, which inflates "
        "Python-heavy parts; buckets overlap, see bench/profile.py)",
        "",
        "| bucket | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        "| **total** | " + " | ".join(f"**{cp[n]['total_s']:.3f}**" for n in names) + " |",
    ]
    labels = list(cp[names[0]]["buckets"])
    for label in labels:
        cells = []
        for n in names:
            b = cp[n]["buckets"].get(label, {})
            sec = b.get("seconds", 0.0)
            cells.append(f"{sec:.3f} ({b.get('calls', 0)})" if sec else "–")
        out.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | " + " | ".join(cells) + " |")
    rt = prof.get("round_trips", {})
    if rt:
        names = list(rt)
        classes: list[str] = []
        for n in names:
            classes += [c for c in rt[n]["by_class"] if c not in classes]
        out += [
            "",
            f"Statements the server received (log_statement = all) at {size} revisions",
            "",
            "| | " + " | ".join(names) + " |",
            "| --- |" + " ---: |" * len(names),
            "| **statements** | " + " | ".join(f"**{rt[n]['statements']}**" for n in names) + " |",
            "| per revision | "
            + " | ".join(
                f"{rt[n]['per_revision']:.2f}" if rt[n]["per_revision"] else "–" for n in names
            )
            + " |",
            "| sessions | " + " | ".join(str(rt[n]["sessions"]) for n in names) + " |",
        ]
        for c in classes:
            out.append(
                f"| {c} | " + " | ".join(str(rt[n]["by_class"].get(c, 0)) for n in names) + " |"
            )
    imp = prof.get("imports_deploy")
    if imp:
        extra = ", ".join(f"{k} {v * 1000:.0f}" for k, v in imp["extra_by_package_s"].items())
        own = ", ".join(f"{k} {v * 1000:.0f}" for k, v in imp["deployer_modules_s"].items())
        out += [
            "",
            f"Imports (self time, `-X importtime`, warm): a no-op `db-deploy deploy` imports "
            f"{imp['total_import_s']:.3f} s of modules, `alembic current` "
            f"{imp['alembic_current_import_s']:.3f} s; the deploy's extra "
            f"{imp['extra_import_s']:.3f} s by package (ms): {extra}; "
            f"deployer's own modules (ms): {own}.",
        ]
    return "\n".join(out)


def _portable(value: Any) -> Any:
    """`value` with every string's machine paths taken out (`proc.portable`)."""
    if isinstance(value, str):
        return portable(value)
    if isinstance(value, dict):
        return {portable(str(k)): _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: Path) -> None:
    """The results, with no path of this machine in them (they are committed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_portable(results), indent=1, sort_keys=False) + "\n")


def _replace(text: str, start: str, end: str, body: str) -> str:
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return f"{head}{start}\n{body}\n{end}{tail}"
    return f"{text.rstrip()}\n\n{start}\n{body}\n{end}\n"


def write_readme(results: dict[str, Any], path: Path = README) -> None:
    """Replace the generated sections of bench/README.md, leaving the prose alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if any(results.get(k) for k in ("deploy", "startup", "smoke", "network")):
        body = table(results) + "\n\nGoals:\n\n" + "\n".join(f"- {g}" for g in goals(results))
        text = _replace(text, START, END, body)
    if results.get("traffic"):  # its own block (`--only traffic` keeps the results above)
        from bench import traffic

        text = _replace(text, traffic.START, traffic.END, traffic.markdown(results))
    if results.get("profile"):
        text = _replace(text, PSTART, PEND, profile_markdown(results["profile"]))
    path.write_text(text)
