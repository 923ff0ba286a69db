"""The pipeline: composes the steps for each command and returns one RunResult.

Steps take what they need and return records; they never print or write GitHub files. Progress
goes to an `Observer` (the GitHub or terminal console), results to the renderers afterwards.
Alembic (~0.1 s of imports) is imported by the commands that load a migrations folder, not by
`smoke`.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from deployer import db, history
from deployer.errors import ConfigError, DeployError, StepFailed
from deployer.results import (
    AppliedRevision,
    MigrateResult,
    PreflightResult,
    RunResult,
    Telemetry,
    utcnow,
)
from deployer.settings import Settings
from deployer.steps.preflight import preflight
from deployer.steps.seed import check_seed_file, seed
from deployer.steps.smoke import smoke
from deployer.steps.status import check_single_head, status

if TYPE_CHECKING:
    from alembic.runtime.migration import RevisionStep

    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import EnvFacts


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
        self.engines: dict[tuple[str, float, str, str], sa.Engine] = {}

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
        engine = self.engine(spec)
        if autocommit:
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        conn = db.connect(engine, spec, on_retry=self._retrying, step=self.current_step)
        self.stack.callback(_close, conn)
        return conn

    def _retrying(self, attempt: int, reason: str, delay: float) -> None:
        self.observer.info(
            f"connection attempt {attempt} failed ({reason}); retrying in {delay:.1f}s"
        )

    def project(self) -> AlembicProject:
        from deployer.alembic_project import find_project

        s = self.settings
        if s.requirements and self.result.install is None:
            from deployer.steps.install import install_requirements

            with self.step("install"):
                self.result.install = inst = install_requirements(s.requirements, s.workspace_dir)
                self.observer.info(
                    f"installed {s.requirements} in {inst.seconds:.1f}s: "
                    + (" ".join(inst.installed) or "nothing new")
                )
        project = find_project(
            s.migrations_dir,
            s.workspace_dir,
            alembic_ini=s.resolve(s.alembic_ini) if s.alembic_ini else None,
            script_location=s.resolve(s.script_location) if s.script_location else None,
        )
        project = dataclasses.replace(project, url_driver=s.url_driver)
        where = f"ini {project.ini}" if project.ini else "no alembic.ini"
        self.observer.info(f"Alembic project: script folder {project.script_location} ({where})")
        return project

    def require_url(self) -> None:
        if not self.settings.url:
            raise ConfigError(
                "no database: set the database-url input (or DATABASE_URL), or use --embedded"
            )

    # -- steps shared by the commands

    def preflight(self) -> sa.Connection:
        with self.step("preflight"):
            spec = self.spec(self.settings.url)
            result, conn = preflight(spec, self.engine(spec), on_retry=self._retrying)
            self.stack.callback(_close, conn)
            self.result.preflight = result
            self.check_tls(result)
            self.observer.info(
                f"connected to {result.target} as {result.user} (PostgreSQL "
                f"{result.server_version})"
            )
            return conn

    def check_tls(self, result: PreflightResult) -> None:
        """A non-local database reached without TLS: a warning, an error with require-tls."""
        s = self.settings
        if result.tls or db.is_local_host(s.url):
            return
        message = (
            f"the connection to {result.target} is not encrypted (no TLS): add sslmode=require "
            "(or verify-full) to the database URL"
        )
        if s.require_tls:
            raise ConfigError(message + " (require-tls is on)", step="preflight")
        if not (s.security_preflight and s.command in {"deploy", "plan"}):
            self.warn(message)  # else the security checks report it, for both URLs

    # -- commands

    def deploy(self) -> None:
        from deployer.alembic_project import read_heads
        from deployer.steps.migrate import check_heads, inspect_env, resolve_target, up_to_date

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
        pooled = db.looks_pooled(s.url)
        if pooled and not s.direct_database_url.get_secret_value():
            self.warn(
                f"database-url looks like a connection pooler ({pooled}) and no "
                "direct-database-url is set: migrations, the deploy lock (a session advisory "
                "lock) and prepared statements then go through the pooler, which transaction "
                "pooling breaks. Set direct-database-url to the direct connection"
            )
        app = self.preflight()
        if s.security_preflight:
            from deployer.operations import security_checks

            security_checks(self, app, deploy=True)

        # The deploy lock is held from before the first migration to after the seed, on an
        # idle session of its own. Everything that could refuse the deploy is checked under it
        # and before anything is written (the history included).
        with ExitStack() as locked:
            self.current_step = "migrate"
            mig = self.connect(self.spec(s.direct_url, migration=True))
            facts = inspect_env(project, mig, url=s.direct_url, workspace=s.workspace_dir)
            self.take_lock(locked, facts)
            heads = read_heads(mig, facts.version_table, facts.version_table_schema)
            mig.rollback()
            check_heads(project, heads, s.target)
            if s.backup_before:
                if self.result.dry_run:
                    self.result.notices.append("dry run: backup-before skipped")
                else:
                    from deployer.operations import take_backup

                    take_backup(self, reason="before-deploy", locked=True, known=(project, facts))
            with self.step("migrate"):
                recorder = self.check_history(project, mig, facts, heads)
                # Nothing pending: env.py has run once already (inspect_env), as it runs once
                # for `alembic upgrade head`; it is not run again to apply nothing.
                m = up_to_date(project, heads, s.target, facts, dry_run=self.result.dry_run)
                if m is None:
                    m = self.run_migrate(project, mig, recorder=recorder)
                self.result.migrate = m
                raise_if_failed(m, step="migrate")
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
        # The heads migrate read back; none (a database at base, or a failed read): read them.
        read_back = m.current or None
        self.status(project, mig, facts.version_table, facts.version_table_schema, heads=read_back)
        # The migration session shares the smoke's reads when it is the same role on the same
        # URL (smoke proves what the deploy role can read).
        self.smoke(app, helpers=[mig] if s.direct_url == s.url else [])
        seeded = self.result.seed is not None and (
            self.result.seed.inserted + self.result.seed.updated + self.result.seed.deleted
        )
        if not (self.result.migrate and self.result.migrate.pending) and not seeded:
            self.result.status = "noop"

    def take_lock(self, stack: ExitStack, facts: EnvFacts) -> None:
        """The deploy lock (keyed on the database and env.py's version table) on an idle
        AUTOCOMMIT session of its own, held until `stack` closes."""
        s = self.settings
        lock = self.connect(self.spec(s.direct_url), autocommit=True)
        stack.enter_context(
            db.deploy_lock(lock, self.lock_key(facts), s.deploy_lock_wait, on_wait=self._lock_wait)
        )

    def lock_key(self, facts: EnvFacts) -> int:
        database = self.result.preflight.database if self.result.preflight else ""
        return db.lock_key(database, f"{facts.version_table_schema or ''}.{facts.version_table}")

    def run_migrate(
        self,
        project: AlembicProject,
        mig: sa.Connection,
        *,
        recorder: Callable[..., None] | None,
        downgrade: bool = False,
        target: str | None = None,
        on_applied: Callable[[AppliedRevision], None] | None = None,
    ) -> MigrateResult:
        """The migrate step (or, with `downgrade`, the rollback's), retried (lock-retries) while
        a revision fails on lock_timeout. History rows that env.py's own connection could not
        carry are written afterwards on ours."""
        from deployer.steps.migrate import migrate

        s = self.settings
        applied: list[AppliedRevision] = []
        previous: list[str] | None = None
        watch = self.engine(self.spec(s.direct_url))  # the blocker watch: no timeouts
        for attempt in range(s.lock_retries + 1):
            m = migrate(
                project,
                mig,
                url=s.direct_url,
                target=target or s.target,
                dry_run=self.result.dry_run,
                lock_timeout=s.lock_timeout,
                statement_timeout=s.statement_timeout,
                workspace=s.workspace_dir,
                on_applied=on_applied or self._applied,
                downgrade=downgrade,
                recorder=recorder,
                watch_engine=watch,
                client_check=self.spec(s.direct_url, migration=True).client_check,
            )
            previous = m.previous if previous is None else previous
            applied += m.applied
            if not (m.lock_timed_out and attempt < s.lock_retries):
                break
            delay = min(30.0, 2.0 * 2**attempt)
            self.warn(
                f"revision {m.failed_revision} hit lock_timeout ({m.error}); retry "
                f"{attempt + 1} of {s.lock_retries} in {delay:g}s"
            )
            time.sleep(delay)
        m.previous, m.applied = previous or [], applied
        if recorder is not None and not m.history_inline and m.applied:
            # env.py migrated on a connection of its own: record afterwards, on ours, in one go.
            history.record(
                mig,
                s.history_schema,
                [
                    history.entry(project.revision(a.revision), not downgrade, a.seconds)
                    for a in m.applied
                ],
                telemetry=self.result.telemetry,
            )
            mig.commit()
        return m

    def check_history(
        self, project: AlembicProject, mig: sa.Connection, facts: EnvFacts, heads: list[str]
    ) -> Callable[..., None] | None:
        """Create the history on first use and verify applied scripts against it (before
        anything is applied). `heads`: the database's, read under the deploy lock. Returns the
        per-revision recorder, or None without a history. A dry run (plan) verifies an existing
        history without writing anything."""
        s = self.settings
        dry = self.result.dry_run
        try:
            if dry and not history.exists(mig, s.history_schema):
                mig.rollback()
                return None
            if not dry:
                history.ensure(mig, s.history_schema)
            self.result.integrity = report = history.verify(
                mig,
                s.history_schema,
                project,
                heads,
                allow_edited=s.allow_edited_migrations,
                telemetry=self.result.telemetry,
                write=not dry,
            )
        except sa.exc.DBAPIError as exc:
            mig.rollback()
            what = "read" if dry else "create or write"
            self.warn(
                f"no deploy history: this role cannot {what} {s.history_schema}.{history.TABLE} "
                f"({db.server_message(exc)}); edited migrations are not detected"
            )
            return None
        if dry:
            return None
        if report.baselined:
            self.result.notices.append(
                f"deploy history baselined with {len(report.baselined)} revision(s) applied "
                "before it existed"
            )
        for rev in report.accepted or []:
            self.warn(
                f"applied migration {rev} was edited since it ran; accepted and "
                "re-recorded (allow-edited-migrations)"
            )
        telemetry = self.result.telemetry

        def record(conn: sa.Connection, step: RevisionStep, seconds: float) -> None:
            history.record(
                conn,
                s.history_schema,
                [history.entry(step.revision, step.is_upgrade, seconds)],
                telemetry=telemetry,
            )

        return record

    def status(
        self,
        project: AlembicProject,
        conn: sa.Connection,
        table: str,
        schema: str | None,
        *,
        heads: list[str] | None = None,
    ) -> None:
        """`heads`: the database's heads when the caller has just read them on `conn` (the
        migrate step reads them back after the last revision); else read here."""
        with self.step("status"):
            self.result.status_check = st = status(
                project, conn, version_table=table, version_table_schema=schema, heads=heads
            )
            try:
                self.result.history = history.read(conn, self.settings.history_schema)
            except sa.exc.DBAPIError as exc:
                conn.rollback()
                self.result.notices.append(f"deploy history not shown: {db.server_message(exc)}")
            if st.error:
                raise ConfigError(st.error, step="status")  # nothing changed: exit 2
            deployed = self.settings.command == "deploy" and not self.result.dry_run
            if st.pending and deployed and self.settings.target in {"head", "heads"}:
                raise StepFailed(
                    f"{len(st.pending)} revision(s) still pending after the deploy: "
                    + ", ".join(r.revision for r in st.pending),
                    step="status",
                )

    def smoke(self, conn: sa.Connection, *, helpers: list[sa.Connection] | None = None) -> None:
        """`helpers`: idle sessions of this run that share the table reads."""
        with self.step("smoke"):
            s = self.settings
            self.result.smoke = sm = smoke(
                conn,
                expectations=s.smoke_expect,
                extensions=s.required_extensions,
                exclude_schemas=[s.history_schema],
                helpers=helpers or [],
                lock_timeout=s.lock_timeout,
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
        from deployer.steps.migrate import inspect_env

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
        from deployer.operations import VersionTable, deploy_lock

        # The same lock as deploy's: keyed on env.py's version table when the project loads.
        where = VersionTable(self, conn, required=False, quiet=True)
        with deploy_lock(self, where), self.step("seed"):
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


def preload(name: str) -> None:
    """Import now what command `name` imports on its way: its own module, the PostgreSQL driver
    with SQLAlchemy's dialect for it and, for every command but `smoke` (which loads no
    migrations folder), Alembic with the migrate step. For the process entry point, which
    freezes what exists before the user's code runs (`deployer.cli.console_main`)."""
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    command(name)
    if name != "smoke":
        from deployer import alembic_project  # noqa: F401
        from deployer.steps import migrate  # noqa: F401


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
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the last line of defence: report, never crash
        result.status = "failed"
        result.exit_code = 1
        result.failed_step = run.current_step
        result.error = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        if debug:
            result.extra["traceback"] = traceback.format_exc()
    finally:
        result.finished_at = utcnow()
    return result


def raise_if_failed(m: MigrateResult, *, step: str, verb: str = "failed") -> None:
    """A revision failed: exit 1, naming it, the server's error and where the database is."""
    if m.error:
        what = f"revision {m.failed_revision}" if m.failed_revision else step
        raise StepFailed(
            f"{what} {verb}: {m.error} (database left at {', '.join(m.current) or 'base'})",
            step=step,
        )


def _close(conn: sa.Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass
