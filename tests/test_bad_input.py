"""The bad-input matrix: every way a deploy can be given something wrong, in one place.

Each row: the exit code of the spec, exactly one `::error` line on a GitHub runner (one
`error:` line on stderr on a terminal) carrying the message, no traceback, and the database
as it was (no version table, no tables, no `db_deploy` history schema), unless the row is about
a later step. The Slack rows are the other way round: the deploy's result is unchanged and the
problem is one warning. docs/safety.md's "Bad-input matrix" lists these rows 1:1 by
test id; `test_the_matrix_doc_lists_every_row` keeps the two in step.

Some rows repeat a focused test elsewhere (test_cli.py, test_seed_smoke.py, test_slack.py); here
they are checked the same way, side by side.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.helpers import (
    REPO,
    AlembicProject,
    Database,
    EmbeddedServer,
    GitHubRunner,
    Run,
    clean_env,
    create_database,
    drop_database,
)
from tests.helpers.pgcluster import ClusterDatabase, assert_no_leaks, closed_port

DOC = REPO / "docs" / "safety.md"  # its "Bad-input matrix" section
HOOK_PATH = "/services/T0000/B0000/matrixHookSecret"
SCHEMA = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True))"
SEED = """
import sqlalchemy as sa

def seed(connection):
    connection.execute(sa.text("INSERT INTO items VALUES (1), (2)"))
"""


# --------------------------------------------------------------------------- the database


@dataclass(frozen=True)
class State:
    """What the tool could have changed: the version table, the tables, its history schema."""

    version: frozenset[str]
    tables: frozenset[str]
    history: bool

    @property
    def untouched(self) -> bool:
        return not self.version and not self.tables and not self.history


class Target:
    """The database a row deploys to: the embedded server's, or the TCP cluster's."""

    def __init__(self, db: Database | ClusterDatabase) -> None:
        self.db = db

    @property
    def url(self) -> str:
        return self.db.url if isinstance(self.db, Database) else self.db.url()

    def state(self) -> State:
        if isinstance(self.db, Database):
            schemas = {r[0] for r in self.db.rows("SELECT nspname FROM pg_namespace")}
        else:
            schemas = self.db.schemas()
        return State(
            frozenset(self.db.version()), frozenset(self.db.tables()), "db_deploy" in schemas
        )

    def count(self, table: str) -> int:
        if isinstance(self.db, Database):
            return int(self.db.scalar(f"SELECT count(*) FROM {table}"))  # type: ignore[arg-type]
        return int(self.db.cluster.query(f"SELECT count(*) FROM {table}", self.db.name)[0][0])


# --------------------------------------------------------------------------- the rows


@dataclass
class Ctx:
    project: AlembicProject
    target: Target
    github: GitHubRunner
    request: pytest.FixtureRequest
    inputs: dict[str, str]
    cwd: Path

    def set_url(self, url: str) -> None:
        self.inputs["database-url"] = url

    def embedded_parts(self) -> tuple[str, str]:
        """(database name, socket folder) of an embedded-server URL."""
        m = re.match(r"^postgresql://postgres@/([^?]+)\?host=(.+)$", self.target.url)
        assert m, self.target.url
        return m.group(1), m.group(2)

    def deploy_first(self, **inputs: str) -> None:
        """Bring the database to a known revision before the row's own run."""
        run_cli = self.request.getfixturevalue("run_cli")
        env = self.github.with_inputs(**{**self.inputs, **inputs})
        run = run_cli(env=env, cwd=self.cwd)
        assert run.returncode == 0, run.output
        for path in (self.github.output_file, self.github.summary_file):
            path.write_text("")

    def webhook(self, respond: Callable[[HTTPServer], None]) -> None:
        httpserver: HTTPServer = self.request.getfixturevalue("httpserver")
        respond(httpserver)
        self.inputs["slack-webhook-url"] = httpserver.url_for(HOOK_PATH)


