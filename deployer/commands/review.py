"""The risk review inside `plan` and `deploy` (input `risk-review`: on for plan, off for deploy
by default): the live statistics read before env.py runs on the target, then the pending
revisions rehearsed on a scratch database (scratch-database-url, else the embedded server),
checked and weighed; the gate (`risk-fail-on`) before anything is applied."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer import db
from deployer.commands.context import Context
from deployer.errors import DeployError
from deployer.redact import Redactor

if TYPE_CHECKING:
    import sqlalchemy as sa

    from deployer.alembic_project import AlembicProject
    from deployer.results import MigrateResult
    from deployer.risk.live import LiveSnapshot
    from deployer.steps.migrate import EnvFacts


def wanted(ctx: Context) -> bool:
    return ctx.settings.risk_review_on


def snapshot(ctx: Context, conn: sa.Connection) -> LiveSnapshot | None:
    """The live tables, locks and transactions, read before env.py runs on the target."""
    if not wanted(ctx):
        return None
    from deployer.risk.live import read_live

    return read_live(conn, redact=Redactor(ctx.settings.secrets))


def review(
    ctx: Context,
    project: AlembicProject,
    facts: EnvFacts,
    heads: list[str],
    live: LiveSnapshot | None,
) -> None:
    """Review the revisions from `heads` to the target; record it; stop at the gate."""
    if not wanted(ctx):
        return
    from deployer import risk
    from deployer.results import RiskResult
    from deployer.steps import drift as drift_step
    from deployer.steps.version_table import server_major

    s = ctx.settings
    redact = Redactor(s.secrets)
    with ctx.step("risk"):
        if not project.upgrade_path(heads, s.target):
            ctx.result.risk = RiskResult(note="nothing pending")
            return
        server, label = s.scratch_database_url.get_secret_value(), ""
        if server:
            label = f"{db.describe_target(server)} (scratch-database-url)"
        else:
            major = drift_step.embedded_major(server_major(ctx.result.preflight))
            try:
                server = ctx.stack.enter_context(drift_step.embedded_scratch(major))
                label = f"embedded PostgreSQL {major}"
            except DeployError as exc:
                server = ""
                ctx.notice(f"risk review not rehearsed: {exc.message}")
        result = risk.review(
            project,
            heads=heads,
            target=s.target,
            snapshot=live,
            target_url=s.direct_url,
            scratch_server_url=server,
            scratch_label=label,
            redact=redact,
            workspace=s.workspace_dir,
            version_table=facts.version_table,
            version_table_schema=facts.version_table_schema,
            lock_timeout=s.lock_timeout or None,
            statement_timeout=s.statement_timeout or None,
        )
        ctx.result.risk = result
        counted = [f for f in result.findings if not f.accepted]
        ctx.info(
            f"risk review: {result.level}, {len(counted)} finding(s) in "
            f"{len(result.revisions)} revision(s)" + (f" ({result.note})" if result.note else "")
        )
        risk.gate(result, s.risk_fail_on)


def plan_sql(ctx: Context, m: MigrateResult) -> None:
    """A plan whose offline SQL is unavailable (a revision reads data) shows the SQL the
    rehearsal sent instead, revision by revision."""
    r = ctx.result.risk
    if r is None or not r.rehearsed or not m.dry_run or "*" not in m.sql:
        return
    m.sql = {
        rev.revision: "-- as rehearsed on the scratch database\n"
        + "\n".join(f"{st.sql.rstrip(';')};" for st in rev.statements)
        for rev in r.revisions
    }
