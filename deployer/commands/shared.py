"""Steps more than one command runs, as the commands run them: loading the project, connecting
(preflight, with the TLS rule), the status and smoke steps, and the refusals they share."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import sqlalchemy as sa

from deployer import db, history
from deployer.commands.context import Context
from deployer.commands.options import smoke_options
from deployer.errors import ConfigError, StepFailed
from deployer.results import MigrateResult, PreflightResult, SmokeResult
from deployer.steps.preflight import preflight as preflight_step
from deployer.steps.smoke import smoke as smoke_step
from deployer.steps.status import status as status_step

if TYPE_CHECKING:
    from deployer.alembic_project import AlembicProject
    from deployer.steps.migrate import Unfinished
    from deployer.steps.version_table import VersionTable


def require_url(ctx: Context) -> None:
    if not ctx.settings.url:
        raise ConfigError(
            "no database: set the database-url input (or DATABASE_URL), or use --embedded"
        )


def project(ctx: Context) -> AlembicProject:
    """The migrations folder, after installing `requirements` (once); loaded once a run."""
    from deployer.alembic_project import ALEMBIC_LOG, find_project

    loaded: AlembicProject | None = getattr(ctx, "project", None)
    if loaded is not None:
        return loaded
    s = ctx.settings
    if s.requirements and ctx.result.install is None:
        install(ctx)
    found = find_project(
        s.migrations_dir,
        s.workspace_dir,
        alembic_ini=s.resolve(s.alembic_ini) if s.alembic_ini else None,
        script_location=s.resolve(s.script_location) if s.script_location else None,
    )
    found = dataclasses.replace(
        found, url_driver=s.url_driver, env_thread=s.env_thread, warn=ctx.warn
    )
    for said in found.warnings:
        ctx.warn(f"Alembic: {said}")
    ALEMBIC_LOG.start(ctx, quiet=ctx.result.dry_run)  # its set-up lines once a run
    from deployer.steps.version_table import shown_path

    ws = s.workspace_dir
    where = f"ini {shown_path(found.ini, ws)}" if found.ini else "no alembic.ini"
    ctx.info(f"Alembic project: script folder {shown_path(found.script_location, ws)} ({where})")
    ctx.project = found  # type: ignore[attr-defined]
    return found


def install(ctx: Context) -> None:
    from deployer.steps.install import install_requirements

    s = ctx.settings
    with ctx.step("install"):
        ctx.result.install = inst = install_requirements(s.requirements, s.workspace_dir)
        ctx.info(
            f"installed {s.requirements} in {inst.seconds:.1f}s: "
            + (" ".join(inst.installed) or "nothing new")
        )


def version_table(
    ctx: Context, conn: sa.Connection, *, required: bool, quiet: bool = False
) -> VersionTable:
    """Where the revision lives (runs env.py once; see `steps.version_table.locate`)."""
    from deployer.steps.version_table import locate

    s = ctx.settings
    return locate(
        conn,
        lambda: project(ctx),
        url=s.direct_url,
        workspace=s.workspace_dir,
        required=required,
        quiet=quiet,
        warn=ctx.warn,
        handed=ctx.env_connection,
    )


def preflight(ctx: Context) -> sa.Connection:
    """Connect with the application's URL and learn the server: the preflight step."""
    with ctx.step("preflight"):
        spec = ctx.spec(ctx.settings.url)
        result, conn = preflight_step(spec, ctx.engine(spec), on_retry=ctx.retrying)
        ctx.closing(conn)
        if ctx.settings.embedded is not None:  # not its temporary socket folder
            result.target = "embedded"
        ctx.result.preflight = result
        check_tls(ctx, result)
        ctx.info(
            f"connected to {result.target} as {result.user} (PostgreSQL {result.server_version})"
        )
        return conn


def check_tls(ctx: Context, result: PreflightResult) -> None:
    """A non-local database reached without TLS: a warning, an error with require-tls."""
    s = ctx.settings
    if result.tls or db.is_local_host(s.url):
        return
    message = (
        f"the connection to {result.target} is not encrypted (no TLS): add sslmode=require "
        "(or verify-full) to the database URL"
    )
    if s.require_tls:
        raise ConfigError(message + " (require-tls is on)", step="preflight")
    if not (s.security_preflight and s.command in {"deploy", "plan"}):
        ctx.warn(message)  # else the security checks report it, for both URLs


