"""The composite action's set-up (python/action.yml): install db-deploy in the job's Python, run it.

Standard library only, and run as a script by the job's own Python before the deployer is
installed, so it must at least parse on an old Python to say that it is too old (3.7 or newer;
3.6 and Python 2 stop at the `from __future__` line with their own SyntaxError):

    <job python> -I <action>/deployer/bootstrap.py install   # the step `install`
    <deployer's python> -I -m deployer.bootstrap run         # the step `deploy`

`install`:
  1. The job's Python must be 3.11 or newer; else an `::error` annotation and exit 2.
  2. A virtual environment in $RUNNER_TEMP/db-deploy-action/venv, created by that Python with
     --system-site-packages (plus a .pth file for the site-packages of a job Python that is
     itself a virtual environment), so the packages the job installed are importable.
  3. From requirements.lock (hash-checked, wheels only, --no-deps), only the packages the job's
     Python does not hold: the application's own SQLAlchemy, Alembic, psycopg, pydantic… win.
     Then the deployer from a copy of the action's checkout (--no-deps). Then `pip check`: a
     package the deployer needs in another version than the job's (pydantic-settings needing a
     newer pydantic, say) is installed from the lock after all, except SQLAlchemy and Alembic,
     which stay the application's; db-deploy checks them at start (deployer/compat.py) and
     exits 2 with one line when they are outside the supported ranges.
  4. Reused by a later call in the same job when the action's files, the job's Python and the
     distributions it holds are the same.

`run`: the inputs, handed over as JSON in DB_DEPLOY_ACTION_INPUTS (`${{ toJSON(inputs) }}`),
become INPUT_<NAME> variables spelled as the runner spells them for a container action
(`INPUT_DATABASE-URL`), then the installed `db-deploy` replaces this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

MIN_PYTHON = (3, 11)
PYTHON_TITLE = "db-deploy needs Python 3.11 or newer"
SETUP_PYTHON = "Run actions/setup-python with python-version 3.11 or newer before this action"
NEEDED = ("requirements.lock", "pyproject.toml", "README.md", "deployer/__init__.py")
DEPLOYER = "db-deploy-action"
# Never replaced by the lock's copy when the job holds them: env.py and the models run with the
# application's own versions, checked at start against deployer/compat.py's ranges.
APPLICATION_WINS = frozenset({"sqlalchemy", "alembic"})
# Parts of another distribution, installed only with it: a job holding psycopg has an
# implementation of its own (psycopg-c, psycopg-binary at its version, or the system's libpq);
# the lock's psycopg-binary, of another release, would be loaded in its place.
COMPANIONS = {"psycopg-binary": "psycopg"}
INPUTS_VARIABLE = "DB_DEPLOY_ACTION_INPUTS"
PIP = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off")

# What the job's Python holds, as its processes see it (PYTHONPATH, user site included): each
# distribution the first time it appears on sys.path (the copy an import finds), and its
# site-packages folders.
_PROBE = r"""
import json, site, sys
from importlib import metadata
seen = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        seen.setdefault(name, dist.version)
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE:
    dirs.append(site.getusersitepackages())
print(json.dumps({"dists": seen, "site": dirs}))
"""


# --------------------------------------------------------------------------- small parts


def canonical(name: str) -> str:
    """PEP 503 normalised name: `Typing_Extensions` and `typing-extensions` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def input_variable(name: str) -> str:
    """The variable the runner gives a container action for input `name` (actions/runner
    Handler.cs AddInputsToEnvironment): `database-url` -> `INPUT_DATABASE-URL`."""
    return "INPUT_" + name.replace(" ", "_").upper()


def annotate(kind: str, title: str, message: str) -> None:
    print(f"::{kind} title={title}::{message}")


def write_outputs(values: dict[str, str]) -> None:
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(f"{k}={v}\n" for k, v in values.items())


def locked_requirements(lock: Path) -> dict[str, str]:
    """requirements.lock as {canonical name: its requirement text, hashes included}, in order."""
    out: dict[str, str] = {}
    block: list[str] = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if block:
            block.append(stripped)
        elif stripped and not stripped.startswith(("#", "-")):
            block = [stripped]
        else:
            continue
        if not stripped.endswith("\\"):
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", block[0])
            if match:
                out[canonical(match.group(0))] = "\n".join(block)
            block = []
    return out


