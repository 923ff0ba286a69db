"""The risk review run as the deploy runs it: against a live database, rehearsed on a scratch
database of the embedded server (none: the review without a rehearsal)."""

from __future__ import annotations

from typing import Any

from deployer.alembic_project import AlembicProject as DeployerProject
from deployer.results.risk import RiskResult
from deployer.risk import review
from tests.helpers.postgres import Database, EmbeddedServer


def review_live(
    project: DeployerProject,
    database: Database,
    pg_server: EmbeddedServer | None,
    *,
    heads: list[str] | None = None,
    lock_timeout: float = 5.0,
    **kw: Any,
) -> RiskResult:
    """`deployer.risk.review` of `project` (the deployer's, from `find_project`) from `heads`
    (none: from the base), reading the live state of `database` on a session of its own."""
    with database.engine.connect() as live:
        return review(
            project,
            heads=heads or [],
            live=live,
            target_url=database.url,
            scratch_server_url=pg_server.url() if pg_server else "",
            lock_timeout=lock_timeout,
            **kw,
        )
