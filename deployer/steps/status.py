"""Status: the database's heads against the script's, read on the deployer's own connection."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer.errors import ConfigError
from deployer.results import StatusResult

if TYPE_CHECKING:
    from deployer.alembic_project import AlembicProject


def check_single_head(project: AlembicProject) -> None:
    """Several heads in the script: a merge is missing. Refused before anything is applied
    (a configuration error: exit 2)."""
    heads = project.heads()
    if len(heads) > 1:
        raise ConfigError(
            f"the migrations have {len(heads)} heads ({', '.join(heads)}): merge them with "
            "`alembic merge heads` before deploying",
            step="status",
        )


def status(
    project: AlembicProject,
    connection: sa.Connection,
    *,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    heads: list[str] | None = None,
) -> StatusResult:
    """`heads`: the database's, when the caller has just read them on `connection`."""
    started = time.perf_counter()
    result = StatusResult(script_heads=project.heads())
    if heads is not None:
        result.database_heads = sorted(heads)
    else:
        from deployer.alembic_project import version_heads

        try:
            result.database_heads = version_heads(connection, version_table, version_table_schema)
        finally:
            if connection.in_transaction():
                connection.rollback()
    known = project.ancestors(project.heads())
    unknown = [h for h in result.database_heads if h not in known]
    if unknown:
        from deployer.steps.migrate import unknown_heads_message

        result.error = unknown_heads_message(unknown)
    else:
        result.pending = project.upgrade_path(result.database_heads, "heads")
        result.up_to_date = not result.pending
    result.seconds = round(time.perf_counter() - started, 4)
    return result
