"""Seed: a `seed(connection)` Python file or a `.sql` file, in one transaction after the
migrations. Row deltas per table come from `pg_stat_xact_user_tables`, the statistics of the
current transaction, read when it starts and just before it commits: exact, and free of any
count(*). (The view also holds this backend's counts from earlier transactions that are not yet
flushed to the shared statistics, and no flush happens inside a transaction: hence the
difference.)"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from deployer.db import server_message
from deployer.errors import ConfigError, describe_exception
from deployer.results import SeedResult, TableDelta

_DELTAS = sa.text(
    """
    SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_del
    FROM pg_stat_xact_user_tables
    WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
    ORDER BY 1
    """
)


def _stats(connection: sa.Connection) -> dict[str, tuple[int, int, int]]:
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in connection.execute(_DELTAS)}


def check_seed_file(path: Path) -> str:
    """The seed's kind (`python` or `sql`); a missing or unsupported file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"seed file {str(path)!r} does not exist (seed-path)")
    if path.suffix == ".py":
        _load_module(path)  # imports now, before anything is migrated: errors are exit 2
        return "python"
    if path.suffix == ".sql":
        return "sql"
    raise ConfigError(
        f"seed file {path.name!r} must be a .py file with seed(connection) or a .sql file"
    )


_LOADED: dict[Path, ModuleType] = {}


def _load_module(path: Path) -> ModuleType:
    """Import the seed file once per run (the check before migrating, then the seed step)."""
    if path in _LOADED:
        return _LOADED[path]
    name = f"_db_deploy_seed_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import seed file {path.name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
        raise ConfigError(
            f"cannot import seed file {path.name!r}: {describe_exception(exc)}"
        ) from None
    finally:
        sys.path.remove(str(path.parent))
    if not callable(getattr(module, "seed", None)):
        raise ConfigError(f"seed file {path.name!r} defines no seed(connection) function")
    _LOADED[path] = module
    return module


def seed(connection: sa.Connection, path: Path) -> SeedResult:
    """Run the seed in one transaction; on failure it is rolled back and `error` is set."""
    kind = check_seed_file(path)
    module = _load_module(path) if kind == "python" else None
    result = SeedResult(path=str(path), kind=kind)
    started = time.perf_counter()
    if connection.in_transaction():
        connection.commit()
    try:
        with connection.begin():
            before = _stats(connection)
            if module is not None:
                try:
                    module.seed(connection)
                except SystemExit as exc:
                    raise RuntimeError(f"seed() called sys.exit({exc.code!r})") from None
            else:
                # No parameters: psycopg sends the script as one simple query, statements and all.
                raw = connection.connection.driver_connection
                assert raw is not None
                with raw.cursor() as cur:
                    cur.execute(path.read_text(encoding="utf-8"))
            after = _stats(connection)
            for table, counts in sorted(after.items()):
                base = before.get(table, (0, 0, 0))
                ins, upd, dele = (a - b for a, b in zip(counts, base, strict=True))
                if ins or upd or dele:
                    result.tables.append(TableDelta(table, ins, upd, dele))
    except Exception as exc:  # noqa: BLE001 - user code: report it
        result.tables = []
        result.error = (
            server_message(exc) if isinstance(exc, sa.exc.DBAPIError) else describe_exception(exc)
        )
    result.seconds = round(time.perf_counter() - started, 4)
    return result
