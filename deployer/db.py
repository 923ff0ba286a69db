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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from deployer.errors import ConfigError, UnreachableError
from deployer.redact import cut
from deployer.results.run import LockAttempt
from deployer.sql import (
    Build,
    Detach,
    concurrent_build,
    concurrent_detach,
    may_build_concurrently,
    qualified,
)

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


Identity = tuple[str, int, int]  # current_database(), its oid, when its server started (µs)

_IDENTITY = (
    "SELECT current_database(), (SELECT oid FROM pg_database WHERE datname = current_database()),"
    " (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint"
)


def server_identity(conn: sa.Connection) -> Identity | None:
    """Which database `conn` is in, whatever address reached it (a pooler, `localhost` for
    `127.0.0.1`, a socket for TCP): its name, its oid and when its server started, in
    microseconds since the epoch whatever the session's TimeZone (two servers do not start in
    the same microsecond). Read with functions every role may call; inside a savepoint when the
    session is in a transaction block (a failure then leaves it as it was; on an AUTOCOMMIT
    session, where SQLAlchemy still counts a transaction, there is no block to keep). None
    when it cannot be read (a failed transaction block, a lost session)."""
    try:
        status = transaction_status(conn.connection.dbapi_connection)
        if status == INERROR:
            return None
        in_block = conn.in_transaction() if status is None else status != IDLE
        with conn.begin_nested() if in_block else nullcontext():
            row = conn.exec_driver_sql(_IDENTITY).one()
        return (str(row[0]), int(row[1]), int(row[2]))
    except (sa.exc.SQLAlchemyError, TypeError, ValueError):
        return None


Address = tuple[str, str, int, str, str]  # host, hostaddr, port, database, user


def driver_address(conn: sa.Connection) -> Address | None:
    """(host, hostaddr, port, database, user) of `conn` as its driver reports them (libpq's
    PQhost, PQhostaddr, PQport, PQdb, PQuser), None when it cannot."""
    try:
        info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        host, port, dbname = str(info.host or ""), int(info.port), str(info.dbname)
        user = str(info.user or "")
    except Exception:  # noqa: BLE001 - another driver (asyncpg, pg8000), a closed connection
        return None
    try:
        hostaddr = str(info.hostaddr or "")  # psycopg 3 on libpq 12+; not psycopg2
    except Exception:  # noqa: BLE001
        hostaddr = ""
    return host, hostaddr, port, dbname, user


def url_session(url: str, *, connect_timeout: int = 10) -> tuple[Address | None, Identity | None]:
    """`driver_address` and `server_identity` of a session of its own to `url` (a user's URL;
    its connect_timeout, if it has one, else `connect_timeout`): where libpq took it, its
    defaults (PGHOST, PGPORT, a service file) applied, and which database the server says it
    is; (None, None) when it cannot be opened."""
    parsed = sqlalchemy_url(url)
    args = {} if "connect_timeout" in parsed.query else {"connect_timeout": connect_timeout}
    try:
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=args)
        try:
            with engine.connect() as conn:
                return driver_address(conn), server_identity(conn)
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError:
        return None, None


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
    """The session holding the deploy lock, as pg_stat_activity shows it."""

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
    """A session holding a lock that a statement of the deploy waits for."""

    pid: int
    application_name: str
    user: str
    query_start: str
    state: str
    query: str
    age: float | None = None  # seconds since its transaction (else its query) began

    def __str__(self) -> str:
        # Redacted before it is cut: a secret crossing the cut would no longer be recognised.
        query = f": {cut(self.query, 80)}" if self.query else ""
        age = f", for {self.age:.1f}s" if self.age is not None else ""
        return (
            f"pid {self.pid} ({self.application_name or '?'}, user {self.user}, query started "
            f"{self.query_start}, {self.state}{age}{query})"
        )


