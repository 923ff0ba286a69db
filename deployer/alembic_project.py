"""Finding the user's Alembic project and running its env.py with the deployer's connection.

Alembic's command API split (alembic.command vs alembic.config) is followed: this module builds
the `Config` and `ScriptDirectory` once, and `run_env` runs the user's own env.py with a work
function (what `alembic.command.upgrade` does), handing env.py the deployer's connection through
`config.attributes["connection"]` (Alembic's cookbook) and also `sqlalchemy.url` and
`DATABASE_URL` for env.py files that build their own engine.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory

from deployer.errors import ConfigError, describe_exception
from deployer.results import Revision


class AlembicLog(logging.Filter):
    """Alembic's own INFO lines (`alembic.runtime.migration`, which a project's env.py usually
    prints through `fileConfig`): its set-up lines ("Context impl", "Will assume … DDL",
    "Generating static SQL") once a run, although the deployer configures a migration context
    several times; in a dry run (`plan`) none, nor "Running upgrade …", for nothing is applied.
    A filter on the logger itself, which `fileConfig` leaves in place."""

    SETUP = ("Context impl", "Will assume", "Generating static SQL")
    RUNNING = ("Running ",)

    def __init__(self) -> None:
        super().__init__()
        self.run = 0
        self.quiet = False
        self.seen: set[str] = set()

    def start(self, run: object, *, quiet: bool) -> None:
        """A new run (`run`: any object standing for it) begins: show the set-up lines again
        once, none at all when `quiet` (a dry run)."""
        if id(run) != self.run:  # its id: the filter keeps no run (nor its project) alive
            self.run, self.seen = id(run), set()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(self.SETUP):
            text = record.getMessage()
            if self.quiet or text in self.seen:
                return False
            self.seen.add(text)
        elif message.startswith(self.RUNNING):
            return not self.quiet
        return True


ALEMBIC_LOG = AlembicLog()
logging.getLogger("alembic.runtime.migration").addFilter(ALEMBIC_LOG)


@dataclass(frozen=True)
class AlembicProject:
    """The user's project: its Config (their ini when there is one) and script folder."""

    config: Config
    script: ScriptDirectory
    ini: Path | None
    script_location: Path
    url_driver: str = "psycopg"  # the driver written into sqlalchemy.url for env.py
    warnings: tuple[str, ...] = ()  # what Alembic warned while loading the revisions

    def heads(self) -> list[str]:
        return sorted(self.script.get_heads())

    def revision(self, rev: str) -> Script:
        script = self.script.get_revision(rev)
        assert script is not None
        return script

    def describe(self, rev: str) -> Revision:
        sc = self.revision(rev)
        down = sc.down_revision
        downs = [] if down is None else [down] if isinstance(down, str) else list(down)
        return Revision(
            revision=sc.revision,
            description=(sc.doc or "").strip(),
            down_revision=downs,
            path=str(sc.path),
        )

    def ancestors(self, heads: Iterable[str]) -> set[str]:
        """`heads` and every revision below them."""
        out: set[str] = set()
        for head in heads:
            for sc in self.script.iterate_revisions(head, "base"):
                out.add(sc.revision)
        return out

    def upgrade_path(self, current: Iterable[str], target: str) -> list[Revision]:
        """Revisions an upgrade from `current` to `target` would apply, oldest first."""
        # Alembic's own commands pass the heads tuple here too (command.upgrade).
        steps = self.script._upgrade_revs(target, tuple(current))  # type: ignore[arg-type]
        return [self.describe(step.revision.revision) for step in steps]


def find_project(
    migrations: Path,
    workspace: Path,
    *,
    alembic_ini: Path | None = None,
    script_location: Path | None = None,
) -> AlembicProject:
    """Load the project at `migrations`: an alembic.ini, a folder holding one, or the script folder
    (whose ini may sit one level up, as in projects that ship their migrations inside a package).
    `alembic_ini` / `script_location` (inputs of the same names) override what is found. Anything
    missing or broken is a ConfigError (exit 2) naming the path relative to the workspace."""
    ini = alembic_ini
    if ini is not None and not ini.is_file():
        raise ConfigError(f"alembic-ini {_shown(ini, workspace)} does not exist")
    if ini is None and script_location is None:
        shown = _shown(migrations, workspace)
        if not migrations.exists():
            raise ConfigError(
                f"migrations-path {shown} does not exist (looked for {migrations.resolve()}; "
                f"relative paths start from the workspace {workspace}: run from the "
                "repository's root, or pass --workspace DIR)"
            )
        if migrations.is_file():
            if migrations.suffix != ".ini":
                raise ConfigError(f"migrations-path {shown} is a file but not an alembic.ini")
            ini = migrations
        elif (migrations / "alembic.ini").is_file():
            ini = migrations / "alembic.ini"
        elif (migrations / "env.py").is_file():
            ini = _ini_above(migrations)
        else:
            raise ConfigError(
                f"migrations-path {shown} holds no alembic.ini and no env.py: "
                "point it at your Alembic project"
            )
    config = Config(str(ini)) if ini else Config()
    if script_location is not None:
        if not (script_location / "env.py").is_file():
            raise ConfigError(
                f"script-location {_shown(script_location, workspace)} holds no env.py"
            )
        location = script_location.resolve()
    elif migrations.is_dir() and (migrations / "env.py").is_file():
        location = migrations.resolve()  # the script folder itself, named by the user
    else:
        location = _script_location(config, ini, migrations, workspace)
    config.set_main_option("script_location", str(location))
    # Alembic warns (a UserWarning with its own file's path) about a revision that names a
    # down_revision not present: caught, and said in the error line or as one clean line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            script = ScriptDirectory.from_config(config)
            script.get_heads()  # loads every revision file now: errors surface here
        except Exception as exc:  # noqa: BLE001 - user code: any error is a config error
            # Alembic's warning names the missing revision better than the KeyError after it.
            said = "; ".join(str(w.message) for w in _unique(caught))
            raise ConfigError(
                f"cannot load the migrations in {_shown(location, workspace)}: "
                f"{said or describe_exception(exc)}"
            ) from None
    warned = tuple(str(w.message) for w in _unique(caught))
    return AlembicProject(
        config=config, script=script, ini=ini, script_location=location, warnings=warned
    )


