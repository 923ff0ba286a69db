"""Connections (deployer/db.py): engines shared by sessions with the same options, and the
session settings surviving what SQLAlchemy does behind our back."""

from __future__ import annotations

import sqlalchemy as sa

from deployer import db
from tests.helpers import Database


def test_a_reconnected_session_keeps_its_timeouts(database: Database) -> None:
    """SQLAlchemy reconnects an invalidated Connection on its next use: the new session must
    get the same timeouts as the first (they live in the engine's connect arguments)."""
    spec = db.ConnectionSpec(url=database.url, lock_timeout=3, statement_timeout=120)
    engine = spec.engine()
    try:
        conn = db.connect(engine, spec)
        first = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        conn.rollback()
        database.scalar("SELECT pg_terminate_backend(:pid)", pid=first)
        try:
            conn.execute(sa.text("SELECT 1"))
        except sa.exc.DBAPIError:
            conn.rollback()
        row = conn.execute(
            sa.text(
                "SELECT pg_backend_pid(), current_setting('lock_timeout'), "
                "current_setting('statement_timeout')"
            )
        ).one()
        assert row[0] != first  # a new session
        assert (row[1], row[2]) == ("3s", "2min")
        conn.close()
    finally:
        engine.dispose()


def test_sessions_share_an_engine_only_with_the_same_options(database: Database) -> None:
    plain = db.ConnectionSpec(url=database.url)
    idle = db.ConnectionSpec(url=database.url)
    migration = db.ConnectionSpec(url=database.url, lock_timeout=3, client_check=True)
    assert plain.engine_key == idle.engine_key
    assert migration.engine_key != plain.engine_key
    engine = plain.engine()
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar_one() == "0"
    finally:
        engine.dispose()


def test_the_urls_own_options_come_first(database: Database) -> None:
    spec = db.ConnectionSpec(url=database.url + "&options=-c%20work_mem%3D12345kB", lock_timeout=2)
    engine = spec.engine()
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT current_setting('work_mem'), current_setting('lock_timeout')")
            ).one()
        assert tuple(row) == ("12345kB", "2s")
    finally:
        engine.dispose()
