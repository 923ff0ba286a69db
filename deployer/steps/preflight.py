"""Preflight: reach the database (with retries) and record who and where we are."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from deployer.db import ConnectionSpec, connect, describe_target
from deployer.results import PreflightResult

_FACTS = sa.text(
    """
    SELECT current_setting('server_version'), current_setting('server_version_num')::int,
           current_user, current_database(),
           coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)
    """
)


def preflight(
    spec: ConnectionSpec,
    engine: sa.Engine,
    *,
    on_retry: Callable[[int, str, float], None] | None = None,
) -> tuple[PreflightResult, sa.Connection]:
    """Connect (retrying as `spec` says) and read the server's facts. Returns the record and the
    open connection, which later read-only steps reuse. Raises UnreachableError (exit 3)."""
    started = time.perf_counter()
    attempts = 0

    def count_retry(attempt: int, reason: str, delay: float) -> None:
        nonlocal attempts
        attempts = attempt
        if on_retry:
            on_retry(attempt, reason, delay)

    conn = connect(engine, spec, on_retry=count_retry)
    version, version_num, user, database, tls = conn.execute(_FACTS).one()
    conn.rollback()
    result = PreflightResult(
        target=describe_target(spec.url),
        server_version=str(version).split(" ")[0],
        server_version_num=int(version_num),
        user=str(user),
        database=str(database),
        tls=bool(tls),
        attempts=attempts + 1,
        seconds=round(time.perf_counter() - started, 4),
    )
    return result, conn
