"""Database access: engines, connection retries, session timeouts and the deploy lock.

Every connection the deployer opens comes from here, so the rules live in one place:
- psycopg 3 through SQLAlchemy 2, one connection at a time (NullPool: a deploy is short-lived);
- `connect_timeout` per attempt and bounded retries with exponential backoff and full jitter for
  databases that wake up slowly; authentication and missing-database errors are not retried;
- `application_name=db-deploy`, and on the migration session `lock_timeout`/`statement_timeout`;
- the deploy lock, a session-level advisory lock held on an idle session of its own.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from deployer.errors import ConfigError, UnreachableError
from deployer.redact import cut

APPLICATION_NAME = "db-deploy"

# Errors that no retry will cure: say so at once. The database answered, but refused us (exit 3,
# as for an unreachable database)…
_PERMANENT = re.compile(
    r"password authentication failed|authentication failed|no password supplied|"
    r"database \".*\" does not exist|role \".*\" does not exist|"
    r"no pg_hba.conf entry|SSL .*required|server does not support SSL",
    re.IGNORECASE,
)
# …or the connection settings themselves are wrong: bad input (exit 2).
_BAD_SETTINGS = re.compile(
    r"invalid connection option|invalid \w+ value|invalid require_auth|invalid URI|"
    r"invalid value for parameter|"
    r"unrecognized configuration parameter|invalid integer value|invalid port",
    re.IGNORECASE,
)


def sqlalchemy_url(url: str, driver: str = "psycopg") -> URL:
    """A user's `postgres://` / `postgresql://` / `postgresql+X://` URL → SQLAlchemy URL with
    the given driver (psycopg 3 for the deployer's own connections)."""
    parsed = make_url(url)
    query = {k: v for k, v in parsed.query.items() if k not in NOT_LIBPQ}
    return parsed.set(drivername=f"postgresql+{driver}", query=query)


def looks_pooled(url: str) -> str:
    """Why `url` looks like a connection pooler (PgBouncer, Supabase, Neon), or ""."""
    u = make_url(url)
    host = str(u.host or "")
    if str(u.query.get("pgbouncer", "")).lower() == "true":
        return "pgbouncer=true"
    if u.port == 6543:
        return "port 6543"
    if "-pooler" in host or ".pooler." in host:
        return f"host {host}"
    return ""


# Query parameters that Prisma-style URLs carry and libpq rejects ("invalid URI query parameter").
NOT_LIBPQ = frozenset(
    {
        "pgbouncer",
        "connection_limit",
        "pool_timeout",
        "schema",
        "sslaccept",
        "socket_timeout",
        "statement_cache_size",
        "connect_timeout_ms",
    }
)


def describe_target(url: str) -> str:
    """`host:port/database` for messages: never the user's password."""
    u = make_url(url)
    host = u.host or u.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = u.port or u.query.get("port") or 5432
    if isinstance(port, tuple):
        port = port[0]
    return f"{host}:{port}/{u.database}"


def is_local_host(url: str) -> bool:
    u = make_url(url)
    host = u.host or u.query.get("host") or ""
    if isinstance(host, tuple):
        host = host[0]
    return not host or str(host).startswith("/") or host in {"localhost", "127.0.0.1", "::1"}


def pg_milliseconds(seconds: float) -> int:
    ms = round(seconds * 1000)
    return max(ms, 1) if seconds > 0 else 0  # 0.4ms must not become 0, which means no limit


CLIENT_CHECK_MS = 2000


def session_options(
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    client_check: bool = False,
) -> str:
    """libpq `options` (also valid as PGOPTIONS) setting the session's timeouts.

    `client_connection_check_interval` (PostgreSQL 14+) makes the server notice within seconds
    that a deploy was killed, even in the middle of a long statement, and roll back and release
    its locks instead of finishing work nobody will commit."""
    opts = [f"-c client_connection_check_interval={CLIENT_CHECK_MS}"] if client_check else []
    if lock_timeout is not None:
        opts.append(f"-c lock_timeout={pg_milliseconds(lock_timeout)}")
    if statement_timeout is not None:
        opts.append(f"-c statement_timeout={pg_milliseconds(statement_timeout)}")
    return " ".join(opts)


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach one database: the URL plus the deployer's connection policy."""

    url: str
    connect_timeout: float = 10.0
    retries: int = 5
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    application_name: str = APPLICATION_NAME
    client_check: bool = False  # server is 14+: set client_connection_check_interval

    @property
    def options(self) -> str:
        """This session's libpq `options` (its timeouts), sent in the startup packet."""
        return session_options(self.lock_timeout, self.statement_timeout, self.client_check)

    @property
    def engine_key(self) -> tuple[str, float, str, str]:
        """Specs with the same key can share one engine (and SQLAlchemy's one-off dialect
        initialisation): the same URL and the same session options."""
        return (self.url, self.connect_timeout, self.application_name, self.options)

    def engine(self, **kw: Any) -> sa.Engine:
        url = sqlalchemy_url(self.url)
        connect_args: dict[str, Any] = {
            "connect_timeout": max(1, round(self.connect_timeout)),
            "application_name": self.application_name,
        }
        # In connect_args, so that a session SQLAlchemy reconnects gets them too. After any
        # `options` of the user's own URL, which connect_args would otherwise replace.
        theirs = url.query.get("options")
        options = " ".join(
            o for o in (theirs if isinstance(theirs, str) else "", self.options) if o
        )
        if options:
            connect_args["options"] = options
        kw.setdefault("use_native_hstore", False)  # no hstore lookup per new engine
        return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args, **kw)


