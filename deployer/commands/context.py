"""The run context every command takes: the settings, the record being filled, the observer,
the run's sessions and engines, and the deploy lock. Building it does no I/O; what it opens
closes with it (`with Context(...) as ctx:`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from deployer import db
from deployer.errors import ConfigError
from deployer.results import RunResult, Telemetry, utcnow
from deployer.settings import Settings

if TYPE_CHECKING:
    from deployer.steps.version_table import VersionTable


class Observer(Protocol):
    """Where progress goes while the run is under way."""

    def step(self, name: str) -> AbstractContextManager[None]: ...
    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...


class Context:
    """One run of one command: the settings, the record being filled and the observer."""

    def __init__(self, settings: Settings, observer: Observer) -> None:
        self.settings = settings
        self.observer = observer
        self.result = RunResult(
            command=settings.command,
            telemetry=Telemetry.from_env(settings.environment),
            dry_run=settings.dry_run or settings.command == "plan",
            seed_requested=settings.run_seed,
        )
        self.current_step = "config"
        self.stack = ExitStack()
        self.engines: dict[tuple[str, float, str, str], sa.Engine] = {}
        self.handed: dict[str, sa.Connection] = {}  # see `env_connection`
        self.driver_engines: dict[tuple[object, ...], sa.Engine] = {}

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    # -- progress

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A timed step: shown by the observer, its seconds in the record."""
        self.current_step = name
        started = utcnow()
        with self.observer.step(name):
            try:
                yield
            finally:
                self.result.steps[name] = round((utcnow() - started).total_seconds(), 4)

    def at(self, name: str) -> None:
        """From now on a failure is reported as one of step `name` (untimed)."""
        self.current_step = name

    def info(self, message: str) -> None:
        self.observer.info(message)

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.observer.warning(message)

    def notice(self, message: str) -> None:
        self.result.notices.append(message)

    # -- sessions

    def spec(self, url: str, *, migration: bool = False) -> db.ConnectionSpec:
        """How to reach `url`. `migration`: the session that runs migrations and the seed gets
        the timeouts, and on PostgreSQL 14+ `client_connection_check_interval` (which only
        acts while a statement runs). The others (preflight and smoke, the idle lock session,
        the blocker watch) share one engine."""
        s = self.settings
        return db.ConnectionSpec(
            url=url,
            connect_timeout=s.connect_timeout,
            retries=s.connect_retries,
            lock_timeout=s.lock_timeout if migration else None,
            statement_timeout=s.statement_timeout if migration else None,
            client_check=migration
            and bool(self.result.preflight and self.result.preflight.server_version_num >= 140000),
        )

    def engine(self, spec: db.ConnectionSpec) -> sa.Engine:
        """The run's engine for `spec`: sessions with the same URL and options share one, so
        that SQLAlchemy initialises its dialect (a handful of queries) once for them."""
        engine = self.engines.get(spec.engine_key)
        if engine is None:
            engine = self.engines[spec.engine_key] = spec.engine()
            self.stack.callback(engine.dispose)
        return engine

    def connect(self, spec: db.ConnectionSpec, *, autocommit: bool = False) -> sa.Connection:
        """A session of the run (closed with it)."""
        engine = self.engine(spec)
        if autocommit:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        conn = db.connect(engine, spec, on_retry=self.retrying, step=self.current_step)
        self.closing(conn)
        return conn

    def session(self, *, migration: bool = False) -> sa.Connection:
        """A session on direct-database-url (the migrations' URL)."""
        return self.connect(self.spec(self.settings.direct_url, migration=migration))

    def env_connection(self, ours: sa.Connection, url: str = "") -> sa.Connection | None:
        """The connection env.py is handed (`config.attributes["connection"]`), as the inputs
        env-connection and url-driver say: `ours` (shared, with psycopg), None (none: env.py
        builds its own engine from sqlalchemy.url / DATABASE_URL), else a migration session
        of its own, opened once a run: AUTOCOMMIT for autocommit, and with url-driver
        psycopg2 a psycopg2 one (the async drivers' env.py gets a psycopg 3 one: a sync
        connection is what Alembic's cookbook hands over). `url`: the database `ours` is on,
        when not direct-database-url (drift's scratch database)."""
        s = self.settings
        driver = "psycopg2" if s.url_driver == "psycopg2" else "psycopg"
        if s.env_connection == "none":
            return None
        if s.env_connection == "shared" and driver == "psycopg":
            return ours
        url = url or s.direct_url
        handed = self.handed.get(url)
        if handed is None or handed.closed or handed.invalidated:
            spec = self.spec(url, migration=True)
            if url != s.direct_url:  # a scratch server: its version is not the one preflight read
                spec = dataclasses.replace(spec, client_check=False)
            engine = self.driver_engine(spec, driver)
            if s.env_connection == "autocommit":
                engine = engine.execution_options(isolation_level="AUTOCOMMIT")
            handed = db.connect(engine, spec, on_retry=self.retrying, step=self.current_step)
            self.handed[url] = handed
            self.closing(handed)
        return handed

    def driver_engine(self, spec: db.ConnectionSpec, driver: str) -> sa.Engine:
        """The run's engine for `spec` through `driver` (psycopg: the deployer's own)."""
        if driver == "psycopg":
            return self.engine(spec)
        key = (*spec.engine_key, driver)
        engine = self.driver_engines.get(key)
        if engine is None:
            # As `db.ConnectionSpec.engine` builds the deployer's own: the same URL, timeouts,
            # application_name and session options (after the URL's own), another driver.
            url = db.sqlalchemy_url(spec.url, driver)
            theirs = url.query.get("options")
            options = " ".join(
                o for o in (theirs if isinstance(theirs, str) else "", spec.options) if o
            )
            connect_args: dict[str, object] = {
                "connect_timeout": max(1, round(spec.connect_timeout)),
                "application_name": spec.application_name,
            }
            if options:
                connect_args["options"] = options
            try:
                engine = sa.create_engine(
                    url,
                    poolclass=sa.pool.NullPool,
                    connect_args=connect_args,
                    use_native_hstore=False,
                )
            except ModuleNotFoundError as exc:
                raise ConfigError(
                    f"url-driver {driver}: the driver is not installed ({exc.name}): add it to "
                    "requirements (psycopg2-binary) or use another url-driver",
                    step="config",
                ) from None
            self.driver_engines[key] = engine
            self.stack.callback(engine.dispose)
        return engine

    def closing(self, conn: sa.Connection) -> None:
        """Close `conn` with the run."""
        self.stack.callback(close, conn)

    def retrying(self, attempt: int, reason: str, delay: float) -> None:
        self.info(f"connection attempt {attempt} failed ({reason}); retrying in {delay:.1f}s")

    # -- the deploy lock

    @contextmanager
    def deploy_lock(self, where: VersionTable) -> Iterator[None]:
        """The deploy lock (keyed on the database and the version table) on an idle
        AUTOCOMMIT session of its own."""
        from deployer.steps.version_table import deploy_lock

        lock = self.connect(self.spec(self.settings.direct_url), autocommit=True)
        database = self.result.preflight.database if self.result.preflight else ""
        wait = self.settings.deploy_lock_wait
        with deploy_lock(lock, where, database=database, wait=wait, on_wait=self.lock_wait):
            yield

    def lock_wait(self, holder: object) -> None:
        who = f" (held by {holder})" if holder else ""
        wait = self.settings.deploy_lock_wait
        self.info(f"another deploy holds the lock{who}: waiting up to {wait:g}s")


def close(conn: sa.Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass
