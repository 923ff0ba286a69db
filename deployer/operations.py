"""The operations modes: drift, backup, restore, preflight (security) and rollback.

Each function takes the pipeline's `Run` (settings, observer, the result record, connections,
steps), fills its own record on the RunResult (`backup`, `restore`, `drift`, `security`; the
rollback fills `migrate` like a deploy does) and raises the pipeline's errors: ConfigError
(exit 2, nothing changed), StepFailed (exit 1), UnreachableError (exit 3). The steps they call
(deployer/steps/{backup,restore,drift,security,rollback}.py) never print.

`plan` is `deploy` in dry-run mode (pipeline.py). `security_checks` and `take_backup` are what `deploy` runs right after
connecting: the security checks (security-preflight, on by default) and backup-before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from deployer import db
from deployer.alembic_project import AlembicProject, read_heads
from deployer.errors import ConfigError, StepFailed
from deployer.pipeline import raise_if_failed
from deployer.results import (
    AppliedRevision,
    BackupResult,
    DriftResult,
    MigrateResult,
    RestoreResult,
    utcnow,
)
from deployer.steps import security as security_step
from deployer.steps import status as status_step
from deployer.steps.migrate import EnvFacts, inspect_env, migrate, resolve_target

if TYPE_CHECKING:
    from deployer.pipeline import Run


# --------------------------------------------------------------------------- shared


def shown_path(run: Run, path: Path) -> str:
    """A path as outputs show it: relative to the workspace when inside it."""
    try:
        return str(path.resolve().relative_to(run.settings.workspace_dir))
    except ValueError:
        return str(path)


def _rollback_txn(conn: sa.Connection) -> None:
    if conn.in_transaction():
        conn.rollback()


class VersionTable:
    """Where the revision lives (as the user's env.py configures it) and the project, when the
    migrations folder loads; else Alembic's default, with a warning (a backup or a restore must
    not depend on the migrations folder being right)."""

    @classmethod
    def of(cls, project: AlembicProject, facts: EnvFacts) -> VersionTable:
        """From what the caller already learnt by running env.py."""
        where = cls.__new__(cls)
        where.project = project
        where.table, where.schema = facts.version_table, facts.version_table_schema
        return where

    def __init__(
        self, run: Run, conn: sa.Connection, *, required: bool, quiet: bool = False
    ) -> None:
        s = run.settings
        self.project: AlembicProject | None = None
        self.table, self.schema = "alembic_version", None
        try:
            self.project = run.project()
            facts = inspect_env(self.project, conn, url=s.direct_url, workspace=s.workspace_dir)
            self.table, self.schema = facts.version_table, facts.version_table_schema
        except ConfigError as exc:
            if required:
                raise
            if quiet:  # only the lock key is wanted: Alembic's default table is right
                return
            run.warn(
                f"revision read from alembic_version: the migrations could not be loaded "
                f"({exc.message})"
            )
        finally:
            _rollback_txn(conn)

    def heads(self, conn: sa.Connection) -> list[str]:
        """The revision(s) in the version table; unreadable → StepFailed (exit 1)."""
        try:
            return read_heads(conn, self.table, self.schema)
        except sa.exc.DBAPIError as exc:
            name = f"{self.schema}.{self.table}" if self.schema else self.table
            raise StepFailed(
                f"cannot read the revision from {name}: {db.server_message(exc)}"
            ) from None
        finally:
            _rollback_txn(conn)

    def record_status(self, run: Run, conn: sa.Connection) -> None:
        """The database's revision against the migrations' heads, for the report and the
        current-/head-revision and pending-count outputs (never fails the run)."""
        if self.project is None:
            return
        try:
            run.result.status_check = status_step.status(
                self.project, conn, version_table=self.table, version_table_schema=self.schema
            )
        except sa.exc.DBAPIError:
            _rollback_txn(conn)

    def lock_key(self, run: Run) -> int:
        return run.lock_key(EnvFacts([], self.table, self.schema))


@contextmanager
def deploy_lock(run: Run, where: VersionTable) -> Iterator[None]:
    """The deploy lock (the same key as `deploy`), on an idle AUTOCOMMIT session of its own."""
    lock = run.connect(run.spec(run.settings.direct_url), autocommit=True)
    with db.deploy_lock(
        lock, where.lock_key(run), run.settings.deploy_lock_wait, on_wait=run._lock_wait
    ):
        yield


def server_major(run: Run) -> int:
    pf = run.result.preflight
    return pf.server_version_num // 10000 if pf else 0


# --------------------------------------------------------------------------- backup


def take_backup(
    run: Run,
    *,
    reason: str = "backup",
    locked: bool = False,
    known: tuple[AlembicProject, EnvFacts] | None = None,
) -> None:
    """pg_dump the target (over direct-database-url: pg_dump needs a session, not a pooler's
    transaction) under the deploy lock, so that no migration runs while it reads (and the
    revision recorded is the one the dump holds). `locked`: the caller holds the lock.
    `known`: the project and env.py's facts the caller already has (env.py is not run again)."""
    from deployer import pgtools
    from deployer.steps import backup as backup_step

    s = run.settings
    with run.step("backup"):
        conn = run.connect(run.spec(s.direct_url))
        where = VersionTable.of(*known) if known else VersionTable(run, conn, required=False)
        tool = pgtools.find_tool("pg_dump", server_major(run))  # exit 2 before any lock
        with deploy_lock(run, where) if not locked else nullcontext():
            revision = ",".join(where.heads(conn))
            pf = run.result.preflight
            database = pf.database if pf else (make_url(s.direct_url).database or "db")
            name = backup_step.default_name(database, revision, utcnow())
            requested = s.backup_path
            target = backup_step.destination(
                requested,
                s.resolve(requested) if requested else s.resolve("backups"),
                name,
            )
            tool_name, size, digest, seconds = backup_step.dump(
                s.direct_url,
                target,
                tool=tool,
                lock_timeout=s.lock_timeout,
                connect_timeout=s.connect_timeout,
            )
        where.record_status(run, conn)
        run.result.backup = rec = BackupResult(
            path=shown_path(run, target),
            file=str(target),
            size_bytes=size,
            sha256=digest,
            revision=revision,
            database=database,
            server_version=pf.server_version if pf else "",
            tool=tool_name,
            seconds=seconds,
            reason=reason,
        )
        run.observer.info(
            f"backup {rec.path}: {size:,} bytes in {seconds:.2f}s at revision "
            f"{revision or 'base'}, sha256 {digest[:16]}…"
        )


def backup(run: Run) -> None:
    run.require_url()
    run.preflight()
    take_backup(run)


# --------------------------------------------------------------------------- restore


def restore(run: Run) -> None:
    """Replace the target's contents with a backup. Refused (exit 2, nothing changed) without
    confirm-restore equal to the database's name, without a matching checksum, or with an
    archive the available pg_restore cannot read. dry-run: every check, no restore."""
    from deployer import pgtools
    from deployer.steps import restore as restore_step

    s = run.settings
    run.require_url()
    if not s.backup_path.strip():
        raise ConfigError(
            "restore needs backup-path: the .dump file to restore (or its folder)", step="restore"
        )
    named = make_url(s.url).database or make_url(s.url).username or "?"
    if not s.confirm_restore.strip():
        raise ConfigError(
            f"restore replaces the contents of database {named}: set confirm-restore to the "
            "database's name to confirm",
            step="restore",
        )
    file = restore_step.find_file(s.resolve(s.backup_path), repr(s.backup_path))
    rec = RestoreResult(path=shown_path(run, file))
    run.result.restore = rec
    with run.step("verify"):
        rec.sha256, rec.size_bytes = restore_step.verify_checksum(file)
        header = restore_step.read_header(file)
        rec.archive_database = header.database
        rec.archive_server_version = header.server_version
        rec.archive_pg_dump_version = header.pg_dump_version
    run.preflight()
    pf = run.result.preflight
    assert pf is not None
    if s.confirm_restore.strip() != pf.database:
        raise ConfigError(
            f"confirm-restore is {s.confirm_restore.strip()!r} but the target database is "
            f"{pf.database!r}: nothing was restored",
            step="restore",
        )
    major = server_major(run)
    tool = pgtools.find_tool("pg_restore", max(major, header.pg_dump_major))
    rec.tool = f"pg_restore {tool.version}"
    with run.step("verify"):
        entries = restore_step.parse_toc(restore_step.list_archive(tool, file))
        rec.tables = restore_step.archive_table_count(entries, s.history_schema)
    if header.server_major > major:
        run.warn(
            f"the backup comes from PostgreSQL {header.server_version}, the target runs "
            f"{pf.server_version}: a dump is not guaranteed to load into an older major version"
        )
    if header.database and header.database != pf.database:
        run.result.notices.append(
            f"the backup was taken from database {header.database}, restored into {pf.database}"
        )

    conn = run.connect(run.spec(s.direct_url))
    where = VersionTable(run, conn, required=False)
    with run.step("restore"), deploy_lock(run, where):
        rec.previous_revision = ",".join(where.heads(conn))
        installed = {r[0] for r in conn.execute(sa.text("SELECT extname FROM pg_extension"))}
        _rollback_txn(conn)
        listing, rec.skipped = restore_step.filter_toc(
            entries, history_schema=s.history_schema, installed_extensions=installed
        )
        rec.left_in_place = restore_step.newer_relations(conn, entries, s.history_schema)
        if run.result.dry_run:
            run.result.notices.append(
                f"dry run: {file.name} verified (checksum, archive, confirmation); nothing restored"
            )
            return
        rec.seconds = restore_step.restore(
            tool,
            s.direct_url,
            file,
            listing,
            lock_timeout=s.lock_timeout,
            connect_timeout=s.connect_timeout,
        )
        rec.restored_revision = ",".join(where.heads(conn))
        where.record_status(run, conn)
    run.observer.info(
        f"restored {file.name} in {rec.seconds:.2f}s: revision "
        f"{rec.previous_revision or 'base'} → {rec.restored_revision or 'base'}"
    )
    if rec.left_in_place:
        shown = ", ".join(rec.left_in_place[:10])
        more = f" and {len(rec.left_in_place) - 10} more" if len(rec.left_in_place) > 10 else ""
        run.warn(
            f"{len(rec.left_in_place)} relation(s) newer than the backup were left in place: "
            f"{shown}{more} (drop them before the next deploy, or run drift to review)"
        )


