"""Where the revision lives (the version table, as the user's env.py configures it), the deploy
lock keyed on it, and small helpers the operations share. Finding the table runs env.py once
(`locate`); the record itself (`VersionTable`) does no I/O to be built."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from deployer import db
from deployer.alembic_project import AlembicProject, version_heads
from deployer.errors import ConfigError
from deployer.results import PreflightResult, StatusResult
from deployer.steps import status as status_step
from deployer.steps.migrate import EnvFacts, inspect_env


def rollback_txn(conn: sa.Connection) -> None:
    if conn.in_transaction():
        conn.rollback()


def shown_path(path: Path, workspace: Path) -> str:
    """A path as outputs show it: relative to the workspace when inside it."""
    try:
        return str(path.resolve().relative_to(workspace))
    except ValueError:
        return str(path)


def server_major(preflight: PreflightResult | None) -> int:
    return preflight.server_version_num // 10000 if preflight else 0


@dataclass(frozen=True)
class VersionTable:
    """The version table and, when the migrations folder loaded, the project; else Alembic's
    default table (a backup or a restore must not depend on the migrations folder being
    right)."""

    table: str = "alembic_version"
    schema: str | None = None
    project: AlembicProject | None = None

    @classmethod
    def of(cls, project: AlembicProject, facts: EnvFacts) -> VersionTable:
        """From what the caller already learnt by running env.py."""
        return cls(facts.version_table, facts.version_table_schema, project)

    @property
    def lock_name(self) -> str:
        """What the deploy lock's key is made of, with the database's name."""
        return f"{self.schema or ''}.{self.table}"

    def heads(self, conn: sa.Connection) -> list[str]:
        """The revision(s) in the version table; unreadable → StepFailed (exit 1)."""
        try:
            return version_heads(conn, self.table, self.schema)
        finally:
            rollback_txn(conn)

    def status(self, conn: sa.Connection) -> StatusResult | None:
        """The database's revision against the migrations' heads, for the report and the
        current-/head-revision and pending-count outputs; None without a project or when
        unreadable (never fails the run)."""
        if self.project is None:
            return None
        try:
            return status_step.status(
                self.project, conn, version_table=self.table, version_table_schema=self.schema
            )
        except sa.exc.DBAPIError:
            rollback_txn(conn)
            return None


def locate(
    conn: sa.Connection,
    load: Callable[[], AlembicProject],
    *,
    url: str,
    workspace: Path,
    required: bool,
    quiet: bool = False,
    warn: Callable[[str], None] | None = None,
    handed: Callable[[sa.Connection], sa.Connection | None] | None = None,
) -> VersionTable:
    """Load the project (`load`) and run env.py once to learn its version table. When the
    project does not load: ConfigError if `required`, else Alembic's default table with a
    warning (none when `quiet`: only the lock key is wanted, and the default is right).
    `handed`: the connection env.py is handed for `conn` (env-connection, url-driver)."""
    project: AlembicProject | None = None
    try:
        project = load()
        env_conn = handed(conn) if handed is not None else conn
        facts = inspect_env(project, env_conn, url=url, workspace=workspace)
        return VersionTable.of(project, facts)
    except ConfigError as exc:
        if required:
            raise
        if not quiet and warn is not None:
            warn(
                f"revision read from alembic_version: the migrations could not be loaded "
                f"({exc.message})"
            )
        return VersionTable(project=project)
    finally:
        rollback_txn(conn)


@contextmanager
def deploy_lock(
    conn: sa.Connection,
    where: VersionTable,
    *,
    database: str,
    wait: float,
    on_wait: Callable[[db.LockHolder | None], None] | None = None,
) -> Iterator[None]:
    """The deploy lock (keyed on the database and the version table, the same key for every
    command) on `conn`, an idle AUTOCOMMIT session of its own."""
    with db.deploy_lock(conn, db.lock_key(database, where.lock_name), wait, on_wait=on_wait):
        yield