class SetupFailed(Exception):
    """One `::error` annotation, then exit 2."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(message)
        self.title = title
        self.message = message


# --------------------------------------------------------------------------- install


def check_python() -> None:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info < MIN_PYTHON:
        raise SetupFailed(
            PYTHON_TITLE,
            f"The job's Python is {version} ({sys.executable}). {SETUP_PYTHON} "
            "(and your own pip install after it).",
        )
    print(f"db-deploy runs on the job's Python {version}: {sys.executable}")


def check_checkout(root: Path) -> None:
    """The action's checkout holds what the install needs."""
    for needed in NEEDED:
        if not (root / needed).is_file():
            raise SetupFailed(
                "db-deploy: incomplete action checkout",
                f"{root / needed} is missing. Use the action as "
                "<owner>/db-deploy-action/python@<ref>: it installs the deployer from the "
                "repository it comes from.",
            )


def probe_job() -> tuple[dict[str, str], list[str]]:
    """The job's distributions {name: version} and its site-packages folders."""
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SetupFailed(
            "db-deploy: the job's Python",
            f"{sys.executable} could not list its packages: {proc.stderr.strip()[-300:]}",
        )
    found = json.loads(proc.stdout)
    return dict(found["dists"]), list(found["site"])


def environment_key(root: Path, dists: dict[str, str]) -> str:
    """What the environment is built from: the action's files, the job's Python and what it
    holds. Reused only when all are the same."""
    digest = hashlib.sha256(f"{sys.executable}\n{sys.version}\n{root}\n".encode())
    digest.update(json.dumps(dists, sort_keys=True).encode())
    files = [root / "requirements.lock", root / "pyproject.toml"]
    files += sorted((root / "deployer").rglob("*.py"))
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        digest.update(rel + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Installer:
    """Builds (or reuses) the deployer's environment over the job's Python."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.home = home
        self.venv = home / "venv"
        windows = os.name == "nt"
        self.python = self.venv / ("Scripts/python.exe" if windows else "bin/python")
        self.lock = locked_requirements(root / "requirements.lock")

    def install(self) -> None:
        check_checkout(self.root)
        dists, site_dirs = probe_job()
        key = environment_key(self.root, dists)
        stamp = self.venv / ".db-deploy-key"
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == key:
            print(f"Reusing the deployer's environment {self.venv} (same action files, same "
                  "Python, same packages).")  # fmt: skip
        else:
            self.build(dists, site_dirs)
            stamp.write_text(key + "\n", encoding="utf-8")
        scripts = self.venv_query("import sysconfig; print(sysconfig.get_path('scripts'))")
        subprocess.run([str(Path(scripts) / "db-deploy"), "--version"], check=False)
        write_outputs({"python": str(self.python), "bin": scripts})

    def build(self, dists: dict[str, str], site_dirs: list[str]) -> None:
        shutil.rmtree(self.venv, ignore_errors=True)
        shutil.rmtree(self.home / "src", ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(self.venv)], check=False
        )
        if made.returncode != 0:
            raise SetupFailed(
                "db-deploy: no virtual environment",
                f"{sys.executable} -m venv failed (on Debian/Ubuntu system Pythons: apt-get "
                "install python3-venv, or use actions/setup-python).",
            )
        held = {canonical(n) for n in dists}
        missing = [n for n in self.lock if n not in held and COMPANIONS.get(n, n) not in held]
        with group("Locked runtime dependencies (requirements.lock, hash-checked)"):
            kept = sorted(n for n in self.lock if n not in missing)
            if kept:
                print("From the job's Python (its own versions):", ", ".join(kept))
            self.pip_lock(missing)
        with group("The deployer (this checkout, --no-deps)"):
            src = self.home / "src"
            src.mkdir(parents=True)
            shutil.copy2(self.root / "pyproject.toml", src)
            shutil.copy2(self.root / "README.md", src)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(self.root / "deployer", src / "deployer", ignore=ignore)
            if subprocess.run([str(self.python), *PIP, "--no-deps", str(src)]).returncode:
                raise SetupFailed(
                    "db-deploy: install failed",
                    f"pip could not install the deployer from {self.root}; see the log above.",
                )
            shutil.rmtree(src, ignore_errors=True)
        # Only now: pip's isolated build of the deployer would import a job venv's own (older)
        # setuptools through this .pth (Python 3.11's `python -m venv` ships setuptools 65).
        self.add_job_site(site_dirs)
        self.reconcile(set(missing))

    def add_job_site(self, job_site: list[str]) -> None:
        """A job Python that is itself a virtual environment (uv, poetry, an activated venv):
        --system-site-packages reaches only its base interpreter, so its own site-packages
        are added by a .pth file, after the deployer's environment's, before the base's."""
        query = "import json, sys, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], sys.path]))"
        purelib, path = json.loads(self.venv_query(query))
        seen = {os.path.realpath(p) for p in path if p}
        extra = [d for d in job_site if os.path.isdir(d) and os.path.realpath(d) not in seen]
        if extra:
            lines = [f"import site; site.addsitedir({d!r})\n" for d in extra]
            pth = Path(purelib) / "_db_deploy_job_python.pth"
            pth.write_text("".join(lines), encoding="utf-8")
            print("The job's Python is a virtual environment; also visible:", ", ".join(extra))

    def pip_lock(self, names: list[str]) -> None:
        if not names:
            return
        lock = self.home / "requirements.install.txt"
        lock.write_text("\n".join(self.lock[n] for n in names) + "\n", encoding="utf-8")
        argv = [str(self.python), *PIP, "--only-binary=:all:", "--ignore-installed"]
        argv += ["--require-hashes", "--no-deps", "-r", str(lock)]
        if subprocess.run(argv, check=False).returncode != 0:
            where = self.venv_query("import platform; print(platform.python_version(), platform.machine())")  # fmt: skip
            raise SetupFailed(
                "db-deploy: install failed",
                f"pip could not install requirements.lock into {self.venv} for Python {where}; "
                "see the log above.",
            )
        lock.unlink()

    def reconcile(self, installed: set[str]) -> None:
        """`pip check`, for the deployer and the packages of its lock: what one of them needs
        in another version than the job's comes from the lock after all (not SQLAlchemy nor
        Alembic: deployer/compat.py judges those at start)."""
        ours = set(self.lock) | {DEPLOYER}
        for _ in range(len(self.lock) + 1):
            proc = subprocess.run(
                [str(self.python), "-m", "pip", "check", "--disable-pip-version-check"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            wanted: set[str] = set()
            left: list[str] = []
            for line in proc.stdout.splitlines():
                needs = _needs(line)
                if needs is None or needs[0] not in ours:
                    continue
                required = needs[1]
                if required in self.lock and required not in installed | APPLICATION_WINS:
                    wanted.add(required)
                else:
                    left.append(line)
            if not wanted:
                for line in left:
                    print(f"pip check: {line}")
                return
            names = [n for n in self.lock if n in wanted]
            with group("Needed in another version than the job's: " + ", ".join(names)):
                self.pip_lock(names)
            installed |= wanted

    def venv_query(self, code: str) -> str:
        proc = subprocess.run(
            [str(self.python), "-P", "-c", code], capture_output=True, text=True, check=True
        )
        return proc.stdout.strip()


def _needs(line: str) -> tuple[str, str] | None:
    """(requiring, required) canonical names from one line of `pip check`, or None."""
    match = re.match(r"(\S+) \S+ requires ([^,\s\[;]+)", line)
    if not match:
        match = re.match(r"(\S+) \S+ has requirement .*, but you have (\S+) \S+\.$", line)
    return (canonical(match.group(1)), canonical(match.group(2))) if match else None


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    """`::group::` … `::endgroup::` around a part of the log."""
    print(f"::group::{title}")
    try:
        yield
    finally:
        print("::endgroup::")


def install() -> int:
    try:
        check_python()
        root = Path(os.environ.get("DB_DEPLOY_ACTION_ROOT") or Path(__file__).parent.parent)
        home = os.environ.get("DB_DEPLOY_ACTION_HOME") or os.path.join(
            os.environ.get("RUNNER_TEMP") or ".", "db-deploy-action"
        )
        Installer(root.resolve(), Path(home)).install()
    except SetupFailed as exc:
        annotate("error", exc.title, exc.message)
        return 2
    return 0


# --------------------------------------------------------------------------- run


def run() -> int:
    """Hand the inputs over as the runner would, then become `db-deploy`."""
    try:
        inputs = json.loads(os.environ.get(INPUTS_VARIABLE) or "{}")
        if not isinstance(inputs, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        annotate("error", "db-deploy: inputs", f"{INPUTS_VARIABLE} is not a JSON object ({exc}).")
        return 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_DEPLOY_ACTION_")}
    for name, value in inputs.items():
        env[input_variable(str(name))] = "" if value is None else str(value)
    import sysconfig

    script = Path(sysconfig.get_path("scripts")) / "db-deploy"
    sys.stdout.flush()
    os.execve(script, [str(script)], env)
    return 1  # not reached: execve replaces this process


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # in order with pip's output
    if args == ["install"]:
        return install()
    if args == ["run"]:
        return run()
    sys.stderr.write("usage: bootstrap.py install | run (python/action.yml's steps)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