def status(
    ctx: Context,
    project: AlembicProject,
    conn: sa.Connection,
    table: str,
    schema: str | None,
    *,
    heads: list[str] | None = None,
) -> None:
    """The status step. `heads`: the database's heads when the caller has just read them on
    `conn` (the migrate step reads them back after the last revision); else read here."""
    s = ctx.settings
    with ctx.step("status"):
        ctx.result.status_check = st = status_step(
            project, conn, version_table=table, version_table_schema=schema, heads=heads
        )
        try:
            ctx.result.history = history.read(conn, s.history_schema)
        except sa.exc.DBAPIError as exc:
            conn.rollback()
            ctx.notice(f"deploy history not shown: {db.server_message(exc)}")
        if st.error:
            raise ConfigError(st.error, step="status")  # nothing changed: exit 2
        deployed = s.command == "deploy" and not ctx.result.dry_run
        if st.pending and deployed and s.target in {"head", "heads"}:
            raise StepFailed(
                f"{len(st.pending)} revision(s) still pending after the deploy: "
                + ", ".join(r.revision for r in st.pending),
                step="status",
            )


def smoke(
    ctx: Context,
    conn: sa.Connection,
    *,
    helpers: list[sa.Connection] | None = None,
    exclude_tables: list[tuple[str | None, str]] | None = None,
) -> None:
    """The smoke step. `helpers`: idle sessions of this run that share the table reads;
    `exclude_tables`: the tool's own (the version table: schema, name) outside the count."""
    with ctx.step("smoke"):
        # Without the project (the smoke command), Alembic's default version table.
        own = [(None, "alembic_version")] if exclude_tables is None else exclude_tables
        options = dataclasses.replace(smoke_options(ctx.settings), exclude_tables=tuple(own))
        ctx.result.smoke = sm = smoke_step(conn, options, helpers=helpers or [])
        if ctx.result.dry_run:
            defer_to_deploy(ctx, sm)
        for idx in sm.vector_indexes:
            if idx.advice:
                ctx.warn(
                    f"ivfflat index {idx.name} has lists={idx.lists} for ~{idx.rows} rows; "
                    f"pgvector suggests {idx.recommended_lists}: {idx.advice}"
                )
        if sm.problems:
            failing = [t.qualified for t in sm.failed_tables]
            failing += [x.table for x in sm.expectations if not x.ok]
            failing += [e.name for e in sm.extensions if not e.ok]
            raise StepFailed(
                "smoke test failed: " + "; ".join(sm.problems),
                step="smoke",
                obj=", ".join(failing),
            )


def extensions_after_deploy(ctx: Context, conn: sa.Connection) -> None:
    """The security table speaks of the database after the migrations: an extension found
    "available (not installed yet)" before them and installed by them is said so."""
    sec = ctx.result.security
    waiting = [
        f
        for f in (sec.findings if sec else [])
        if f.check == "extension" and "not installed yet" in f.message
    ]
    if not waiting:
        return
    try:
        query = sa.text("SELECT extname, extversion FROM pg_extension")
        installed: dict[str, str] = dict(conn.execute(query).tuples().all())
    except sa.exc.DBAPIError:
        return  # the smoke reports the connection's trouble
    finally:
        conn.rollback()
    for f in waiting:
        name = f.message.split()[1]
        if name in installed:
            f.message = f"extension {name} {installed[name]} was installed by this deploy"


def defer_to_deploy(ctx: Context, sm: SmokeResult) -> None:
    """A dry run (plan) checks what it can: an expectation or extension requirement not met yet
    that the deploy itself may meet (revisions pending, or a seed to run) is reported as
    checked after the deploy, not as a failure. With nothing pending and no seed, the deploy
    would fail on it as well: it stays a failure."""
    m = ctx.result.migrate
    if not ((m is not None and m.pending) or ctx.settings.run_seed):
        return
    for x in sm.expectations:
        if not x.ok:
            x.deferred = True
    for e in sm.extensions:
        if not e.ok:
            e.deferred = True
    waiting = [f"{x.table} >= {x.minimum}" for x in sm.expectations if x.deferred]
    waiting += [f"extension {e.name}" for e in sm.extensions if e.deferred]
    if waiting:
        ctx.info("dry run: checked after the deploy: " + ", ".join(waiting))