@dataclass(frozen=True)
class Case:
    id: str
    exit_code: int
    message: str  # in the one line the user sees
    prepare: Callable[[Ctx], None]
    # The database afterwards: untouched | unchanged (as before the run) | seed-rolled-back |
    # deployed (the Slack rows)
    after: str = "untouched"
    warning: bool = False  # the message is a warning; the deploy itself succeeds
    cluster: bool = False  # needs the TCP cluster with real passwords
    terminal: bool = False  # also checked outside GitHub
    budget: float = 0.0  # at most this many seconds (retries and timeouts)
    retries: int | None = None  # connection retries announced ("retrying in …")


def malformed_url(c: Ctx) -> None:
    name, host = c.embedded_parts()
    c.set_url(f"postgresql://postgres:S3cret-pw@localhost:54x32/{name}?host={host}")


def unsupported_scheme(c: Ctx) -> None:
    name, host = c.embedded_parts()
    c.set_url(f"mysql://postgres@/{name}?host={host}")


def not_a_url(c: Ctx) -> None:
    name, host = c.embedded_parts()
    c.set_url(f"host={host} dbname={name} user=postgres password=S3cret-pw")  # libpq keywords


def url_without_database(c: Ctx) -> None:
    c.set_url("postgresql://postgres:S3cret-pw@localhost:5432")


def no_database_url(c: Ctx) -> None:
    del c.inputs["database-url"]


def unreachable_host(c: Ctx) -> None:
    name, _ = c.embedded_parts()
    c.set_url(f"postgresql://postgres:S3cret-pw@127.0.0.1:{closed_port()}/{name}")
    c.inputs.update({"connect-retries": "2", "connect-timeout": "1s"})


def unresponsive_host(c: Ctx) -> None:
    """A port that accepts the TCP connection and then says nothing (a server that hangs):
    each attempt ends at connect-timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    c.request.addfinalizer(silent.close)
    name, _ = c.embedded_parts()
    c.set_url(f"postgresql://postgres:S3cret-pw@127.0.0.1:{silent.getsockname()[1]}/{name}")
    c.inputs.update({"connect-retries": "2", "connect-timeout": "1s"})


def wrong_password(c: Ctx) -> None:
    assert isinstance(c.target.db, ClusterDatabase)
    c.set_url(c.target.db.url(password="Wr0ng-pa55word"))
    c.inputs["connect-retries"] = "5"


def missing_database(c: Ctx) -> None:
    _, host = c.embedded_parts()
    c.set_url(f"postgresql://postgres@/no_such_db?host={host}")
    c.inputs["connect-retries"] = "5"


def missing_migrations_folder(c: Ctx) -> None:
    c.inputs["migrations-path"] = "nowhere"


def no_alembic_files(c: Ctx) -> None:
    folder = c.cwd / "db"
    folder.mkdir()
    (folder / "schema.sql").write_text("CREATE TABLE items (id int);\n")
    c.inputs["migrations-path"] = "db"


def broken_env_py(c: Ctx) -> None:
    env_py = c.project.root / "env.py"
    env_py.write_text("x = 1 / 0\n" + env_py.read_text())


def syntax_error_in_revision(c: Ctx) -> None:
    (c.project.versions / "0002_broken.py").write_text("revision = '0002'\ndown_revision = (\n")


def unknown_target(c: Ctx) -> None:
    c.inputs["target"] = "0009_nope"


def target_below_current(c: Ctx) -> None:
    c.project.add("0002_more", "op.create_table('more', sa.Column('id', sa.Integer))")
    c.deploy_first()
    c.inputs["target"] = "0001_items"


def database_ahead_of_folder(c: Ctx) -> None:
    newer = c.project.add("0002_more", "op.create_table('more', sa.Column('id', sa.Integer))")
    c.deploy_first()
    newer.unlink()  # an older checkout of the migrations, re-run


def bad_connection_option(c: Ctx) -> None:
    c.set_url(c.target.url + "&sslmode=bogus")


def several_heads(c: Ctx) -> None:
    c.project.add("0002_a", "op.create_table('a', sa.Column('id', sa.Integer))", down="0001_items")
    c.project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))", down="0001_items")


def invalid_duration(c: Ctx) -> None:
    c.inputs["lock-timeout"] = "10 minutes"


def lock_timeout_out_of_range(c: Ctx) -> None:
    """Longer than PostgreSQL's lock_timeout can hold (2^31-1 ms, about 24.8 days)."""
    c.inputs["lock-timeout"] = "1000h"


def slack_timeout_zero(c: Ctx) -> None:
    c.inputs.update(
        {"slack-timeout": "0", "slack-webhook-url": f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"}
    )


def invalid_number(c: Ctx) -> None:
    c.inputs["connect-retries"] = "0"


def invalid_boolean(c: Ctx) -> None:
    c.inputs["run-seed"] = "perhaps"


def invalid_expectation(c: Ctx) -> None:
    c.inputs["smoke-expect"] = "items>=2\nitems > 3"


def invalid_extension(c: Ctx) -> None:
    c.inputs["required-extensions"] = "vector>=latest"


def unknown_command(c: Ctx) -> None:
    c.inputs["command"] = "migrate"


def seed_file_missing(c: Ctx) -> None:
    c.inputs.update({"run-seed": "true", "seed-path": "nope/seed.py"})


def seed_does_not_import(c: Ctx) -> None:
    (c.project.root / "seed.py").write_text("def seed(connection)\n    pass\n")
    c.inputs["run-seed"] = "true"


def seed_raising(c: Ctx) -> None:
    (c.project.root / "seed.py").write_text(
        SEED + "    raise RuntimeError('catalog source unavailable')\n"
    )
    c.inputs["run-seed"] = "true"


def history_schema_via_search_path(c: Ctx) -> None:
    """The version table is reached only through the search_path (the URL's `options`; env.py
    names no version_table_schema), and history-schema is that schema."""
    db = c.target.db
    assert isinstance(db, Database)
    db.execute("CREATE SCHEMA IF NOT EXISTS app")  # empty: the shared database stays pristine
    c.set_url(f"{c.target.url}&options=-csearch_path%3Dapp")
    c.inputs["history-schema"] = "app"


def slack_unreachable(c: Ctx) -> None:
    c.inputs["slack-webhook-url"] = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"


def slack_slow(c: Ctx) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.8)  # longer than slack-timeout
        return Response("late")

    c.webhook(lambda server: server.expect_request(HOOK_PATH).respond_with_handler(slow))
    c.inputs["slack-timeout"] = "500ms"


def slack_500(c: Ctx) -> None:
    c.webhook(
        lambda server: server.expect_request(HOOK_PATH).respond_with_data(
            "internal_error", status=500
        )
    )