def _unique(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    seen: set[str] = set()
    out = []
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            out.append(w)
    return out


def _ini_above(script_folder: Path) -> Path | None:
    """An alembic.ini one level above the script folder whose script_location names it."""
    candidate = script_folder.parent / "alembic.ini"
    if not candidate.is_file():
        return None
    try:
        raw = Config(str(candidate)).get_main_option("script_location") or ""
    except Exception:  # noqa: BLE001 - an unreadable ini is simply not ours
        return None
    named = (candidate.parent / raw).resolve() if raw and not raw.count(":") else None
    return candidate if named == script_folder.resolve() else None


def _script_location(config: Config, ini: Path | None, folder: Path, workspace: Path) -> Path:
    """As Alembic resolves it from the working folder, else relative to the ini's folder, else
    the folder holding env.py."""
    raw = config.get_main_option("script_location") if ini else None
    if raw and ":" in raw and not os.path.isabs(raw) and not raw.startswith("."):
        # package resource form `pkg:folder`
        from alembic.util import coerce_resource_to_filename

        return Path(coerce_resource_to_filename(raw))
    candidates: list[Path] = []
    if raw:
        p = Path(raw)
        if p.is_absolute():
            candidates.append(p)
        else:
            candidates += [workspace / p, Path.cwd() / p]
            if ini:
                candidates.append(ini.parent / p)
    base = ini.parent if ini else folder
    candidates.append(base)
    if not ini:
        candidates.insert(0, folder)
    for c in candidates:
        if (c / "env.py").is_file():
            return c.resolve()
    where = f"script_location {raw!r}" if raw else _shown(base, workspace)
    raise ConfigError(f"no env.py found for {where}: is this an Alembic project?")


def _shown(path: Path, workspace: Path) -> str:
    try:
        return repr(str(path.resolve().relative_to(workspace)))
    except ValueError:
        return repr(str(path))


class UserExit(RuntimeError):
    """env.py or a seed called sys.exit(): turned into an ordinary error."""


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _sys_path(*paths: Path) -> Iterator[None]:
    added = [str(p) for p in paths if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


WorkFn = Callable[[tuple[str, ...], MigrationContext], Iterable[Any]]


def run_env(
    project: AlembicProject,
    fn: WorkFn,
    *,
    connection: sa.Connection | None,
    url: str,
    environ: dict[str, str] | None = None,
    workspace: Path | None = None,
    as_sql: bool = False,
    output_buffer: Any = None,
    **env_kw: Any,
) -> None:
    """Run the project's env.py with work function `fn` (called with the current heads and the
    MigrationContext before any step runs). `url` (with its password) goes into
    `sqlalchemy.url` (with the project's `url_driver`, `%` escaped for the ini parser) and, as the
    user gave it, into `DATABASE_URL`, for env.py files that build their own engine."""
    config = project.config
    from deployer.db import sqlalchemy_url

    parsed = sqlalchemy_url(url, project.url_driver)
    ours, theirs = (environ or {}).get("PGOPTIONS"), parsed.query.get("options")
    if ours and isinstance(theirs, str):
        # libpq ignores PGOPTIONS when the URL has `options`: env.py's own engine gets both.
        parsed = parsed.update_query_dict({"options": f"{theirs} {ours}"})
    engine_url = parsed.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    else:
        config.attributes.pop("connection", None)
    if output_buffer is not None:
        config.output_buffer = output_buffer
    env = {"DATABASE_URL": with_options(url, ours) if ours else url, **(environ or {})}
    paths = [p for p in (workspace, project.script_location.parent) if p is not None]
    with (
        _environ(env),
        _sys_path(*paths),
        EnvironmentContext(config, project.script, fn=fn, as_sql=as_sql, **env_kw),
    ):
        try:
            project.script.run_env()
        except SystemExit as exc:
            # User code may not end the deployer: it must still report, and redact.
            raise UserExit(f"env.py called sys.exit({exc.code!r})") from None


def with_options(url: str, extra: str) -> str:
    """`url` (a libpq URI, as the user wrote it) with `extra` appended to its `options` query
    parameter when it has one, for libpq then ignores PGOPTIONS; else `url` unchanged. Only
    that parameter is rewritten (percent-encoded, as libpq decodes it)."""
    base, mark, query = url.partition("?")
    if not mark:
        return url
    pairs = query.split("&")
    for i, pair in enumerate(pairs):
        key, sep, value = pair.partition("=")
        if key == "options" and sep:
            pairs[i] = "options=" + quote(f"{unquote(value)} {extra}".strip(), safe="")
            return f"{base}?{'&'.join(pairs)}"
    return url


def read_heads(
    conn: sa.Connection, version_table: str = "alembic_version", schema: str | None = None
) -> list[str]:
    """The revisions recorded in the version table, read on our own connection."""
    ctx = MigrationContext.configure(
        conn, opts={"version_table": version_table, "version_table_schema": schema}
    )
    return sorted(ctx.get_current_heads())