def check_seed(ctx: Context) -> None:
    """Refuse a seed of production without allow-production-seed, or an unusable seed file."""
    s = ctx.settings
    if s.is_production and not s.allow_production_seed:
        raise ConfigError(
            "refusing to seed the production environment: set allow-production-seed "
            "to true if this is intended",
            step="seed",
        )
    from deployer.steps.seed import check_seed_file

    check_seed_file(s.seed_file)


def raise_if_failed(m: MigrateResult, *, step: str, verb: str = "failed") -> None:
    """A revision failed: exit 1, naming it, the server's error and where the database is."""
    if m.error:
        what = f"revision {m.failed_revision}" if m.failed_revision else step
        raise StepFailed(
            f"{what} {verb}: {m.error} (database left at "
            + (
                f"unknown ({m.unknown_because}: {m.current_unknown}))"
                if m.current_unknown
                else f"{', '.join(m.current) or 'base'})"
            ),
            step=step,
            failure=m.failure,
        )


def check_history_schema(
    ctx: Context,
    version_table_schema: str | None,
    conn: sa.Connection | None = None,
    version_table: str = "alembic_version",
) -> None:
    """The deploy history is kept apart from the version table (interface.md): a history-schema
    that is the schema env.py puts the version table in is bad input (exit 2, before anything
    is written). `public`, the default place of both, is refused with the settings. With no
    version_table_schema, the version table's schema is the one the search_path leads to (the
    role's, the database's or the URL's `options`), read on `conn`."""
    schema = ctx.settings.history_schema
    how = "env.py's version_table_schema"
    if not version_table_schema and conn is not None:
        version_table_schema, how = _search_path_schema(conn, version_table), "the search_path's"
    if version_table_schema and version_table_schema == schema:
        raise ConfigError(
            f"invalid history-schema: {schema!r} is the version table's schema ({how}): the "
            "deploy history lives in a schema of its own, apart from the version table; use "
            "the default db_deploy or another dedicated schema",
            step="config",
        )


def _search_path_schema(conn: sa.Connection, table: str) -> str | None:
    """The schema an unqualified `table` is in (found through the search_path), or the one it
    would be created in; read-only, the transaction left as it was."""
    started = not conn.in_transaction()
    try:
        return conn.execute(
            sa.text(
                "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(quote_ident(:t))), "
                "current_schema())"
            ),
            {"t": table},
        ).scalar()
    except sa.exc.DBAPIError:
        return None
    finally:
        if started:
            conn.rollback()


def unfinished(ctx: Context, mig: sa.Connection) -> list[Unfinished]:
    """Revisions an earlier run started on an autocommit connection (env-connection
    autocommit, or env.py's own autocommit engine) and never completed: a warning each,
    before anything runs, for what they ran before that run stopped is committed."""
    from deployer.steps.migrate import unfinished as read

    left = read(mig, ctx.settings.history_schema)
    for u in left:
        ctx.warn(
            f"revision {u} did not complete: it ran on an autocommit connection, so the "
            "statements it ran before that run stopped are committed and stay, although the "
            "version table does not show it; run again, it must cope with them"
        )
    return left


def settle_unfinished(
    ctx: Context,
    project: AlembicProject,
    mig: sa.Connection,
    left: list[Unfinished],
    m: MigrateResult,
) -> None:
    """After the migrate (or rollback) step: a failing revision that did not complete before
    either says so; the marks of revisions now applied (or reverted) are dropped."""
    from deployer.steps.migrate import clear_unfinished

    if not left:
        return
    failed = [u for u in left if u.revision == m.failed_revision]
    if failed and m.error:
        m.error += f" (it did not complete in an earlier run either: {failed[0]})"
    if ctx.result.dry_run or m.current_unknown:
        return
    have = project.ancestors(m.current) if m.current else set()
    done = [
        u.revision
        for u in left
        if u.revision != m.failed_revision and (u.revision in have) == (u.kind == "upgrade")
    ]
    clear_unfinished(mig, ctx.settings.history_schema, done)