# --------------------------------------------------------------------------- drift


def drift(run: Run) -> None:
    """Migrate a scratch database to the live revision and compare the catalogs; differences
    exit 1."""
    from deployer.steps import drift as drift_step

    s = run.settings
    run.require_url()
    project = run.project()
    app = run.preflight()
    pf = run.result.preflight
    assert pf is not None
    rec = DriftResult(live_version=pf.server_version)
    run.result.drift = rec
    live = run.connect(run.spec(s.direct_url))
    facts = inspect_env(project, live, url=s.direct_url, workspace=s.workspace_dir)
    _rollback_txn(live)
    heads = list(facts.heads)
    rec.revision = heads
    run.result.status_check = status_step.status(
        project,
        live,
        version_table=facts.version_table,
        version_table_schema=facts.version_table_schema,
    )
    known = project.ancestors(project.heads())
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise StepFailed(
            f"the database is at {', '.join(unknown)}, which the migrations folder does not "
            "contain: cannot replay the migrations to compare",
            step="drift",
        )

    scratch_url = s.scratch_database_url.get_secret_value()
    embedded = not scratch_url
    with run.step("scratch"):
        if embedded:
            major = drift_step.embedded_major(server_major(run))
            server = run.stack.enter_context(drift_step.embedded_scratch(major))
            rec.scratch = f"embedded PostgreSQL {major}"
        else:
            server = scratch_url
            rec.scratch = f"{db.describe_target(scratch_url)} (scratch-database-url)"
        url = run.stack.enter_context(drift_step.scratch_database(run.spec(server), run.connect))
        scratch = run.connect(run.spec(url, migration=True))
        for head in heads:
            m = migrate(
                project,
                scratch,
                url=url,
                target=head,
                lock_timeout=s.lock_timeout,
                statement_timeout=s.statement_timeout,
                workspace=s.workspace_dir,
            )
            if m.error:
                hint = (
                    " (the embedded server offers only plpgsql and vector: set "
                    "scratch-database-url to a server like the live one)"
                    if embedded
                    else ""
                )
                raise StepFailed(
                    f"the migrations fail on the scratch database at revision "
                    f"{m.failed_revision or '?'}: {m.error}{hint}",
                    step="scratch",
                )
        run.observer.info(
            f"replayed the migrations to {', '.join(heads) or 'base'} on {rec.scratch}"
        )

    with run.step("drift"):
        expected = drift_step.snapshot(scratch, history_schema=s.history_schema)
        actual = drift_step.snapshot(app, history_schema=s.history_schema)
        rec.scratch_version = expected.server_version
        rec.objects = len(actual.objects)
        rec.differences = drift_step.compare(actual, expected)
        if rec.differences:
            rec.diff = drift_step.unified_diff(actual, expected)
        if expected.server_version.split(".")[0] != actual.server_version.split(".")[0]:
            rec.notes.append(
                f"the scratch server runs PostgreSQL {expected.server_version}, the live one "
                f"{actual.server_version}: a difference in how they print a definition would "
                "show as drift"
            )
        for name, version in sorted(actual.extension_versions.items()):
            other = expected.extension_versions.get(name)
            if other and other != version:
                rec.notes.append(
                    f"extension {name} is {version} live, {other} on the scratch server "
                    "(versions are not compared)"
                )
        if heads and sorted(heads) == project.heads():
            found = drift_step.model_differences(
                project,
                live,
                url=s.direct_url,
                workspace=s.workspace_dir,
                history_schema=s.history_schema,
            )
            if found is None:
                rec.models_note = "env.py sets no target_metadata: no models to compare"
            else:
                rec.models_checked = True
                rec.model_differences = found
        else:
            rec.models_note = (
                "models not compared: the database is not at the migrations' head, which the "
                "models describe"
            )
    if rec.count:
        parts = []
        if rec.differences:
            parts.append(f"{len(rec.differences)} between the live database and the migrations")
        if rec.model_differences:
            parts.append(f"{len(rec.model_differences)} between the live database and the models")
        raise StepFailed(
            f"schema drift at revision {', '.join(heads) or 'base'}: " + "; ".join(parts),
            step="drift",
        )


