"""An env.py written on Alembic's "async" template (asyncio.run, create_async_engine,
connection.run_sync) is rehearsed like a sync one (issue 18 point 1): the same statements,
locks, rewrites and findings, on the main thread and with env-thread: worker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from deployer.alembic_project import find_project
from deployer.results.risk import RiskResult
from tests.helpers import AlembicProject, Database, EmbeddedServer
from tests.helpers.risk import review_live

# Alembic's `async` template, as `alembic init -t async` writes it.
ASYNC_ENV = """\
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async_migrations())
"""

REVISION = """
bind = op.get_bind()
count = bind.execute(sa.text("SELECT count(*) FROM orders")).scalar()
op.create_index("ix_orders_amount", "orders", ["amount"])
op.alter_column("orders", "amount", type_=sa.BigInteger())
op.add_column("orders", sa.Column("seen", sa.Integer(), server_default=str(count)))
"""


def _run(
    project: AlembicProject, database: Database, pg_server: EmbeddedServer, env_thread: str
) -> RiskResult:
    deployer_project = dataclasses.replace(
        find_project(project.root, project.root.parent), env_thread=env_thread
    )
    return review_live(deployer_project, database, pg_server)


def _measured(result: RiskResult) -> list[tuple]:
    (entry,) = result.revisions
    return [
        (
            s.sql,
            s.line,
            s.in_transaction,
            s.error,
            sorted((lk.relation, lk.mode, lk.existed) for lk in s.locks),
            sorted(s.rewritten),
            sorted(s.scanned),
        )
        for s in entry.statements
    ]


def _findings(result: RiskResult) -> list[tuple]:
    return sorted((f.rule, f.level, f.table, f.lock, f.source) for f in result.findings)


@pytest.mark.parametrize("env_thread", ["main", "worker"])
def test_an_async_env_py_is_rehearsed_like_a_sync_one(
    make_project: Callable[..., AlembicProject],
    database: Database,
    pg_server: EmbeddedServer,
    env_thread: str,
) -> None:
    database.execute("CREATE TABLE orders (id int PRIMARY KEY, amount int)")
    sync = make_project("sync")
    sync.add("a1", REVISION)
    asynchronous = make_project("async")
    (asynchronous.root / "env.py").write_text(ASYNC_ENV)
    asynchronous.add("a1", REVISION)

    expected = _run(sync, database, pg_server, "main")
    result = _run(asynchronous, database, pg_server, env_thread)

    assert result.rehearsed and expected.rehearsed
    (entry,) = result.revisions
    assert entry.error == "" and all(not s.error for s in entry.statements), entry
    assert _measured(result) == _measured(expected)
    assert _findings(result) == _findings(expected)
    # What was measured, not only equal: the index took a SHARE lock, the type change then
    # rewrote the table under an ACCESS EXCLUSIVE one.
    alter = next(s for s in entry.statements if "TYPE BIGINT" in s.sql)
    assert alter.rewritten == ["public.orders"]
    assert ("public.orders", "AccessExclusiveLock") in [
        (lk.relation, lk.mode) for lk in alter.locks
    ]
    index = next(s for s in entry.statements if s.sql.startswith("CREATE INDEX"))
    assert [(lk.relation, lk.mode) for lk in index.locks] == [("public.orders", "ShareLock")]
    assert any(s.sql.startswith("SELECT count(*) FROM orders") for s in entry.statements)
    assert "index-not-concurrent" in {f.rule for f in result.findings}
