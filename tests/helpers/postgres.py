"""Databases on the embedded PostgreSQL server the tests share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded PostgreSQL: `uri` is a libpq URI over its Unix socket."""

    dir: Path
    uri: str

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.dir}"


@dataclass
class Database:
    """A throwaway database: `url` is what a user would pass as `database-url`."""

    name: str
    url: str
    engine: sa.Engine

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def execute(self, sql: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def tables(self, schema: str = "public") -> set[str]:
        return set(sa.inspect(self.engine).get_table_names(schema=schema))

    def version(self, table: str = "alembic_version") -> set[str]:
        if table not in self.tables():
            return set()
        return {r[0] for r in self.rows(f"SELECT version_num FROM {table}")}


def create_database(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_server.url(name)
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool
    )
    return Database(name=name, url=url, engine=engine)


def drop_database(admin_engine: sa.Engine, db: Database) -> None:
    db.engine.dispose()
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