# --------------------------------------------------------------------------- security


def security_checks(
    run: Run, app: sa.Connection, *, project: AlembicProject | None = None, deploy: bool = False
) -> None:
    """The security preflight on the open connection. Findings at or above preflight-fail-on
    fail with exit 1. In a deploy, warnings are also shown as workflow warnings."""
    s = run.settings
    with run.step("security"):
        direct = run.connect(run.spec(s.direct_url)) if s.direct_url != s.url else None
        schema = None
        heads = None
        if project is not None:
            conn = direct or app
            schema = inspect_env(
                project, conn, url=s.direct_url, workspace=s.workspace_dir
            ).version_table_schema
            _rollback_txn(conn)
            heads = project.heads()
        rec = security_step.check(
            app,
            url=s.url,
            direct=direct,
            direct_url=s.direct_url,
            require_tls=s.require_tls,
            required_extensions=s.required_extensions,
            version_table_schema=schema,
            history_schema=s.history_schema,
            heads=heads,
            fail_on=s.preflight_fail_on,
        )
        run.result.security = rec
        for f in rec.findings:
            if f.severity == "warning":
                run.warn(f"security: {f.message}")  # also in the report's warnings and Slack
        failing = rec.failing
        if failing:
            first = "; ".join(f.message for f in failing[:3])
            more = f" (and {len(failing) - 3} more)" if len(failing) > 3 else ""
            level = "error" if s.preflight_fail_on == "error" else "warning or error"
            what = "deploy refused by the security preflight" if deploy else "security preflight"
            raise StepFailed(
                f"{what}: {len(failing)} finding(s) of severity {level}: {first}{more}",
                step="security",
            )
        run.observer.info(
            f"security preflight: {len(rec.findings)} checks, {rec.errors} error(s), "
            f"{rec.warnings} warning(s)"
        )


