"""Synthetic Alembic projects: a linear chain of N revisions, one table each.

Every table has a uuid primary key defaulting to gen_random_uuid(), a uuid tenant, text, jsonb
and timestamptz columns and two btree indexes; every fifth references the first table; every
tenth has a vector(384) column with an hnsw index (pgvector). Revision 1 creates the `vector`
extension. The env.py is Alembic's generic template reduced to what matters: it builds its own
engine from DATABASE_URL / sqlalchemy.url (or, with `shared=True`, takes the connection a
driving program hands over in `config.attributes["connection"]`, Alembic's cookbook pattern),
and asks for a transaction per migration, online and offline (`--sql` then emits BEGIN/COMMIT
around each revision).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

VECTOR_DIM = 384

ALEMBIC_INI = """\
[alembic]
script_location = {location}
path_separator = os

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

ENV_PY = '''\
"""env.py of a synthetic benchmark chain (Alembic's generic template, trimmed)."""

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

config = context.config
SHARED = {shared!r}  # take config.attributes["connection"] when a driving program gives one

if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name)


def database_url() -> sa.URL:
    raw = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    url = sa.make_url(raw)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={{"paramstyle": "named"}},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection") if SHARED else None
    if shared is not None:
        context.configure(connection=shared, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''


def revision_id(i: int) -> str:
    return f"r{i:04d}"


def table_name(i: int) -> str:
    return f"t{i:04d}"


def revision_source(i: int) -> str:
    """The revision file of revision `i` (1-based)."""
    rev, down = revision_id(i), (repr(revision_id(i - 1)) if i > 1 else "None")
    t = table_name(i)
    vector = i % 10 == 0
    fk = i % 5 == 0 and i > 1
    lines = []
    if i == 1:
        lines.append('op.execute("CREATE EXTENSION IF NOT EXISTS vector")')
    cols = [
        'sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, '
        'server_default=sa.text("gen_random_uuid()"))',
        'sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False)',
        'sa.Column("name", sa.Text(), nullable=False)',
        'sa.Column("attributes", postgresql.JSONB(), nullable=False, '
        "server_default=sa.text(\"'{}'::jsonb\"))",
        'sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, '
        'server_default=sa.text("now()"))',
        'sa.Column("updated_at", sa.DateTime(timezone=True))',
    ]
    if fk:
        cols.append(
            f'sa.Column("owner_id", postgresql.UUID(as_uuid=True), '
            f'sa.ForeignKey("{table_name(1)}.id", ondelete="CASCADE"))'
        )
    if vector:
        cols.append(f'sa.Column("embedding", Vector({VECTOR_DIM}))')
    body = ",\n".join(f"    {c}" for c in cols)
    lines.append(f'op.create_table(\n    "{t}",\n{body},\n)')
    lines.append(f'op.create_index("ix_{t}_tenant_created", "{t}", ["tenant_id", "created_at"])')
    lines.append(f'op.create_index("ix_{t}_name", "{t}", ["name"])')
    if vector:
        lines.append(
            f'op.create_index(\n    "ix_{t}_embedding",\n    "{t}",\n    ["embedding"],\n'
            '    postgresql_using="hnsw",\n    postgresql_with={"m": 16, "ef_construction": 64},\n'
            '    postgresql_ops={"embedding": "vector_cosine_ops"},\n)'
        )
    upgrade = textwrap.indent("\n".join(lines), "    ")
    vector_import = "from pgvector.sqlalchemy import Vector\n" if vector else ""
    return (
        f'"""table {t}\n\nRevision ID: {rev}\nRevises: {down.strip(chr(39))}\n"""\n\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        f"{vector_import}"
        "from sqlalchemy.dialects import postgresql\n\n"
        f'revision = "{rev}"\n'
        f"down_revision = {down}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade() -> None:\n{upgrade}\n\n\n"
        f'def downgrade() -> None:\n    op.drop_table("{t}")\n'
    )


def write_project(folder: Path, revisions: int, *, shared: bool = False) -> Path:
    """Write an Alembic project of `revisions` revisions to `folder`; returns `folder`."""
    (folder / "versions").mkdir(parents=True, exist_ok=True)
    (folder / "alembic.ini").write_text(ALEMBIC_INI.format(location=folder.resolve()))
    (folder / "env.py").write_text(ENV_PY.format(shared=shared))
    (folder / "script.py.mako").write_text('"""${message}"""\n')
    for i in range(1, revisions + 1):
        (folder / "versions" / f"{revision_id(i)}_{table_name(i)}.py").write_text(
            revision_source(i)
        )
    return folder
