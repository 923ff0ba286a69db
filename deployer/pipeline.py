"""The pipeline: composes the steps for each command and returns one RunResult.

Steps take what they need and return records; they never print or write GitHub files. Progress
goes to an `Observer` (the GitHub or terminal console), results to the renderers afterwards.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Protocol

import sqlalchemy as sa

from deployer import db
from deployer.alembic_project import AlembicProject, find_project
from deployer.errors import ConfigError, DeployError, StepFailed
from deployer.results import RunResult, Telemetry, utcnow
from deployer.settings import Settings
from deployer.steps.migrate import inspect_env, migrate, resolve_target
from deployer.steps.preflight import preflight
from deployer.steps.seed import check_seed_file, seed
from deployer.steps.smoke import smoke
from deployer.steps.status import check_single_head, status


class Observer(Protocol):
    """Where progress goes while the run is under way."""

    def step(self, name: str) -> AbstractContextManager[None]: ...
    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...


class Run:
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

    # -- plumbing

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current_step = name
        started = utcnow()
        with self.observer.step(name):
            try:
                yield
            finally:
                self.result.steps[name] = round((utcnow() - started).total_seconds(), 4)

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.observer.warning(message)

    def spec(self, url: str, *, migration: bool = False) -> db.ConnectionSpec:
        s = self.settings
        return db.ConnectionSpec(
            url=url,
            connect_timeout=s.connect_timeout,
            retries=s.connect_retries,
            lock_timeout=s.lock_timeout if migration else None,
            statement_timeout=s.statement_timeout if migration else None,
        )

    def connect(self, spec: db.ConnectionSpec, *, autocommit: bool = False) -> sa.Connection:
        engine = spec.engine()
        if autocommit:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.stack.callback(engine.dispose)
        conn = db.connect(engine, spec, on_retry=self._retrying)
        self.stack.callback(_close, conn)
        return conn

    def _retrying(self, attempt: int, reason: str, delay: float) -> None:
        self.observer.info(
            f"connection attempt {attempt} failed ({reason}); retrying in {delay:.1f}s"
        )

    def project(self) -> AlembicProject:
        return find_project(self.settings.migrations_dir, self.settings.workspace_dir)

    def require_url(self) -> None:
        if not self.settings.url:
            raise ConfigError(
                "no database: set the database-url input (or DATABASE_URL), or use --embedded"
            )

    # -- steps shared by the commands

    def preflight(self) -> sa.Connection:
        with self.step("preflight"):
            spec = self.spec(self.settings.url)
            engine = spec.engine()
            self.stack.callback(engine.dispose)
            result, conn = preflight(spec, engine, on_retry=self._retrying)
            self.stack.callback(_close, conn)
            self.result.preflight = result
            self.observer.info(
                f"connected to {result.target} as {result.user} (PostgreSQL "
                f"{result.server_version})"
            )
            return conn

    # -- commands

    def deploy(self) -> None:
        s = self.settings
        self.require_url()
        project = self.project()
        resolve_target(project, s.target)
        check_single_head(project)
        if s.run_seed and not self.result.dry_run:
            if s.is_production and not s.allow_production_seed:
                raise ConfigError(
                    "refusing to seed the production environment: set allow-production-seed "
                    "to true if this is intended",
                    step="seed",
                )
            check_seed_file(s.seed_file)
        app = self.preflight()

        # The deploy lock is held from before the first migration to after the seed, on an
        # idle session of its own; the steps stay separate groups in the log.
        with ExitStack() as locked:
            with self.step("migrate"):
                mig = self.connect(self.spec(s.direct_url, migration=True))
                facts = inspect_env(project, mig, url=s.direct_url, workspace=s.workspace_dir)
                lock = self.connect(self.spec(s.direct_url), autocommit=True)
                key = db.lock_key(
                    self.result.preflight.database if self.result.preflight else "",
                    f"{facts.version_table_schema or ''}.{facts.version_table}",
                )
                locked.enter_context(
                    db.deploy_lock(lock, key, s.deploy_lock_wait, on_wait=self._lock_wait)
                )
                self.result.migrate = m = migrate(
                    project,
                    mig,
                    url=s.direct_url,
                    target=s.target,
                    dry_run=self.result.dry_run,
                    lock_timeout=s.lock_timeout,
                    statement_timeout=s.statement_timeout,
                    workspace=s.workspace_dir,
                    on_applied=self._applied,
                )
                if m.error:
                    where = f"revision {m.failed_revision}" if m.failed_revision else "migration"
                    raise StepFailed(
                        f"{where} failed: {m.error} (database left at "
                        f"{', '.join(m.current) or 'base'})",
                        step="migrate",
                    )
            if s.run_seed and not self.result.dry_run:
                with self.step("seed"):
                    self.result.seed = sd = seed(mig, s.seed_file)
                    if sd.error:
                        raise StepFailed(
                            f"seed failed and was rolled back: {sd.error}", step="seed"
                        )
                    self.observer.info(
                        f"seed: {sd.inserted} inserted, {sd.updated} updated, {sd.deleted} deleted"
                    )
        self.status(project, mig, facts.version_table, facts.version_table_schema)
        self.smoke(app)
        if not self.result.dry_run and not (self.result.migrate and self.result.migrate.pending):
            self.result.status = "noop"

    def status(
        self, project: AlembicProject, conn: sa.Connection, table: str, schema: str | None
    ) -> None:
        with self.step("status"):
            self.result.status_check = st = status(
                project, conn, version_table=table, version_table_schema=schema
            )
            if st.error:
                raise StepFailed(st.error, step="status")
            deployed = self.settings.command == "deploy" and not self.result.dry_run
            if st.pending and deployed and self.settings.target in {"head", "heads"}:
                raise StepFailed(
                    f"{len(st.pending)} revision(s) still pending after the deploy: "
                    + ", ".join(r.revision for r in st.pending),
                    step="status",
                )

    def smoke(self, conn: sa.Connection) -> None:
        with self.step("smoke"):
            s = self.settings
            self.result.smoke = sm = smoke(
                conn, expectations=s.smoke_expect, extensions=s.required_extensions
            )
            for idx in sm.vector_indexes:
                if idx.advice:
                    self.warn(
                        f"ivfflat index {idx.name} has lists={idx.lists} for ~{idx.rows} rows; "
                        f"pgvector suggests {idx.recommended_lists}: {idx.advice}"
                    )
            if sm.problems:
                raise StepFailed("smoke test failed: " + "; ".join(sm.problems), step="smoke")

    def status_command(self) -> None:
        self.require_url()
        project = self.project()
        self.preflight()
        mig = self.connect(self.spec(self.settings.direct_url, migration=True))
        facts = inspect_env(
            project, mig, url=self.settings.direct_url, workspace=self.settings.workspace_dir
        )
        self.status(project, mig, facts.version_table, facts.version_table_schema)
        st = self.result.status_check
        self.result.status = "noop" if st and st.up_to_date else "success"

    def smoke_command(self) -> None:
        self.require_url()
        self.smoke(self.preflight())

    def seed_command(self) -> None:
        s = self.settings
        self.require_url()
        if s.is_production and not s.allow_production_seed:
            raise ConfigError(
                "refusing to seed the production environment: set "
                "allow-production-seed to true if this is intended",
                step="seed",
            )
        check_seed_file(s.seed_file)
        self.preflight()
        conn = self.connect(self.spec(s.direct_url, migration=True))
        lock = self.connect(self.spec(s.direct_url), autocommit=True)
        key = db.lock_key(
            self.result.preflight.database if self.result.preflight else "", ".alembic_version"
        )
        with (
            db.deploy_lock(lock, key, s.deploy_lock_wait, on_wait=self._lock_wait),
            self.step("seed"),
        ):
            self.result.seed = sd = seed(conn, s.seed_file)
            if sd.error:
                raise StepFailed(f"seed failed and was rolled back: {sd.error}", step="seed")

    # -- callbacks

    def _applied(self, rev: object) -> None:
        self.observer.info(
            f"applied {getattr(rev, 'revision', rev)} ({getattr(rev, 'seconds', 0):.3f}s)"
        )

    def _lock_wait(self, holder: object) -> None:
        who = f" (held by {holder})" if holder else ""
        self.observer.info(
            f"another deploy holds the lock{who}: waiting up to {self.settings.deploy_lock_wait:g}s"
        )


COMMANDS: dict[str, Callable[[Run], None]] = {
    "deploy": Run.deploy,
    "plan": Run.deploy,
    "status": Run.status_command,
    "smoke": Run.smoke_command,
    "seed": Run.seed_command,
}


def command(name: str) -> Callable[[Run], None]:
    """The function that runs command `name`; the operations modes live in their own module."""
    if name in COMMANDS:
        return COMMANDS[name]
    from deployer.operations import OPERATIONS

    return OPERATIONS[name]


def execute(settings: Settings, observer: Observer, *, debug: bool = False) -> RunResult:
    """Run `settings.command` and return its record; failures become the record's status."""
    run = Run(settings, observer)
    result = run.result
    try:
        with run.stack:
            command(settings.command)(run)
    except DeployError as exc:
        result.status = "failed"
        result.exit_code = exc.exit_code
        result.failed_step = exc.step or run.current_step
        result.error = exc.message
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report, never crash
        result.status = "failed"
        result.exit_code = 1
        result.failed_step = run.current_step
        result.error = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        if debug:
            result.extra["traceback"] = traceback.format_exc()
    finally:
        result.finished_at = utcnow()
    return result


def _close(conn: sa.Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass
