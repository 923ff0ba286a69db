"""Finding the user's Alembic project and running its env.py with the deployer's connection.

Alembic's command API split (alembic.command vs alembic.config) is followed: this module builds
the `Config` and `ScriptDirectory` once, and `run_env` runs the user's own env.py with a work
function (what `alembic.command.upgrade` does), handing env.py the deployer's connection through
`config.attributes["connection"]` (Alembic's cookbook) and also `sqlalchemy.url` and
`DATABASE_URL` for env.py files that build their own engine.

env.py runs on the calling thread (`env-thread: main`) or in a worker thread of an AnyIO event
loop (`worker`), as applications whose env.py calls back into the loop run it themselves. The
revisions are read again when env.py sets its own version locations, and a work function only
runs on the database it was meant for (`check_target`). `render_offline` runs env.py in
Alembic's offline (`--sql`) mode, for the plan's SQL and the risk review without a rehearsal.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionMap
from sqlalchemy import event

from deployer.errors import ConfigError, StepFailed, describe_exception
from deployer.results import Revision

if TYPE_CHECKING:
    from deployer.db import Address


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


ENV_THREADS = ("main", "worker")  # the input env-thread


@dataclass
class _Loaded:
    """Where the revisions were read from (the script's version locations, as given), and
    whether the run was told that none were found."""

    locations: tuple[str, ...] = ()
    workspace: Path | None = None
    env_ran: bool = False
    said_empty: bool = False
    # AlembicProject.ancestors, by heads, for the revision map it was computed on
    ancestors: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)
    ancestors_of: object = None


@dataclass(frozen=True)
class AlembicProject:
    """The user's project: its Config (their ini when there is one) and script folder.
    `env_thread`: where env.py runs (the input env-thread); `warn`: the run's warning channel
    (the command's `ctx.warn`), told once when env.py has run and no revision was found."""

    config: Config
    script: ScriptDirectory
    ini: Path | None
    script_location: Path
    url_driver: str = "psycopg"  # the driver written into sqlalchemy.url for env.py
    warnings: tuple[str, ...] = ()  # what Alembic warned while loading the revisions
    env_thread: str = "main"
    warn: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    loaded: _Loaded = field(default_factory=_Loaded, compare=False, repr=False)

    def version_locations(self) -> list[Path]:
        """The folders the revisions are read from (Alembic's `versions` folder unless the ini
        or env.py names others)."""
        return list(self.script._version_locations)

    def refresh(self) -> bool:
        """Read the revisions again when env.py has set its own version locations
        (`context.script.version_locations = [...]`, which Alembic honours because it reads
        the revisions only after env.py ran; the deployer read them before). Alembic memoizes
        both the resolved locations and the revision map: both are dropped. True when the
        revisions were read again."""
        script = self.script
        now = tuple(str(p) for p in script.version_locations or ())
        if now == self.loaded.locations:
            return False
        for memo in ("_version_locations", "_singular_version_location"):
            script.__dict__.pop(memo, None)
        script.revision_map = RevisionMap(script._load_revisions)
        self.loaded.locations = now
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                script.get_heads()
            except Exception as exc:  # noqa: BLE001 - user code: any error is a config error
                said = "; ".join(str(w.message) for w in _unique(caught))
                raise ConfigError(
                    f"cannot load the migrations in the version locations env.py sets "
                    f"({self.shown_locations()}): {said or describe_exception(exc)}"
                ) from None
        if self.warn is not None:
            for w in _unique(caught):
                self.warn(f"Alembic: {w.message}")
        return True

    def shown_locations(self) -> str:
        ws = self.loaded.workspace
        return ", ".join(_shown(p, ws) if ws else repr(str(p)) for p in self.version_locations())

    def no_revisions(self) -> str:
        """The warning for a project where no revision was found ("" when there are some)."""
        if self.script.get_heads():
            return ""
        return (
            f"no revisions found in {self.shown_locations()}: nothing to migrate. Is "
            "migrations-path the right folder? (an env.py that sets its own version "
            "locations is honoured)"
        )

    def said_after_env(self) -> None:
        """After env.py ran: a project without any revision is said once a run (`warn`)."""
        if self.loaded.said_empty or self.warn is None:
            return
        message = self.no_revisions()
        if message:
            self.loaded.said_empty = True
            self.warn(message)

    @property
    def unsettled(self) -> bool:
        """No revision found yet and env.py not run yet: it may set its own version
        locations, so a revision named before it ran cannot be refused yet."""
        return not self.loaded.env_ran and not self.script.get_heads()

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
            description=summary(sc),
            down_revision=downs,
            path=str(sc.path),
        )

    def ancestors(self, heads: Iterable[str]) -> set[str]:
        """`heads` and every revision below them. Remembered for the revision map it was read
        from (a deploy asks three times for the same heads: the history check, the heads
        check and the status; Alembic's walk takes ~10 ms at 500 revisions)."""
        key = frozenset(heads)
        memo = self.loaded
        if memo.ancestors_of is not self.script.revision_map:
            memo.ancestors, memo.ancestors_of = {}, self.script.revision_map
        found = memo.ancestors.get(key)
        if found is None:
            out: set[str] = set()
            for head in key:
                for sc in self.script.iterate_revisions(head, "base"):
                    out.add(sc.revision)
            found = memo.ancestors[key] = frozenset(out)
        return set(found)

    def upgrade_path(self, current: Iterable[str], target: str) -> list[Revision]:
        """Revisions an upgrade from `current` to `target` would apply, oldest first."""
        # Alembic's own commands pass the heads tuple here too (command.upgrade).
        steps = self.script._upgrade_revs(target, tuple(current))  # type: ignore[arg-type]
        return [self.describe(step.revision.revision) for step in steps]


def summary(script: Script) -> str:
    """A revision's description: the first line of its docstring (Alembic's `doc` is the first
    paragraph, which runs on into `Revision ID: …` / `Revises: …` when no blank line follows
    the message)."""
    for line in (script.doc or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


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
    loaded = _Loaded(tuple(str(p) for p in script.version_locations or ()), workspace)
    return AlembicProject(
        config=config,
        script=script,
        ini=ini,
        script_location=location,
        warnings=warned,
        loaded=loaded,
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
    user gave it, into `DATABASE_URL`, for env.py files that build their own engine.
    Before `fn` runs, the revisions are read again if env.py set its own version locations, and
    the connection env.py migrates on is checked to be `url`'s database (`check_target`).
    env.py runs where the project's `env_thread` says (`main`: this thread; `worker`: a worker
    thread of an AnyIO event loop, see `_in_worker`)."""
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

    checked: list[MigrationContext] = []

    def work(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        project.refresh()
        project.loaded.env_ran = True
        if context not in checked:  # reached some other way: checked here, as it always was
            check_target(context, connection, url)
        return fn(heads, context)

    environment = EnvironmentContext(config, project.script, fn=work, as_sql=as_sql, **env_kw)
    alembic_run = environment.run_migrations

    def run_migrations(**kw: Any) -> None:
        # What env.py's `context.run_migrations()` calls (Alembic's module proxy takes the
        # instance's attribute): the target is checked before Alembic writes anything there,
        # not even the version table (on an AUTOCOMMIT connection it would stay).
        context = environment.get_context()
        check_target(context, connection, url)
        checked.append(context)
        alembic_run(**kw)

    environment.run_migrations = run_migrations  # type: ignore[method-assign]

    with _environ(env), _sys_path(*paths), environment:
        try:
            if project.env_thread == "worker":
                _in_worker(project.script.run_env, connection, url)
            else:
                project.script.run_env()
        except SystemExit as exc:
            # User code may not end the deployer: it must still report, and redact.
            raise UserExit(f"env.py called sys.exit({exc.code!r})") from None
    project.refresh()
    project.loaded.env_ran = True
    project.said_after_env()


def check_target(context: MigrationContext, handed: sa.Connection | None, url: str) -> None:
    """The connection env.py migrates on must be the one it was handed or one to `url`'s
    database: an env.py that falls back to another database (a SQLite file when the variable
    it reads its URL from is missing, a database of its own, or one of the same name on another
    server, such as a CI job's service container at `localhost`) is stopped before any
    revision runs there, with exit 1, naming where it went (password hidden, secrets masked)
    and what it probably lacks. A URL with the target's address and database name passes as
    it is; any other PostgreSQL URL is compared by the database the server says it is
    (`db.server_identity`, asked on env.py's connection and on the one it was handed, or a
    session of our own without one: a pooler's URL, or another spelling of the host, is the
    target when the server says so). Offline (`--sql`) runs have no connection and are not
    checked."""
    conn = context.connection
    if context.as_sql or conn is None or conn is handed:
        return
    from deployer.db import driver_address, server_identity, sqlalchemy_url, url_session

    # Without a connection handed to env.py: a session of our own to `url`, opened once if asked.
    own = functools.cache(lambda: url_session(url))
    target = sqlalchemy_url(url)
    went = conn.engine.url
    elsewhere = ""
    redirected = unsaid = False
    if went.get_backend_name() == "postgresql":
        wanted = target.database
        if wanted and went.database == wanted and _address(went) == _address(target):
            # The target's own URL (sqlalchemy.url, DATABASE_URL), unless the engine's
            # `creator` or `connect_args` took its connection elsewhere. libpq's drivers say
            # where it went; with another (asyncpg, pg8000) the server says which database.
            where = driver_address(conn)
            unsaid = redirected = where is None
            if where is not None:
                # Where the target's own session went: the one handed to env.py, else ours when
                # the URL leaves its host or port to libpq's defaults (then none is needed).
                if handed is not None:
                    reference = driver_address(handed)
                else:
                    reference = None if all(_address(went)[:2]) else own()[0]
                actual = _connected_to(where, went, reference)
                if actual is None:
                    return  # where the URL says: nothing to ask
                went, redirected = actual, True
        theirs = server_identity(conn)
        # Ours: the session env.py was handed (the target's), else one opened for the question.
        ours = None
        if theirs is not None:
            ours = server_identity(handed) if handed is not None else own()[1]
        if theirs is None or ours is None:
            # Cannot tell: the name decides, as it always did.
            if not wanted or not went.database or went.database == wanted:
                return
        elif theirs == ours:
            return
        else:
            if unsaid:  # the URL is not where it went: the database is the server's word
                went = went.set(database=theirs[0])
            if went.database == wanted:
                elsewhere = " (a database of the same name on another server)"
            elif not went.database or (unsaid and theirs[2] != ours[2]):
                elsewhere = " (on another server)"
    from deployer.redact import redact

    shown = redact(went.render_as_string(hide_password=True))
    aimed = redact(target.set(drivername="postgresql").render_as_string(hide_password=True))
    raise StepFailed(
        f"env.py connects to another database: {shown}{elsewhere}, not the target database "
        f"{aimed}; nothing was run there. {_why_elsewhere(redirected, unsaid)}",
        error_class="config",
        obj=shown,
    )


def _why_elsewhere(redirected: bool, unsaid: bool) -> str:
    """What `check_target`'s message says env.py probably did: redirected the engine built from
    the target's URL (`unsaid`: on a driver that does not say where it connected), or used a
    URL of its own."""
    if redirected:
        how = " (or its driver's own defaults do: it does not say where it went)" if unsaid else ""
        return (
            "Its engine is built from the target's URL, but the engine's `creator` or "
            f"`connect_args` connect it elsewhere{how}: let the URL alone say where to connect"
        )
    return (
        "It used neither the connection db-deploy hands it "
        "(config.attributes['connection']) nor sqlalchemy.url / DATABASE_URL: it probably reads "
        "its URL from a variable of its own that is not set here (and falls back to this one). "
        "Set that variable to the database URL in the step's env (e.g. MYAPP_DATABASE_URL: "
        "${{ secrets.DATABASE_URL }}), or make env.py use DATABASE_URL"
    )


def _connected_to(where: Address, url: sa.URL, reference: Address | None) -> sa.URL | None:
    """Where the driver says env.py's connection went (`where`: `db.driver_address`, libpq's
    host, address, port, database and user), as a URL, when that is not where it should be;
    None when it is. Compared with where the target's own session went (`reference`: the
    connection env.py was handed, or a session of ours, libpq's defaults applied alike: a
    redirect of the port alone is seen), else with `url` as written: the parts it leaves to
    libpq's defaults are then not compared."""
    host, hostaddr, port, dbname, user = where
    written_host, written_port = _address(url)[:2]
    if reference is not None:
        ref_host, ref_hostaddr, ref_port, ref_dbname, _ = reference
        same_address = not (ref_hostaddr and hostaddr) or ref_hostaddr == hostaddr  # psycopg2: ""
        if (ref_host, ref_port, ref_dbname) == (host, port, dbname) and same_address:
            return None
    elif (
        dbname == url.database
        and (not written_host or written_host == host)
        and (not written_port or written_port == str(port))
    ):
        return None
    query = {k: v for k, v in url.query.items() if k not in {"host", "port", "hostaddr"}}
    socket = host.startswith("/")  # a socket folder: in the query, libpq's own spelling
    if socket:
        query = {**query, "host": host, "port": str(port)}
    elif hostaddr and hostaddr != host:
        query = {**query, "hostaddr": hostaddr}
    return sa.URL.create(
        url.drivername,
        username=user or url.username,
        password=url.password,
        host=None if socket else host,
        port=None if socket else port,
        database=dbname,
        query=query,
    )


def _address(url: sa.URL) -> tuple[str, ...]:
    """Where a PostgreSQL URL points, as written: its host and port (the `host` and `port`
    query parameters first, as libpq reads them: a socket folder, several hosts), `hostaddr`
    and `service`. Equal addresses need no question to the server."""
    q = url.query
    return tuple(
        str(v or "")
        for v in (
            q.get("host") or url.host,
            q.get("port") or url.port,
            q.get("hostaddr"),
            q.get("service"),
        )
    )


@dataclass(frozen=True)
class OfflineSQL:
    """Alembic's offline (`--sql`) script for a range of revisions: the whole `text`, and where
    each revision's step began in it (`marks`: (revision, offset) in order, then ("", where the
    last step ended)). `error`: why there is none (what env.py or a revision raised, as
    `describe_exception` says it: a revision that reads data cannot render offline)."""

    text: str = ""
    marks: tuple[tuple[str, int], ...] = ()
    error: str = ""

    def by_step(self) -> dict[str, str]:
        """Each revision's part of the text, cut where Alembic began its step (a revision's
        part holds its own BEGIN/COMMIT only when each migration has its own transaction)."""
        return {rev: self.text[start:end] for (rev, start), (_, end) in pairwise(self.marks) if rev}


def render_offline(
    project: AlembicProject,
    url: str,
    start: str | None,
    target: str,
    workspace: Path | None = None,
) -> OfflineSQL:
    """Run env.py in Alembic's offline (`--sql`) mode from revision `start` (None: from the
    base) to `target`, as `alembic upgrade start:target --sql` would, and keep the script it
    writes with the step boundaries. Anything env.py or a revision raises is `error`. Nothing
    is redacted here: the callers' text goes out through the run's redaction."""
    buf = io.StringIO()
    marks: list[tuple[str, int]] = []

    def steps(planned: list[RevisionStep]) -> Iterator[RevisionStep]:
        for step in planned:
            marks.append((step.revision.revision, buf.tell()))
            yield step
        marks.append(("", buf.tell()))

    def work(current: tuple[str, ...], context: MigrationContext) -> Any:
        return steps(list(project.script._upgrade_revs(target, current)))  # type: ignore[arg-type]

    try:
        run_env(
            project,
            work,
            connection=None,
            url=url,
            workspace=workspace,
            as_sql=True,
            output_buffer=buf,
            starting_rev=start,
            destination_rev=target,
        )
    except Exception as exc:  # noqa: BLE001 - user code that cannot run offline
        return OfflineSQL(error=describe_exception(exc))
    return OfflineSQL(text=buf.getvalue(), marks=tuple(marks))


# The threads running env.py now besides the one that called `run_env` (env-thread: worker:
# the worker thread and the event loop's), so that what watches env.py's sessions sees them.
ENV_THREAD_IDS: set[int] = set()
# A worker env.py still busy this long after a cancel (in Python code, beyond the reach of a
# server-side cancel) is left behind: the run reports and ends without waiting for it.
CANCEL_GRACE = 2.0


class EnvInterrupted(KeyboardInterrupt):
    """Raised inside a worker env.py when the run is cancelled (the signal itself reaches the
    main thread only); a KeyboardInterrupt, so that the driver cancels its statement on the
    server and the open revision rolls back, as on the main thread."""


def _in_worker(body: Callable[[], None], handed: sa.Connection | None, url: str) -> None:
    """Run `body` (env.py) in a worker thread of an AnyIO event loop, which env.py may call
    back into (`anyio.from_thread.run`). The loop runs in a thread of its own, so that the
    main thread only waits: SIGINT/SIGTERM (deployer/cancel.py) raise there as ever, and then
    the worker is interrupted too (`EnvInterrupted` raised in it, env.py's statements cancelled
    on the server) before the interrupt goes on. `body`'s own outcome is re-raised here."""
    import anyio
    import anyio.to_thread

    outcome: list[BaseException] = []
    worker: list[int] = []
    interrupted, done = threading.Event(), threading.Event()
    sessions: set[int] = set()  # server pids of the sessions env.py's threads check out

    def in_worker() -> None:
        if interrupted.is_set():  # cancelled before env.py started
            return
        worker.append(threading.get_ident())
        ENV_THREAD_IDS.add(worker[0])
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome.append(exc)
        finally:
            ENV_THREAD_IDS.discard(worker[0])

    async def main() -> None:
        await anyio.to_thread.run_sync(in_worker)

    def loop() -> None:
        me = threading.get_ident()
        ENV_THREAD_IDS.add(me)
        try:
            anyio.run(main)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome.append(exc)
        finally:
            ENV_THREAD_IDS.discard(me)
            done.set()

    def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if threading.get_ident() in ENV_THREAD_IDS:
            pid = _server_pid(dbapi_connection)
            if pid:
                sessions.add(pid)

    if handed is not None:
        with suppress(Exception):
            sessions.add(_server_pid(handed.connection.dbapi_connection))
    thread = threading.Thread(target=loop, name="env.py event loop", daemon=True)
    event.listen(sa.pool.Pool, "checkout", checkout)
    try:
        thread.start()
        # Not thread.join(): a join interrupted by the signal marks the thread as ended
        # (CPython before 3.13), an event's wait does not.
        while not done.wait(0.05):
            pass
    except KeyboardInterrupt:
        interrupted.set()
        if worker and not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(worker[0]), ctypes.py_object(EnvInterrupted)
            )
            _cancel_sessions(sessions, url)
        _wait(done, CANCEL_GRACE)
        raise
    finally:
        event.remove(sa.pool.Pool, "checkout", checkout)
    if outcome:
        raise outcome[0]


def _wait(done: threading.Event, seconds: float) -> None:
    """Wait for `done` at most `seconds`, through further interrupts."""
    deadline = time.monotonic() + seconds
    while not done.is_set() and time.monotonic() < deadline:
        with suppress(KeyboardInterrupt):
            done.wait(0.05)


def _server_pid(dbapi_connection: Any) -> int:
    """The server pid of a driver connection (psycopg 3, psycopg2, asyncpg, or SQLAlchemy's
    adapter around an async one); 0 when unknown."""
    from deployer.db import dbapi_backend_pid

    raw = getattr(dbapi_connection, "driver_connection", None) or dbapi_connection
    pid = dbapi_backend_pid(raw)
    if not pid and hasattr(raw, "get_server_pid"):  # asyncpg
        with suppress(Exception):
            pid = int(raw.get_server_pid() or 0)
    return pid


def _cancel_sessions(pids: set[int], url: str) -> None:
    """Cancel, from a session of its own on `url`'s database, the statements env.py's sessions
    are running (a worker blocked in the driver cannot take the interrupt itself). Only sessions
    of the same role on that database: a pid seen on another server is never touched."""
    if not pids:
        return
    from deployer.db import sqlalchemy_url

    engine = sa.create_engine(
        sqlalchemy_url(url),
        poolclass=sa.pool.NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with engine.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = ANY("
                    "CAST(:pids AS int[])) AND datname = current_database() "
                    "AND usename = current_user"
                ),
                {"pids": sorted(pids)},
            )
    except Exception:  # noqa: BLE001 - best effort: the interrupt is raised in the worker anyway
        pass
    finally:
        engine.dispose()


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


def version_heads(
    conn: sa.Connection, version_table: str = "alembic_version", schema: str | None = None
) -> list[str]:
    """`read_heads`, a failure said in one line (StepFailed, exit 1): the deploy role that may
    not read the table (env.py migrating as a role of its own, which created it) is told what
    to grant."""
    from deployer.db import server_message
    from deployer.errors import sqlstate

    try:
        return read_heads(conn, version_table, schema)
    except sa.exc.DBAPIError as exc:
        name = f"{schema}.{version_table}" if schema else version_table
        message = f"cannot read the revision from {name}: {server_message(exc)}"
        if sqlstate(exc) == "42501":  # insufficient_privilege
            message += (
                f". The deploy role may not read it: env.py probably migrates as a role of its "
                f"own, which created it. Grant SELECT on {name} to the deploy role, or let "
                "env.py migrate on the connection db-deploy hands it"
            )
            raise StepFailed(message, error_class="config") from None
        raise StepFailed(message) from None