CASES = [
    Case("malformed-url", 2, "invalid database-url: malformed connection URL", malformed_url, terminal=True),
    Case("unsupported-scheme", 2, "invalid database-url: unsupported scheme 'mysql'", unsupported_scheme),
    Case("not-a-url", 2, "invalid database-url: not a connection URL", not_a_url),
    Case("url-without-database", 2, "the connection URL names no database", url_without_database),
    Case("no-database-url", 2, "no database: set the database-url input", no_database_url),
    Case("unreachable-host", 3, "after 2 attempts", unreachable_host, budget=8, retries=1),
    # Two attempts of at least 2 s each (psycopg's floor), one back-off and the start-up: about
    # 6 s. The bound is there to catch an attempt that waits for TCP's own timeout (minutes),
    # not a start-up slowed by a loaded CI machine.
    Case("unresponsive-host", 3, "after 2 attempts", unresponsive_host, budget=15, retries=1),
    Case("wrong-password", 3, "password authentication failed", wrong_password, cluster=True, terminal=True, retries=0),
    Case("missing-database", 3, 'database "no_such_db" does not exist', missing_database, retries=0),
    Case("missing-migrations-folder", 2, "migrations-path 'nowhere' does not exist", missing_migrations_folder),
    Case("no-alembic-files", 2, "holds no alembic.ini and no env.py", no_alembic_files),
    Case("broken-env-py", 2, "env.py failed before migrating: ZeroDivisionError", broken_env_py),
    Case("syntax-error-in-revision", 2, "syntax error in 0002_broken.py line 2", syntax_error_in_revision),
    Case("unknown-target", 2, "unknown target revision '0009_nope'", unknown_target),
    Case("target-below-current", 2, "is below the current revision", target_below_current, after="unchanged"),
    Case("database-ahead-of-folder", 2, "which the migrations folder does not contain", database_ahead_of_folder, after="unchanged"),
    Case("bad-connection-option", 2, 'invalid connection settings', bad_connection_option),
    Case("several-heads", 2, "2 heads (0002_a, 0002_b)", several_heads),
    Case("invalid-duration", 2, "invalid lock-timeout: expected a duration", invalid_duration),
    Case("lock-timeout-out-of-range", 2, "invalid lock-timeout", lock_timeout_out_of_range, retries=0),
    Case("slack-timeout-zero", 2, "invalid slack-timeout", slack_timeout_zero),
    Case("invalid-number", 2, "invalid connect-retries", invalid_number),
    Case("invalid-boolean", 2, "invalid run-seed: expected true/false", invalid_boolean),
    Case("invalid-expectation", 2, "invalid smoke-expect: expected `table>=N`", invalid_expectation),
    Case("invalid-extension", 2, "invalid required-extensions: expected `name` or `name>=version`", invalid_extension),
    Case("unknown-command", 2, "invalid command: expected one of deploy", unknown_command),
    Case("seed-file-missing", 2, "does not exist (seed-path)", seed_file_missing),
    Case("seed-does-not-import", 2, "cannot import seed file 'seed.py'", seed_does_not_import),
    Case("seed-raising", 1, "seed failed and was rolled back: RuntimeError: catalog source unavailable", seed_raising, after="seed-rolled-back"),
    Case("history-schema-via-search-path", 2, "invalid history-schema: 'app' is the version table's schema (the search_path's)", history_schema_via_search_path),
    Case("slack-unreachable", 0, "Slack notification failed: cannot reach the webhook", slack_unreachable, after="deployed", warning=True),
    Case("slack-slow", 0, "Slack notification failed: no answer within 0.5s", slack_slow, after="deployed", warning=True, budget=12),
    Case("slack-500", 0, "Slack notification failed: HTTP 500", slack_500, after="deployed", warning=True, terminal=True),
]  # fmt: skip


# --------------------------------------------------------------------------- running a row


@dataclass
class Result:
    run: Run
    seconds: float
    before: State
    after: State


class Pristine:
    """One empty embedded database shared by the rows that must leave it empty (most of them:
    creating a database per row costs a third of a second). A row that changed it after all
    (its own test fails) gets it replaced, so the next row starts from an empty one again."""

    def __init__(self, pg_server: EmbeddedServer, admin_engine: sa.Engine) -> None:
        self.pg_server, self.admin_engine = pg_server, admin_engine
        self.db = create_database(pg_server, admin_engine)

    def renew_if_dirty(self) -> None:
        if not Target(self.db).state().untouched:
            self.close()
            self.db = create_database(self.pg_server, self.admin_engine)

    def close(self) -> None:
        drop_database(self.admin_engine, self.db)


@pytest.fixture(scope="module")
def pristine(pg_server: EmbeddedServer, admin_engine: sa.Engine) -> Iterator[Pristine]:
    shared = Pristine(pg_server, admin_engine)
    yield shared
    shared.close()


@pytest.fixture
def ctx_for(
    request: pytest.FixtureRequest, github: GitHubRunner, project: AlembicProject
) -> Iterator[Callable[[Case], Ctx]]:
    """Builds a row's context. The database: the TCP cluster's for the authentication rows, a
    fresh embedded one for rows that change it, else the shared empty one."""
    shared: list[Pristine] = []

    def make(case: Case) -> Ctx:
        if case.cluster:
            db = request.getfixturevalue("cluster_db")
        elif case.after == "untouched":
            shared.append(request.getfixturevalue("pristine"))
            db = shared[0].db
        else:
            db = request.getfixturevalue("database")
        project.add("0001_items", SCHEMA)
        (project.root / "seed.py").write_text(SEED)
        target = Target(db)
        inputs = {"database-url": target.url, "migrations-path": str(project.root)}
        return Ctx(project, target, github, request, inputs, github.workspace)

    yield make
    for p in shared:
        p.renew_if_dirty()