def preflight(run: Run) -> None:
    run.require_url()
    project = run.project()
    app = run.preflight()
    security_checks(run, app, project=project)


# --------------------------------------------------------------------------- rollback


def rollback(run: Run) -> None:
    """Downgrade to `target` under the deploy lock with deploy's per-revision report. Refused
    (exit 2, nothing changed) on production without confirm-rollback, for a target that is not
    below the current revision, and when a revision in the way has no real downgrade. dry-run:
    the plan only (what would be reverted), without running env.py."""
    from deployer.steps import rollback as rollback_step

    s = run.settings
    run.require_url()
    project = run.project()
    run.current_step = "rollback"
    if s.target.strip() in rollback_step.HEAD_TARGETS:
        rollback_step.resolve(project, s.target, [])  # raises: a rollback needs a target
    if s.is_production and not s.confirm_rollback and not run.result.dry_run:
        raise ConfigError(
            "refusing to roll back the production environment: set confirm-rollback to true "
            "if this is intended",
            step="rollback",
        )
    run.preflight()
    with run.step("rollback"):
        mig = run.connect(run.spec(s.direct_url, migration=True))
        where = VersionTable(run, mig, required=True)
        with deploy_lock(run, where):
            heads = where.heads(mig)
            target = rollback_step.resolve(project, s.target, heads)
            if target != "base":
                below = project.ancestors(heads) if heads else set()
                if any(d not in below for d in resolve_target(project, target)):
                    raise ConfigError(
                        f"target {s.target!r} is not below the current revision "
                        f"{', '.join(heads) or 'base'}: rollback only downgrades",
                        step="rollback",
                    )
            undo = rollback_step.plan(project, target, heads)
            bad = rollback_step.check_reversible(project, undo)
            if bad:
                raise ConfigError(
                    "rollback refused, nothing was changed: "
                    + "; ".join(str(b) for b in bad)
                    + " (write the downgrade, or restore a backup instead)",
                    step="rollback",
                )
            if run.result.dry_run:
                run.result.migrate = MigrateResult(
                    script_location=str(project.script_location),
                    target=target,
                    previous=heads,
                    current=heads,
                    pending=[project.describe(rev) for rev in undo],
                    dry_run=True,
                    version_table=where.table,
                    version_table_schema=where.schema,
                )
            else:
                if s.backup_before and undo:
                    take_backup(run, reason="before-rollback", locked=True)
                    run.current_step = "rollback"
                # The deploy history verifies the applied scripts and records each downgrade.
                recorder = run.check_history(
                    project,
                    mig,
                    EnvFacts(
                        heads=heads, version_table=where.table, version_table_schema=where.schema
                    ),
                    heads,
                )
                run.result.migrate = m = run.run_migrate(
                    project,
                    mig,
                    recorder=recorder,
                    downgrade=True,
                    target=target,
                    on_applied=_reverted(run),
                )
                raise_if_failed(m, step="rollback", verb="failed to downgrade")
                if not m.applied:
                    run.result.status = "noop"
    run.status(project, mig, where.table, where.schema)


def _reverted(run: Run) -> Callable[[AppliedRevision], None]:
    def say(rev: AppliedRevision) -> None:
        run.observer.info(f"reverted {rev.revision} ({rev.seconds:.3f}s)")

    return say


OPERATIONS: dict[str, Callable[[Run], None]] = {
    "drift": drift,
    "backup": backup,
    "restore": restore,
    "preflight": preflight,
    "rollback": rollback,
}
