"""Run a child process and measure it: wall time and the child's own peak RSS (wait4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TIMEOUT = 600.0  # no child may run longer than this


@dataclass
class Measured:
    seconds: float
    maxrss_kb: int
    returncode: int
    output: str
    cpu_s: float = 0.0  # user + system CPU of the child: far less sensitive to a busy machine

    def check(self, what: str) -> Measured:
        if self.returncode != 0:
            tail = "\n".join(self.output.strip().splitlines()[-25:])
            raise RuntimeError(f"{what} exited {self.returncode}:\n{tail}")
        return self


#: The folder holding the byte-compiled snapshot of deployer/ that db-deploy runs from (set by
#: the CLI at start; None: the installed package as it is).
BASELINE: Path | None = None


def snapshot(source: Path, dest: Path) -> Path:
    """Copy the package folder `source` to dest/<name> and byte-compile it, as `pip install`
    does in the image: the measured db-deploy is what users run, frozen for the whole run while
    others edit deployer/. Returns `dest` (for PYTHONPATH)."""
    import compileall
    import shutil

    target = dest / source.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(target), quiet=1)
    return dest


def _portable_rules() -> list[tuple[re.Pattern[str], str]]:
    paths = sysconfig.get_paths()
    stdlib = sorted({paths["stdlib"], paths["platstdlib"]}, key=len, reverse=True)
    return [
        # installed packages by their own path: sqlalchemy/sql/compiler.py
        (re.compile(r"/[^\s:\"']*?/(?:site|dist)-packages/"), ""),
        *((re.compile(re.escape(p.rstrip("/")) + "/"), "<stdlib>/") for p in stdlib),
        # the bench's work folder (a temporary one): baseline/deployer/cli.py
        (re.compile(r"/[^\s:\"']*?/bench-work-[^/\s]+/"), ""),
        (re.compile(re.escape(str(REPO)) + "/?"), ""),
        (re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + "/"), "<tmp>/"),
        (re.compile(re.escape(str(Path.home()).rstrip("/")) + "/"), "<home>/"),
    ]


_PORTABLE = _portable_rules()


def portable(text: str) -> str:
    """`text` with this machine's folders taken out, so that no results file names a path
    outside the repository: installed packages by their own path, the standard library as
    `<stdlib>/`, the bench's work folder and the repository's root left out, the temporary and
    home folders as `<tmp>/` and `<home>/`."""
    for pattern, replacement in _PORTABLE:
        text = pattern.sub(replacement, text)
    return text


def export(ref: str, dest: Path) -> Path:
    """deployer/ as committed at the git `ref`, written under `dest` (for `snapshot`): the
    measured tree stays what was committed while others edit the working tree."""
    import io
    import tarfile

    got = subprocess.run(
        ["git", "archive", "--format=tar", ref, "deployer"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    if got.returncode != 0:
        raise SystemExit(f"--deployer-ref {ref}: {got.stderr.decode(errors='replace').strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "deployer"


def deployer_env(**extra: str) -> dict[str, str]:
    """child_env for a db-deploy process: the snapshot first on sys.path."""
    if BASELINE is not None and "PYTHONPATH" not in extra:
        extra["PYTHONPATH"] = str(BASELINE)
    return child_env(**extra)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a CI-less terminal: no GitHub runner variables, no stray database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_", "PG", "SLACK"))
        and k not in {"DATABASE_URL", "DIRECT_DATABASE_URL", "CI", "PYTHONPROFILEIMPORTTIME"}
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # As in the image (Dockerfile): no bytecode written at run time. Libraries and deployer/
    # are compiled at install; the user's revision files are compiled on every run.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = TIMEOUT,
    log: Path | None = None,
) -> Measured:
    """Run `cmd` to completion (bounded by `timeout`), output to `log` (or discarded)."""
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    sink = open(log, "wb") if log else open(os.devnull, "wb")  # noqa: SIM115
    with sink:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env if env is not None else child_env(),
            cwd=cwd,
        )
        killer = threading.Timer(timeout, proc.kill)  # bounded: a hung child is killed
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text(errors="replace") if log else ""
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(seconds, int(usage.ru_maxrss), proc.returncode, output, cpu)