def run_case(case: Case, c: Ctx, mode: str) -> Result:
    case.prepare(c)
    before = c.target.state()
    run_cli = c.request.getfixturevalue("run_cli")
    started = time.monotonic()
    if mode == "github":
        run = run_cli(env=c.github.with_inputs(**c.inputs), cwd=c.cwd)
    else:
        env = clean_env()
        flags: list[str] = []
        for name, value in c.inputs.items():
            if name == "run-seed":
                env["RUN_SEED"] = value  # a boolean flag takes no value: the environment does
            elif name == "command":
                env["DB_DEPLOY_COMMAND"] = value
            else:
                flags += [f"--{name}", value]
        run = run_cli(*flags, env=env, cwd=c.cwd)
    return Result(run, time.monotonic() - started, before, c.target.state())


def unmasked(text: str) -> list[str]:
    return [x for x in text.splitlines() if not x.startswith("::add-mask::")]


def check(case: Case, c: Ctx, r: Result, mode: str) -> None:
    """The row's promises."""
    run = r.run
    assert run.returncode == case.exit_code, run.output
    assert "Traceback" not in run.output
    if mode == "github":
        errors = [x for x in run.stdout.splitlines() if x.startswith("::error")]
        warnings = [x for x in run.stdout.splitlines() if x.startswith("::warning")]
        if case.warning:
            assert errors == [], errors
            assert len(warnings) == 1, run.stdout
            line = warnings[0]
            assert c.github.outputs()["status"] == "success"
        else:
            assert len(errors) == 1, run.stdout
            line = errors[0]
        assert not [x for x in run.stderr.splitlines() if x.startswith("error")], run.stderr
    else:
        shown = [x for x in run.stderr.splitlines() if x.startswith(("error", "  warning:"))]
        if case.warning:
            assert [x for x in shown if x.startswith("error")] == []
            [line] = [x for x in shown if case.message in x]
        else:
            [line] = [x for x in run.stderr.splitlines() if x.startswith("error")]
            assert line.startswith("error: ")
        assert not [x for x in run.output.splitlines() if x.startswith("::")]
    assert case.message in line, line
    # A password in the row's URL is masked in what the user sees, too.
    url = c.inputs.get("database-url", "")
    secrets = [url] if "://" in url else re.findall(r"password=(\S+)", url)
    assert_no_leaks({"output": "\n".join(unmasked(run.output))}, secrets)
    if case.retries is not None:
        assert run.output.count("retrying in") == case.retries, run.output
    if case.budget:
        assert r.seconds < case.budget, f"{r.seconds:.1f}s"
    if case.after == "untouched":
        assert r.before.untouched and r.after.untouched, r.after
    elif case.after == "unchanged":
        assert r.after == r.before and r.before.version, r.after
    elif case.after == "seed-rolled-back":
        assert r.after.version == {"0001_items"}  # the migrations stay: a known revision
        assert c.target.count("items") == 0  # the seed's rows are gone
    elif case.after == "deployed":
        assert r.after.version == {"0001_items"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx_for: Callable[[Case], Ctx]) -> None:
    c = ctx_for(case)
    check(case, c, run_case(case, c, "github"), "github")


TERMINAL = [c for c in CASES if c.terminal]


@pytest.mark.parametrize("case", TERMINAL, ids=[c.id for c in TERMINAL])
def test_bad_input_on_a_terminal(case: Case, ctx_for: Callable[[Case], Ctx]) -> None:
    c = ctx_for(case)
    check(case, c, run_case(case, c, "terminal"), "terminal")


def test_the_matrix_doc_lists_every_row() -> None:
    """docs/safety.md's bad-input matrix maps 1:1 to the rows, exit codes included."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*(.+?)\s*\|\s*(\d)\s*\|.*\|\s*`test_bad_input\[([\w-]+)\]`", line)
        if m:
            rows[m.group(3)] = int(m.group(2))
    assert rows == {c.id: c.exit_code for c in CASES}
    terminal = set(re.findall(r"`test_bad_input_on_a_terminal\[([\w-]+)\]`", DOC.read_text()))
    assert terminal == {c.id for c in TERMINAL}