def backoff_delays(retries: int, base: float = 0.5, cap: float = 8.0) -> Iterator[float]:
    """Full-jitter exponential backoff (AWS Architecture Blog): uniform(0, min(cap, base·2^n))."""
    for attempt in range(retries - 1):
        yield random.uniform(0, min(cap, base * 2**attempt))


def connect(
    engine: sa.Engine,
    spec: ConnectionSpec,
    *,
    on_retry: Callable[[int, str, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    step: str = "preflight",
) -> sa.Connection:
    """Open a connection with bounded retries. Raises UnreachableError (exit 3) for `step`."""
    delays = backoff_delays(spec.retries)
    attempt = 0
    target = describe_target(spec.url)
    while True:
        attempt += 1
        try:
            return engine.connect()
        except sa.exc.OperationalError as exc:
            reason = server_message(exc)
            if _BAD_SETTINGS.search(reason):
                raise ConfigError(
                    f"invalid connection settings for {target}: {reason}", step=step
                ) from None
            permanent = bool(_PERMANENT.search(reason))
            delay = None if permanent else next(delays, None)
            if delay is None:
                tries = "" if permanent else f" after {attempt} attempt{'s' * (attempt > 1)}"
                raise UnreachableError(
                    f"cannot connect to {target}{tries}: {reason}", step=step
                ) from None
            if on_retry:
                on_retry(attempt, reason, delay)
            sleep(delay)
        except (sa.exc.ArgumentError, sa.exc.ProgrammingError, sa.exc.InterfaceError) as exc:
            # psycopg raises ProgrammingError for an unknown URI parameter (?foo=bar).
            raise ConfigError(
                f"invalid connection settings for {target}: {server_message(exc)}", step=step
            ) from None


def server_message(exc: BaseException) -> str:
    """The driver's own message, on one line, without SQLAlchemy's statement echo and links."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    text = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text)
    text = text.split("\n[SQL:", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(orig).__name__


# --------------------------------------------------------------------------- deploy lock


def lock_key(database: str, version_table: str) -> int:
    """A stable signed 64-bit advisory-lock key for (database, version table)."""
    digest = hashlib.sha256(f"db-deploy:{database}:{version_table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    since: str
    user: str

    def __str__(self) -> str:
        app = self.application_name or "?"
        return f"pid {self.pid} ({app}, user {self.user}, since {self.since})"


def lock_holder(conn: sa.Connection, key: int) -> LockHolder | None:
    row = conn.execute(
        sa.text(
            """
            SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, ''),
                   to_char(coalesce(a.xact_start, a.backend_start), 'YYYY-MM-DD"T"HH24:MI:SSOF')
            FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE l.locktype = 'advisory' AND l.granted
              AND l.classid = ((:key >> 32) & 4294967295)::oid
              AND l.objid = (:key & 4294967295)::oid AND l.objsubid = 1
            LIMIT 1
            """
        ),
        {"key": key},
    ).first()
    if row is None:
        return None
    return LockHolder(pid=row[0], application_name=row[1], user=row[2], since=row[3])


@contextmanager
def deploy_lock(
    conn: sa.Connection,
    key: int,
    wait: float,
    *,
    on_wait: Callable[[LockHolder | None], None] | None = None,
    poll: float = 0.5,
) -> Iterator[float]:
    """Hold the session-level advisory lock `key` on `conn` (an AUTOCOMMIT connection that does
    nothing else, so the lock never sits inside an open transaction). Yields the seconds waited.
    Raises UnreachableError (exit 3) when `wait` passes first."""
    started = time.monotonic()
    told = False
    while True:
        if conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            break
        holder = lock_holder(conn, key)
        if on_wait and not told:
            on_wait(holder)
            told = True
        if time.monotonic() - started >= wait:
            who = f" held by {holder}" if holder else ""
            raise UnreachableError(
                f"another deploy of this database is running{who}; gave up after {wait:g}s "
                "(deploy-lock-wait)",
                step="lock",
                obj=str(holder) if holder else "",
            )
        time.sleep(min(poll, max(0.05, wait - (time.monotonic() - started))))
    try:
        yield time.monotonic() - started
    finally:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except sa.exc.DBAPIError:
            pass  # the session is gone, and the lock with it


# --------------------------------------------------------------------------- who blocks us


@dataclass(frozen=True)
class Blocker:
    pid: int
    application_name: str
    user: str
    query_start: str
    state: str
    query: str

    def __str__(self) -> str:
        # Redacted before it is cut: a secret crossing the cut would no longer be recognised.
        query = f": {cut(self.query, 80)}" if self.query else ""
        return (
            f"pid {self.pid} ({self.application_name or '?'}, user {self.user}, query started "
            f"{self.query_start}, {self.state}{query})"
        )


_BLOCKERS = sa.text(
    """
    SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, ''),
           coalesce(to_char(a.query_start, 'YYYY-MM-DD"T"HH24:MI:SSOF'), '?'),
           coalesce(a.state, '?'), left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 4000)
    FROM pg_stat_activity a
    WHERE a.pid IN (SELECT unnest(pg_blocking_pids(p)) FROM unnest(CAST(:pids AS int[])) p)
      AND NOT a.pid = ANY (CAST(:pids AS int[]))
    ORDER BY a.query_start
    LIMIT 1
    """
)


class BlockerWatch:
    """While a migration runs, note (on a connection of its own) which session blocks it, so a
    lock timeout can name the culprit instead of just failing. `start()` when the first revision
    runs (a no-op deploy opens no connection for it); leaving the `with` block stops it.
    `engine`: the run's, for a session without timeouts; the watch does not dispose of it."""

    def __init__(self, engine: sa.Engine, pid: int, interval: float = 0.2) -> None:
        self.engine = engine
        self.pid = pid
        self.pids = [pid]  # ours, and the sessions env.py opens (`add`)
        self.interval = interval
        self.blocker: Blocker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="db-deploy-blocker-watch", daemon=True
        )

    def add(self, pid: int) -> None:
        """Watch session `pid` too (one env.py opened)."""
        if pid not in self.pids:
            self.pids = [*self.pids, pid]

    def start(self) -> None:
        """Start watching (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def __enter__(self) -> BlockerWatch:
        _WATCHES.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _WATCHES:
            _WATCHES.remove(self)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with self.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                while not self._stop.wait(self.interval):
                    row = conn.execute(_BLOCKERS, {"pids": list(self.pids)}).first()
                    if row is not None:
                        self.blocker = Blocker(*row)
        except sa.exc.DBAPIError:
            pass  # best effort: the migration's own error still tells what happened


_WATCHES: list[BlockerWatch] = []  # the watches of the migrations running now


def cancel_running() -> None:
    """Cancel, from a session of its own, the statement each running migration (ours and
    env.py's sessions) has on the server: for a cancel the main thread cannot deliver itself."""
    for watch in list(_WATCHES):
        try:
            with watch.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(
                    sa.text("SELECT pg_cancel_backend(p) FROM unnest(CAST(:pids AS int[])) p"),
                    {"pids": list(watch.pids)},
                )
        except sa.exc.DBAPIError:
            pass


def is_lock_timeout(exc: BaseException) -> bool:
    """lock_not_available (55P03), raised by `exc` or by an error it wraps or came from."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (getattr(current, "orig", None), current):
            if getattr(candidate, "sqlstate", None) == "55P03":
                return True
        current = current.__cause__ or current.__context__
    return False


def dbapi_backend_pid(dbapi_connection: Any) -> int:
    """The server pid of a driver's connection (psycopg 3 or psycopg2), 0 when unknown."""
    try:
        info = getattr(dbapi_connection, "info", None)
        pid = getattr(info, "backend_pid", None)
        if pid is None and hasattr(dbapi_connection, "get_backend_pid"):
            pid = dbapi_connection.get_backend_pid()
        return int(pid or 0)
    except Exception:  # noqa: BLE001 - best effort
        return 0


def backend_pid(conn: sa.Connection) -> int:
    raw = conn.connection.driver_connection
    return int(raw.info.backend_pid)  # type: ignore[union-attr]
