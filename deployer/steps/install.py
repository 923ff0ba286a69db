"""Install the application's dependencies (input `requirements`) before env.py imports them.

In the container only the deployer and its locked dependencies are installed; an env.py that
imports `myapp.models` needs the application. `requirements` names a requirements file in the
workspace (hash-checking mode when it carries `--hash` lines) or `.` for the workspace's own
project. pip runs in the deployer's own interpreter, so env.py can import what it installed.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from pathlib import Path

from deployer.errors import ConfigError
from deployer.results import InstallResult


def install_requirements(spec: str, workspace: Path, *, timeout: float = 900) -> InstallResult:
    result = InstallResult(requirements=spec)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]
    if spec.strip() == ".":
        if not ((workspace / "pyproject.toml").is_file() or (workspace / "setup.py").is_file()):
            raise ConfigError(
                "requirements is '.', but the workspace has no pyproject.toml or setup.py"
            )
        cmd.append(str(workspace))
    else:
        path = (workspace / spec).resolve()
        if not path.is_file():
            raise ConfigError(f"requirements file {spec!r} does not exist in the workspace")
        result.hashes = "--hash=" in path.read_text(encoding="utf-8", errors="replace")
        if result.hashes:
            cmd.append("--require-hashes")
        cmd += ["-r", str(path)]
    result.command = cmd[1:]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"installing {spec!r} took longer than {timeout:g}s") from None
    result.seconds = round(time.perf_counter() - started, 3)
    if proc.returncode != 0:
        raise ConfigError(f"installing {spec!r} failed: {last_error(proc.stderr or proc.stdout)}")
    m = re.search(r"^Successfully installed (.+)$", proc.stdout, re.MULTILINE)
    result.installed = m.group(1).split() if m else []
    importlib.invalidate_caches()
    return result


def last_error(output: str, lines: int = 3) -> str:
    """pip's last error lines, on one line."""
    text = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(text) if line.startswith("ERROR")]
    picked = text[errors[0] : errors[0] + lines] if errors else text[-lines:]
    return " / ".join(picked) or "pip failed"
