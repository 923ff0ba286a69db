"""Alembic environment of the reference schema.

Where the database comes from, first match wins:

1. `config.attributes["connection"]`: a SQLAlchemy Connection handed over by a program that
   drives Alembic (db-deploy does; Alembic cookbook "Sharing a Connection across one or more
   programmatic migration commands"). It is used as is: no commit, no extra transaction, the
   caller owns it.
2. the `DATABASE_URL` environment variable;
3. `sqlalchemy.url` from alembic.ini, or as set by the caller with `set_main_option`.

URLs may be `postgres://`, `postgresql://` (as Heroku, Neon, Supabase and libpq print them) or
carry an explicit driver; the first two get psycopg 3 (`postgresql+psycopg://`).

So a developer runs `DATABASE_URL=postgresql://… alembic -c migrations/alembic.ini upgrade
head` from any directory, and db-deploy runs the same env.py with its own connection.

Each revision runs in its own transaction (`transaction_per_migration`; all of them in the
caller's transaction when its connection is already in one). Types and server defaults are
compared (`Vector(1536)` too: importing pgvector registers the type for reflection) against
`target_metadata`, `models.Base.metadata`: after `upgrade head`, `alembic check` reports any
difference between `models.py` and the database.
"""

from __future__ import annotations

import logging
import os
import sys
from logging.config import fileConfig
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from pgvector.sqlalchemy import Vector

# models.py sits next to this file: importable whatever the working directory.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from models import Base  # noqa: E402

config = context.config
target_metadata = Base.metadata

#: The host of alembic.ini's placeholder URL (`.invalid` never resolves, RFC 2606).
PLACEHOLDER_HOST = "set-database-url.invalid"

log = logging.getLogger("alembic.env")

# The alembic CLI gets its logging from alembic.ini; a program that drives Alembic (or pytest)
# has its own, which we leave alone.
if (
    config.config_file_name is not None
    and config.attributes.get("configure_logger", True)
    and "connection" not in config.attributes
    and not logging.getLogger().handlers
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> sa.URL:
    """DATABASE_URL, else sqlalchemy.url; `postgres[ql]://` gets the psycopg 3 driver."""
    raw = os.environ.get("DATABASE_URL", "").strip() or config.get_main_option("sqlalchemy.url")
    if not raw:
        raise RuntimeError("no database: set DATABASE_URL or sqlalchemy.url in alembic.ini")
    url = sa.make_url(raw)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Autogenerate writes pgvector columns as `Vector(1536)`, with its import."""
    if type_ == "type" and isinstance(obj, Vector):
        autogen_context.imports.add("from pgvector.sqlalchemy import Vector")
        return f"Vector({obj.dim})" if obj.dim is not None else "Vector()"
    return False


def process_revision_directives(
    migration_context: MigrationContext, revision: Any, directives: list[ops.MigrationScript]
) -> None:
    """`alembic revision --autogenerate` writes no file when the models match the database."""
    if getattr(config.cmd_opts, "autogenerate", False):
        script = directives[0]
        if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
            directives[:] = []
            log.info("No changes in schema detected; no revision written.")


COMMON_OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "transaction_per_migration": True,
    "compare_type": True,
    "compare_server_default": True,
    "render_item": render_item,
    "process_revision_directives": process_revision_directives,
}


def run_migrations_offline() -> None:
    """`--sql`: write the SQL instead of running it; only the URL's dialect matters."""
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **COMMON_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_on(connection: sa.Connection) -> None:
    context.configure(connection=connection, **COMMON_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations_on(connection)
        return

    url = database_url()
    if url.host == PLACEHOLDER_HOST:
        raise RuntimeError(
            "no database: set DATABASE_URL (e.g. postgresql://user:pass@host:5432/db) "
            "or sqlalchemy.url in alembic.ini"
        )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            run_migrations_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