# Who blocks our sessions (the first to have begun). pg_blocking_pids only for a session that
# waits for a lock, or may: NULL is a session of another role, whose wait this role may not
# see; IPC a parallel query's leader, whose workers wait for the lock.
_BLOCKERS = sa.text(
    """
    SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, ''),
           coalesce(to_char(a.query_start, 'YYYY-MM-DD"T"HH24:MI:SSOF'), '?'),
           coalesce(a.state, '?'), left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 4000),
           extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.query_start))::float8
    FROM pg_stat_activity a
    WHERE a.pid IN (
        SELECT unnest(pg_blocking_pids(w.pid)) FROM pg_stat_activity w
        WHERE w.pid = ANY (CAST(:pids AS int[]))
          AND coalesce(w.wait_event_type, 'Lock') IN ('Lock', 'IPC')
    )
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
        ladder = _LADDER
        if ladder is not None:  # look often enough to see the blocker of a short attempt
            interval = min(interval, max(0.05, ladder.current / 2))
        self.interval = interval
        self.ladder = ladder
        self.blocker: Blocker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{_OWN_THREADS}blocker-watch", daemon=True
        )

    def add(self, pid: int) -> None:
        """Watch session `pid` too (one env.py opened)."""
        if pid not in self.pids:
            self.pids = [*self.pids, pid]

    def start(self) -> None:
        """Start watching (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            _mark()
            self._thread.start()

    def __enter__(self) -> BlockerWatch:
        if not _WATCHES:
            for name, fn in _TIMING_EVENTS:
                sa.event.listen(sa.Engine, name, fn)
        _WATCHES.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _WATCHES:
            _WATCHES.remove(self)
            if not _WATCHES:
                for name, fn in _TIMING_EVENTS:
                    sa.event.remove(sa.Engine, name, fn)
                _RUNNING.clear()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # The server is asked only while a statement has run for half an interval or more
        # (one waiting on a lock, or a long one), or none has begun or ended for as long (one
        # sent on the driver's own cursor, which SQLAlchemy does not see; but also env.py's
        # imports, a revision's Python work, a back-off): a migration of quick statements asks
        # nothing, a pause in them costs a read of pg_stat_activity, and pg_blocking_pids runs
        # only for a session that waits for a lock.
        slow = self.interval / 2
        try:
            with self.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                while not self._stop.wait(self.interval):
                    if not _slow_or_silent(slow):
                        continue
                    row = conn.execute(_BLOCKERS, {"pids": list(self.pids)}).first()
                    if row is not None:
                        self.blocker = Blocker(*row)
                        if self.ladder is not None:
                            self.ladder.blocker = self.blocker
        except sa.exc.DBAPIError:
            pass  # best effort: the migration's own error still tells what happened


_WATCHES: list[BlockerWatch] = []  # the watches of the migrations running now

# While a watch runs: the statements running now on any engine (ours and env.py's), by
# connection, with when each began, and when the last one began or ended (`_last_event`), so
# that the watch asks the server only when one is slow or all are silent.
_RUNNING: dict[int, float] = {}
_last_event = 0.0


def _mark() -> None:
    global _last_event
    _last_event = time.perf_counter()


def _slow_or_silent(seconds: float) -> bool:
    now = time.perf_counter()
    running = list(_RUNNING.values())
    if running:
        return any(now - began >= seconds for began in running)
    return now - _last_event >= seconds


def _statement_began(conn: Any, *_args: Any) -> None:
    _mark()
    _RUNNING[id(conn)] = _last_event


def _statement_ended(conn: Any, *_args: Any) -> None:
    _RUNNING.pop(id(conn), None)
    _mark()


def _statement_failed(context: Any) -> None:
    _RUNNING.pop(id(context.connection), None)
    _mark()


_TIMING_EVENTS = (
    ("before_cursor_execute", _statement_began),
    ("after_cursor_execute", _statement_ended),
    ("handle_error", _statement_failed),
)


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
            if "55P03" in (
                getattr(candidate, "sqlstate", None),
                getattr(candidate, "pgcode", None),
            ):
                return True
        current = current.__cause__ or current.__context__
    return False


def dbapi_backend_pid(dbapi_connection: Any) -> int:
    """The server pid of a driver's connection (psycopg 3 or psycopg2, asyncpg, or SQLAlchemy's
    async adapter of one), 0 when unknown."""
    try:
        info = getattr(dbapi_connection, "info", None)
        pid = getattr(info, "backend_pid", None)
        if pid is None and hasattr(dbapi_connection, "get_backend_pid"):
            pid = dbapi_connection.get_backend_pid()
        if pid is None and hasattr(dbapi_connection, "get_server_pid"):  # asyncpg
            pid = dbapi_connection.get_server_pid()
        driver = getattr(dbapi_connection, "driver_connection", None)
        if pid is None and driver is not None and driver is not dbapi_connection:
            return dbapi_backend_pid(driver)  # the async adapter: the driver's own connection
        return int(pid or 0)
    except Exception:  # noqa: BLE001 - best effort
        return 0


def backend_pid(conn: sa.Connection) -> int:
    raw = conn.connection.driver_connection
    return int(raw.info.backend_pid)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the lock ladder

_OWN_THREADS = "db-deploy-"  # the name prefix of the deployer's own threads (the watch)


@dataclass(frozen=True)
class LockLadder:
    """How a migration takes its locks without queueing traffic (issue 19): each attempt with
    the `lock_timeout` of its rung (`rungs`, then the last one again), a jittered wait between
    attempts (`first_wait` doubling up to `max_wait`, each drawn in its upper half), no attempt
    starting once `budget` seconds have passed since the first. `repeats` (lock-retries): 0,
    as many attempts as the budget allows; N, at most the rungs plus N more at the last rung
    (the budget still ends them first). `cap` (lock-timeout) bounds every rung, and is the
    timeout of statements run outside a transaction (`autocommit_block`)."""

    rungs: tuple[float, ...] = (0.1, 0.2, 0.3)
    budget: float = 180.0
    repeats: int = 0
    cap: float | None = None
    first_wait: float = 0.25
    max_wait: float = 2.0

    def timeout(self, attempt: int) -> float:
        """The lock_timeout of attempt `attempt` (1-based), in seconds."""
        rung = self.rungs[min(max(attempt, 1), len(self.rungs)) - 1]
        return min(rung, self.cap) if self.cap else rung

    @property
    def max_attempts(self) -> int | None:
        return len(self.rungs) + self.repeats if self.repeats else None

    def wait(self, attempt: int) -> float:
        """The jittered wait after failed attempt `attempt`: short, so that the deploy goes
        through within a few seconds of the blocker ending; jittered, so that two deployers
        (or a deployer and the application's own retries) do not fall into step."""
        ceiling = min(self.max_wait, self.first_wait * 2 ** max(attempt - 1, 0))
        return random.uniform(ceiling / 2, ceiling)


class LockRetry:
    """The attempts of one migrate step on its ladder: the budget runs from the first
    attempt; `attempts` is every attempt, in order, for the report. `blocker`: the session the
    blocker watch saw blocking the current attempt (set from the watch's thread)."""

    def __init__(
        self,
        ladder: LockLadder,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ladder = ladder
        self.attempts: list[LockAttempt] = []
        self.sleep = sleep
        self.clock = clock
        self.started: float | None = None
        self.current = ladder.timeout(1)  # the rung the migration's sessions are set to
        self.blocker: Blocker | None = None
        self._began = 0.0

    @property
    def timed_out(self) -> int:
        return sum(a.timed_out for a in self.attempts)

    @property
    def spent(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def begin(self) -> float:
        """Start an attempt at the next rung; returns its lock_timeout (seconds)."""
        now = self.clock()
        if self.started is None:
            self.started = now
        self._began, self.blocker = now, None
        self.current = self.ladder.timeout(len(self.attempts) + 1)
        return self.current

    def end(
        self,
        *,
        timed_out: bool,
        timeout: float | None = None,
        scope: str = "upgrade",
        where: str = "",
        dropped_index: str = "",
    ) -> LockAttempt:
        """Record the attempt begun last (its blocker, if the watch saw one)."""
        b = self.blocker if timed_out else None
        attempt = LockAttempt(
            attempt=len(self.attempts) + 1,
            lock_timeout=self.current if timeout is None else timeout,
            timed_out=timed_out,
            scope=scope,
            where=where,
            seconds=round(self.clock() - self._began, 4),
            blocker_pid=b.pid if b else None,
            blocker_application=b.application_name if b else "",
            blocker_query_age=round(b.age, 3) if b and b.age is not None else None,
            dropped_index=dropped_index,
        )
        self.attempts.append(attempt)
        return attempt

    def wait(self) -> float | None:
        """After a timed-out attempt: sleep the jittered wait and return it; None (at once)
        when the count (lock-retries) or the budget (lock-wait-budget) is spent."""
        n = len(self.attempts)
        limit = self.ladder.max_attempts
        if limit is not None and n >= limit:
            return None
        delay = round(self.ladder.wait(n), 3)
        if self.spent + delay >= self.ladder.budget:
            return None
        if self.attempts:
            self.attempts[-1].wait = delay
        self.sleep(delay)
        return delay

    def blocked_by(self) -> str:
        """The last blocker seen, for messages."""
        last = next((a for a in reversed(self.attempts) if a.blocker_pid), None)
        if last is None:
            return ""
        age = f", in transaction for {last.blocker_query_age:g}s" if last.blocker_query_age else ""
        return f"pid {last.blocker_pid} ({last.blocker_application or '?'}{age})"


_LADDER: LockRetry | None = None  # the ladder of the migrate step running now


def set_lock_timeout(conn: sa.Connection, seconds: float | None) -> None:
    """The session's lock_timeout (`None`: back to the one it connected with), committed at
    once so that no later rollback undoes it: one statement and a commit, once per attempt
    (not per statement). Call it between transactions."""
    value = "DEFAULT" if seconds is None else str(pg_milliseconds(seconds))
    conn.exec_driver_sql(f"SET lock_timeout = {value}")
    conn.commit()


@contextmanager
def lock_ladder(retry: LockRetry, *, each_statement: bool = False) -> Iterator[LockRetry]:
    """While a migrate step runs: the blocker watches it starts report to `retry`, and a
    statement that runs outside a transaction (AUTOCOMMIT: Alembic's `autocommit_block`, or
    every statement with `env-connection: autocommit`) and fails on lock_timeout is retried
    alone (`retry_alone`), on the same cursor, within the ladder's budget: through
    SQLAlchemy's `do_execute` dialect event, so no statement pays for it unless it fails.
    `each_statement` (env-connection: autocommit): such statements climb the ladder's rungs;
    otherwise they run with the ladder's `cap` (lock-timeout), as the locks of what belongs
    in an autocommit block (CREATE INDEX CONCURRENTLY) do not queue application queries."""
    global _LADDER

    def on_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
        raw = _raw_connection(context)
        if not _alone(raw):
            return None  # in a transaction: a lock timeout fails the attempt, retried whole

        def run() -> None:
            context.dialect.do_execute(cursor, statement, parameters, context)

        sent = _as_sent(statement, parameters, context.dialect)
        retry_alone(run, raw, sent, retry, each_statement=each_statement)
        return True

    def on_execute_no_params(cursor: Any, statement: str, context: Any) -> bool | None:
        raw = _raw_connection(context)
        if not _alone(raw):
            return None

        def run() -> None:
            context.dialect.do_execute_no_params(cursor, statement, context)

        retry_alone(run, raw, statement, retry, each_statement=each_statement)
        return True

    previous, _LADDER = _LADDER, retry
    sa.event.listen(sa.Engine, "do_execute", on_execute)
    sa.event.listen(sa.Engine, "do_execute_no_params", on_execute_no_params)
    try:
        yield retry
    finally:
        sa.event.remove(sa.Engine, "do_execute", on_execute)
        sa.event.remove(sa.Engine, "do_execute_no_params", on_execute_no_params)
        _LADDER = previous


_PERCENT_DRIVERS = ("psycopg", "psycopg_async", "psycopg2")


def _as_sent(statement: str, parameters: Any, dialect: Any) -> str:
    """`statement` as the server reads it: given parameters (Alembic's `op.execute` passes
    none, as `{}`), psycopg and psycopg2 turn the `%%` SQLAlchemy escaped back into `%`."""
    if parameters is not None and getattr(dialect, "driver", "") in _PERCENT_DRIVERS:
        return statement.replace("%%", "%")
    return statement


IDLE, INERROR = (
    0,
    3,
)  # libpq's PQTRANS_IDLE and PQTRANS_INERROR, as psycopg 3 and psycopg2 give them


def transaction_status(dbapi_connection: Any) -> int | None:
    """libpq's transaction status of a DBAPI connection, read from the driver (no round trip):
    IDLE outside any transaction block, INERROR in a failed one, None when the driver does not
    say. psycopg 3 and psycopg2 (`info.transaction_status`), SQLAlchemy's async adapter (its
    driver's), asyncpg (`is_in_transaction`: IDLE, or 2 in a block), pg8000 (the status the
    server last sent)."""
    status = getattr(getattr(dbapi_connection, "info", None), "transaction_status", None)
    if status is not None:
        return int(status)
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver is not dbapi_connection:
        return transaction_status(driver)
    in_block = getattr(dbapi_connection, "is_in_transaction", None)  # asyncpg
    if callable(in_block):
        return 2 if in_block() else IDLE
    # pg8000: the status byte of the server's last ReadyForQuery (I, T or E)
    ready = getattr(dbapi_connection, "_transaction_status", None)
    return {b"I": IDLE, b"T": 2, b"E": INERROR}.get(ready) if isinstance(ready, bytes) else None


def _alone(raw: Any) -> bool:
    """Whether a statement about to run on DBAPI connection `raw` is a transaction of its own:
    AUTOCOMMIT, and no transaction block open (`BEGIN` sent by hand; a driver that does not
    say counts as outside one); not on the deployer's own threads."""
    if raw is None or not getattr(raw, "autocommit", False):
        return False
    if transaction_status(raw) not in (IDLE, None):
        return False
    return not threading.current_thread().name.startswith(_OWN_THREADS)


def _raw_connection(context: Any) -> Any:
    try:
        return context.root_connection.connection.dbapi_connection
    except Exception:  # noqa: BLE001 - no connection to speak of: not ours to retry
        return None


def retry_alone(
    run: Callable[[], None],
    raw: Any,
    statement: str,
    retry: LockRetry,
    *,
    each_statement: bool = False,
) -> None:
    """Run `run` (one statement, outside a transaction, on DBAPI connection `raw`); while it
    fails on lock_timeout, retry it alone after the ladder's jittered wait, until the budget
    is spent (then the error is raised, and the revision fails as a blocked one does). The
    invalid indexes a failed `CREATE INDEX CONCURRENTLY` or `REINDEX … CONCURRENTLY` left are
    dropped before the retry and named in the attempt (never an invalid index that was there
    before its first try: one catalog read before it, for such a statement only). A
    `DETACH PARTITION … CONCURRENTLY` whose partition is pending detach (a try cancelled in
    its second transaction, in this run or an earlier one) is completed by `… FINALIZE`
    instead: the statement itself cannot run again (one catalog read before each try).
    `each_statement`: the statement climbs the ladder's rungs (its first try runs at the
    session's rung, with no extra round trip); otherwise it runs with the cap (lock-timeout),
    set before it and the rung set back after it."""
    ladder = retry.ladder
    cap = ladder.cap or 0.0
    timeout = retry.current if each_statement else cap
    scope = f"statement {_summary(statement)}"
    # the index it builds concurrently, and the invalid indexes there were before it; or the
    # partition it detaches concurrently
    concurrent = may_build_concurrently(statement)
    built = concurrent_build(statement) if concurrent else None
    before = _invalid_before(raw) if built else "{}"
    detach = concurrent_detach(statement) if concurrent and built is None else None
    outer = retry._began  # the attempt this statement runs in (its time is its own)
    if not each_statement:
        _set(raw, cap)
    try:
        tried, leftover, dropped = False, False, ""
        while True:
            began = retry._began = retry.clock()
            retry.blocker = None
            try:
                if built and leftover:  # what the last try left, dropped before this one
                    dropped, leftover = _drop_invalid_index(raw, built, before), False
                if detach is not None and _detach_pending(raw, detach):
                    _finalize_detach(raw, detach)  # what a try (this run's or not) began
                else:
                    run()
            except Exception as exc:
                if not is_lock_timeout(exc):
                    raise
                leftover = True
                retry.end(timed_out=True, timeout=timeout, scope=scope, dropped_index=dropped)
                if retry.started is None:
                    retry.started = began
                dropped = ""
                if retry.wait() is None:
                    if built:  # given up: leave no invalid index behind
                        with _suppress_db_errors():
                            retry.attempts[-1].dropped_index = _drop_invalid_index(
                                raw, built, before
                            )
                    raise
                tried = True
                if each_statement:
                    timeout = retry.current = ladder.timeout(len(retry.attempts) + 1)
                    _set(raw, timeout)
                continue
            if tried:
                retry.end(timed_out=False, timeout=timeout, scope=scope, dropped_index=dropped)
            return
    finally:
        retry._began = outer
        if not each_statement:
            with _suppress_db_errors():
                _set(raw, retry.current)


@contextmanager
def _suppress_db_errors() -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - best effort on a connection that may be gone
        pass


def _on_raw(raw: Any, statement: str) -> list[Any]:
    """Run `statement` on a cursor of its own on DBAPI connection `raw`; its rows, if any."""
    cursor = raw.cursor()
    try:
        cursor.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def _set(raw: Any, seconds: float) -> None:
    _on_raw(raw, f"SET lock_timeout = {pg_milliseconds(seconds)}")


def _summary(statement: str) -> str:
    words = " ".join(statement.split())
    return cut(words, 80)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# The invalid indexes of the database before a concurrent build runs (their oids, an array
# literal): what a failed try leaves is told from what was there already by them, never by name
# alone (an earlier failed REINDEX's `…_ccnew`, an unnamed build's leftover of someone else's).
_INVALID = "SELECT coalesce(array_agg(indexrelid)::text, '{}') FROM pg_index WHERE NOT indisvalid"
# CREATE INDEX CONCURRENTLY: the index it names, invalid, on its table (schema-qualified).
_CREATED = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND i.indrelid = to_regclass({relation}) AND c.relname = {index}
  AND NOT i.indexrelid = ANY (CAST({before} AS oid[]))
"""
# CREATE INDEX CONCURRENTLY without a name (the server picks one): the invalid indexes on its
# table that were not there before, leaving out one another session of this database is
# building now (a build whose progress row this role may not see holds a lock that makes the
# DROP wait, and so time out, rather than drop it).
_NEW_INVALID = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND i.indrelid = to_regclass({relation})
  AND NOT i.indexrelid = ANY (CAST({before} AS oid[]))
  AND NOT EXISTS (
      SELECT FROM pg_stat_progress_create_index p
      WHERE p.index_relid = i.indexrelid AND p.pid <> pg_backend_pid()
        AND p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  )
"""
# What REINDEX … CONCURRENTLY names: a table or an index and its partitions; a schema's tables
# and materialized views; the database's, but for the system catalogs.
_REINDEX_NAMES = {
    "reindex": "SELECT to_regclass({relation}) AS oid"
    " UNION SELECT relid FROM pg_partition_tree({relation})",
    "reindex-schema": "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = {schema} AND c.relkind IN ('r', 'm')",
    "reindex-database": "SELECT oid FROM pg_class WHERE relkind IN ('r', 'm')"
    " AND relnamespace <> 'pg_catalog'::regnamespace",
}
# REINDEX CONCURRENTLY works on what it names and, for a table, on its TOAST table (partitions'
# too): the indexes there, as (name, schema-qualified name, whether it is invalid and was not
# before, whether the statement named it or a partition of it).
_REINDEXED = """
WITH named AS ({named}), heaps AS (
    SELECT coalesce(i.indrelid, c.oid) AS oid
    FROM named JOIN pg_class c ON c.oid = named.oid LEFT JOIN pg_index i ON i.indexrelid = c.oid
), tables AS (
    SELECT oid FROM heaps
    UNION SELECT reltoastrelid FROM pg_class
    WHERE oid IN (SELECT oid FROM heaps) AND reltoastrelid <> 0
)
SELECT c.relname, format('%I.%I', n.nspname, c.relname),
       NOT i.indisvalid AND NOT c.oid = ANY (CAST({before} AS oid[])),
       c.oid IN (SELECT oid FROM named)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid IN (SELECT oid FROM tables)
"""


def _regclass(schema: str | None, name: str) -> str:
    """The relation `schema.name` as a literal for `to_regclass`."""
    return _literal(qualified(schema, name))


def _invalid_before(raw: Any) -> str:
    """The oids of the database's invalid indexes now, before a concurrent build's first try
    (an array literal): none of them is what the statement leaves."""
    return str(_on_raw(raw, _INVALID)[0][0])


def _drop_invalid_index(raw: Any, build: Build, before: str) -> str:
    """After a concurrent index build failed: the invalid indexes it left (`Build`; `before`:
    the database's invalid indexes before its first try, `_invalid_before`, which are never
    its), dropped (`DROP INDEX CONCURRENTLY`, which takes no lock the application queues
    behind); returns their schema-qualified names, or "" when there are none. A drop that hits
    lock_timeout raises (the attempt timed out: the drop is tried again before the next one);
    another failure leaves the index (the retry then fails as the statement would)."""
    kind, schema, name, index = build
    relation = _regclass(schema, name) if kind in ("create", "reindex") else ""
    known = _literal(before)
    dropped: list[str] = []
    try:
        if kind == "create":  # with a name, that index; without, the table's new invalid ones
            query = _CREATED if index is not None else _NEW_INVALID
            rows = _on_raw(
                raw, query.format(relation=relation, index=_literal(str(index)), before=known)
            )
            leftovers = [r[0] for r in rows]
        else:
            named = _REINDEX_NAMES[kind].format(relation=relation, schema=_literal(schema or ""))
            rows = _on_raw(raw, _REINDEXED.format(named=named, relation=relation, before=known))
            # REINDEX INDEX: copies of the index named (its partitions'); TABLE: of any index
            originals = {str(r[0]) for r in rows if r[3] or not index}
            leftovers = [r[1] for r in rows if r[2] and _copy_of(str(r[0]), originals)]
        for leftover in leftovers:
            _on_raw(raw, f"DROP INDEX CONCURRENTLY IF EXISTS {leftover}")
            dropped.append(str(leftover))
    except Exception as exc:
        if is_lock_timeout(exc):
            raise
        # best effort: the retry reports what remains
    return ", ".join(dropped)


def _detach_pending(raw: Any, detach: Detach) -> bool:
    """Whether the partition `detach` names is pending detach from its table: a `DETACH
    PARTITION … CONCURRENTLY` cancelled in its second transaction (by lock_timeout, or a run
    that ended there), which the statement itself cannot take up again."""
    (parent, partition) = detach
    try:
        rows = _on_raw(
            raw,
            "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhdetachpending"
            f" AND inhrelid = to_regclass({_regclass(*partition)})"
            f" AND inhparent = to_regclass({_regclass(*parent)}))",
        )
    except Exception:  # noqa: BLE001 - a server before 14 (no such column): the statement speaks
        return False
    return bool(rows[0][0])


def _finalize_detach(raw: Any, detach: Detach) -> None:
    """Complete the pending detach (`… DETACH PARTITION … FINALIZE`, which waits as the
    statement's second transaction did: its lock_timeout fails the try alike)."""
    (parent, partition) = detach
    _on_raw(
        raw, f"ALTER TABLE {qualified(*parent)} DETACH PARTITION {qualified(*partition)} FINALIZE"
    )


NAME_BYTES = 63  # NAMEDATALEN - 1


def _copy_of(name: str, originals: set[str]) -> bool:
    """Whether `name` is what REINDEX CONCURRENTLY calls a copy of one of `originals`: the
    original's name (cut to fit PostgreSQL's 63 bytes when long), `_ccnew` or `_ccold`, and a
    number when the name was taken."""
    base, cc, label = name.rpartition("_cc")
    if not cc or label[:3] not in ("new", "old") or not (label[3:].isdigit() or label == label[:3]):
        return False
    if base in originals:
        return True
    cut = len(name.encode()) >= NAME_BYTES - 3  # a multibyte character may leave up to 3 unused
    return cut and any(o.startswith(base) and len(o) > len(base) for o in originals)
