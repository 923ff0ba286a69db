"""Secrets never leave the process: every artefact of every outcome is scanned for them.

Each scenario runs the CLI as a GitHub step (secrets in `INPUT_*`), and one of each kind of
outcome also on a terminal (secrets in `DATABASE_URL`, `DIRECT_DATABASE_URL`,
`SLACK_WEBHOOK_URL`; artefacts through `--summary-file`, `--output-file`, `--report-file`), on a
fresh database each time.
Then stdout and stderr (minus the `::add-mask::` lines, the one place a secret may be printed:
the runner consumes them), GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, the JSON report, the files and
every Slack request body are searched for the URLs and for any 8-character piece of the
passwords and of the webhook's secret path, in every spelling (raw, percent-decoded,
percent-encoded, as SQLAlchemy renders it).

The database is the TCP cluster with real passwords (tests/pgcluster.py): `database-url` is the
application's role with a plain password, `direct-database-url` the schema owner whose password
is full of URL-special characters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.helpers import AlembicProject, GitHubRunner, Run, clean_env, write_alembic_project
from tests.helpers.pgcluster import (
    PLAIN_ROLE,
    SPECIAL_ROLE,
    ClusterDatabase,
    PgCluster,
    assert_no_leaks,
    closed_port,
    find_leaks,
    mask_values,
    masks_come_first,
    url_password,
)

TOKEN = "XXXXwebhookSecretToken42"  # the secret part of an incoming-webhook URL
HOOK_PATH = f"/services/T0000/B0000/{TOKEN}"
WRONG = "Wr0ng-PlainPw-5e6f"

SCHEMA = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True))"
SEED = """
import sqlalchemy as sa

def seed(connection):
    connection.execute(sa.text("INSERT INTO items VALUES (1), (2)"))
"""


@dataclass
class Ctx:
    """What a scenario may change: the project, the inputs, the CLI flags, the secrets."""

    project: AlembicProject
    db: ClusterDatabase
    cluster: PgCluster
    webhook: str
    inputs: dict[str, str]
    flags: list[str] = field(default_factory=list)
    extra_secrets: list[str] = field(default_factory=list)

    @property
    def secrets(self) -> list[str]:
        """The URLs the run is given, the webhook's token, and what a scenario adds."""
        urls = ("database-url", "direct-database-url", "slack-webhook-url")
        return [self.inputs[k] for k in urls if self.inputs.get(k)] + [TOKEN, *self.extra_secrets]

    @property
    def direct_url(self) -> str:
        return self.inputs["direct-database-url"]

    def env_py_prepend(self, code: str) -> None:
        env_py = self.project.root / "env.py"
        env_py.write_text(code + env_py.read_text())

    def use_url(self, url: str) -> None:
        """The application's URL, replaced by one the scenario builds (also a secret)."""
        self.inputs["database-url"] = url


# --------------------------------------------------------------------------- scenarios


def success(c: Ctx) -> None:
    c.inputs.update({"run-seed": "true", "smoke-expect": "items>=2"})


def migration_failure(c: Ctx) -> None:
    c.project.add("0002_bad", "op.execute('SELECT * FROM nowhere')")


def seed_failure(c: Ctx) -> None:
    (c.project.root / "seed.py").write_text(SEED + "    raise ValueError('row 3 is wrong')\n")
    c.inputs["run-seed"] = "true"


def smoke_failure(c: Ctx) -> None:
    c.inputs["smoke-expect"] = "items>=5"


def wrong_password(c: Ctx) -> None:
    c.use_url(c.db.url(PLAIN_ROLE, WRONG))
    c.extra_secrets.append(WRONG)


def unreachable_host(c: Ctx) -> None:
    c.use_url(c.db.url().replace(f":{c.cluster.port}/", f":{closed_port()}/"))
    c.inputs.update({"connect-retries": "2", "connect-timeout": "1s"})


def malformed_url(c: Ctx) -> None:
    c.use_url(c.db.url().replace(f":{c.cluster.port}/", ":54x32/"))


def unsupported_scheme(c: Ctx) -> None:
    c.use_url("mysql" + c.db.url().removeprefix("postgresql"))


def bad_boolean(c: Ctx) -> None:
    c.inputs["run-seed"] = "perhaps"


def slack_500(c: Ctx) -> None:
    pass  # the webhook answers 500 (see run_scenario)


def slack_500_echoing_path(c: Ctx) -> None:
    pass  # a proxy's error page that names the request's path (see run_scenario)


def slack_unreachable(c: Ctx) -> None:
    c.inputs["slack-webhook-url"] = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"


ENV_PRINTS = """\
import logging, os, sqlalchemy

logging.basicConfig(level=logging.INFO)
logging.getLogger("env").warning("DATABASE_URL = %s", os.environ["DATABASE_URL"])
print("env.py connects to", os.environ["DATABASE_URL"], flush=True)
print("password:", sqlalchemy.engine.make_url(os.environ["DATABASE_URL"]).password)
"""

ENV_LOGS_OPTION = """\
import logging
from alembic import context as _ctx

logging.basicConfig(level=logging.INFO)
logging.getLogger("env").warning("sqlalchemy.url = %s", _ctx.config.get_main_option("sqlalchemy.url"))
"""


def env_prints_database_url(c: Ctx) -> None:
    """env.py prints and logs DATABASE_URL (as the user gave it) and its decoded password."""
    c.env_py_prepend(ENV_PRINTS)


def env_logs_sqlalchemy_url(c: Ctx) -> None:
    """env.py logs `config.get_main_option("sqlalchemy.url")`, what Alembic's template reads."""
    c.env_py_prepend(ENV_LOGS_OPTION)


def revision_raises_url(c: Ctx) -> None:
    c.project.add(
        "0002_boom",
        "raise RuntimeError('cannot reach ' + os.environ['DATABASE_URL'] + ' (config: '"
        " + context.config.get_main_option('sqlalchemy.url') + ')')",
        imports="import os\nfrom alembic import context",
    )


def long_error_with_url(c: Ctx) -> None:
    """An error longer than a Slack block holds, the password right where Slack's cut falls:
    the message is shortened for Slack, and what is left of the password must not show."""
    url = c.direct_url
    prefix = len("revision 0002_long failed: RuntimeError: ")  # the migrate step's error line
    userinfo = len(url) - len(url.split(":", 2)[2])  # `postgresql://app_special:`
    pad = 2900 - prefix - userinfo - 20  # render/slack.py MAX_TEXT: cut 20 characters in
    c.project.add("0002_long", f"raise RuntimeError('x' * {pad} + {url!r})")


def debug_internal_error(c: Ctx) -> None:
    """A seed that breaks the deployer's own code, so that an internal error (and its
    `--debug` traceback) carries the URL."""
    (c.project.root / "seed.py").write_text(
        SEED
        + "    import deployer.history\n\n"
        + "    def broken(*a, **k):\n"
        + f"        raise RuntimeError('history unreadable at ' + {c.direct_url!r})\n\n"
        + "    deployer.history.read = broken\n"
    )
    c.inputs["run-seed"] = "true"
    c.flags.append("--debug")


def env_exits_with_url(c: Ctx) -> None:
    """env.py gives up with sys.exit(message), a common idiom; the message holds the URL."""
    c.env_py_prepend(
        "import os, sys\nsys.exit('refusing to migrate ' + os.environ['DATABASE_URL'])\n"
    )


def password_with_bare_at(c: Ctx) -> None:
    """A password with an `@` the user forgot to percent-encode."""
    c.use_url(f"postgresql://{PLAIN_ROLE}:Tr0ub4dor@3xyzzy-9k@{c.cluster.hostport}/{c.db.name}")


@dataclass(frozen=True)
class Scenario:
    id: str
    exit_code: int
    prepare: Callable[[Ctx], None]
    slack: str = "ok"  # ok | 500 | 500-echo | none
    terminal: bool = False  # also run outside GitHub (a representative of each kind of outcome)


SCENARIOS = [
    Scenario("success", 0, success, terminal=True),
    Scenario("migration-failure", 1, migration_failure, terminal=True),
    Scenario("seed-failure", 1, seed_failure),
    Scenario("smoke-failure", 1, smoke_failure),
    Scenario("wrong-password", 3, wrong_password, terminal=True),
    Scenario("unreachable-host", 3, unreachable_host),
    Scenario("malformed-url", 2, malformed_url, terminal=True),
    Scenario("unsupported-scheme", 2, unsupported_scheme),
    Scenario("bad-boolean", 2, bad_boolean),
    Scenario("slack-500", 0, slack_500, slack="500"),
    Scenario("slack-500-echoing-path", 0, slack_500_echoing_path, slack="500-echo"),
    Scenario("slack-unreachable", 0, slack_unreachable, slack="none"),
    Scenario("env-prints-database-url", 0, env_prints_database_url, terminal=True),
    Scenario("env-logs-sqlalchemy-url", 0, env_logs_sqlalchemy_url),
    Scenario("revision-raises-url", 1, revision_raises_url),
    Scenario("long-error-at-slack-cut", 1, long_error_with_url),
    Scenario("debug-internal-error", 1, debug_internal_error),
    Scenario("env-exits-with-url", 2, env_exits_with_url),
    Scenario("password-with-bare-at", 2, password_with_bare_at),
]


# --------------------------------------------------------------------------- running one


@dataclass
class Outcome:
    run: Run
    artefacts: dict[str, str]
    slack_bodies: list[str]


@pytest.fixture
def scenario_project(tmp_path: Path) -> AlembicProject:
    project = write_alembic_project(tmp_path / "project" / "migrations")
    project.add("0001_items", SCHEMA)
    (project.root / "seed.py").write_text(SEED)
    return project


def _slack(httpserver: HTTPServer, mode: str) -> None:
    if mode == "ok":
        httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    elif mode == "500":
        httpserver.expect_request(HOOK_PATH).respond_with_data("internal_error", status=500)
    elif mode == "500-echo":

        def echo(request: Request) -> Response:
            return Response(f"upstream failed for POST {request.path}", status=500)

        httpserver.expect_request(HOOK_PATH).respond_with_handler(echo)


def run_scenario(
    scenario: Scenario,
    mode: str,
    *,
    ctx: Ctx,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    httpserver: HTTPServer,
    tmp_path: Path,
) -> Outcome:
    _slack(httpserver, scenario.slack)
    scenario.prepare(ctx)
    files: dict[str, Path] = {}
    if mode == "github":
        env = github.with_inputs(**ctx.inputs)
        run = run_cli(*ctx.flags, env=env, cwd=github.workspace)
        files = {
            "GITHUB_OUTPUT": github.output_file,
            "GITHUB_STEP_SUMMARY": github.summary_file,
            "report": github.workspace / "db-deploy-report.json",
        }
    else:
        out = tmp_path / "artefacts"
        env = clean_env()
        plain = {  # secrets (and the boolean, which has no valued flag) from the environment
            "database-url": "DATABASE_URL",
            "direct-database-url": "DIRECT_DATABASE_URL",
            "slack-webhook-url": "SLACK_WEBHOOK_URL",
            "run-seed": "RUN_SEED",
        }
        flags = list(ctx.flags)
        for name, value in ctx.inputs.items():
            if name in plain:
                env[plain[name]] = value
            else:
                flags += [f"--{name}", value]
        files = {
            "--summary-file": out / "summary.md",
            "--output-file": out / "outputs.txt",
            "--report-file": out / "report.json",
        }
        for flag, path in files.items():
            flags += [flag, str(path)]
        run = run_cli(*flags, env=env, cwd=tmp_path)
    artefacts = {"stdout": "\n".join(_shown(run.stdout)), "stderr": run.stderr}
    for name, path in files.items():
        artefacts[name] = path.read_text(encoding="utf-8") if path.exists() else ""
    bodies = [req.get_data(as_text=True) for req, _ in httpserver.log]
    for i, body in enumerate(bodies):
        artefacts[f"slack request {i + 1}"] = body
    return Outcome(run, artefacts, bodies)


def _shown(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if not line.startswith("::add-mask::")]


@pytest.fixture
def ctx(
    pg_cluster: PgCluster,
    cluster_db: ClusterDatabase,
    scenario_project: AlembicProject,
    httpserver: HTTPServer,
) -> Iterator[Ctx]:
    webhook = httpserver.url_for(HOOK_PATH)
    inputs = {
        "database-url": cluster_db.url(PLAIN_ROLE),
        "direct-database-url": cluster_db.url(SPECIAL_ROLE),
        "slack-webhook-url": webhook,
        "migrations-path": str(scenario_project.root),
        "connect-retries": "2",
        "connect-timeout": "2s",
    }
    yield Ctx(
        project=scenario_project,
        db=cluster_db,
        cluster=pg_cluster,
        webhook=webhook,
        inputs=inputs,
    )


RUNS = [(s, "github") for s in SCENARIOS] + [(s, "terminal") for s in SCENARIOS if s.terminal]


@pytest.mark.parametrize(("scenario", "mode"), RUNS, ids=[f"{s.id}-{m}" for s, m in RUNS])
def test_no_secret_in_any_artefact(
    scenario: Scenario,
    mode: str,
    ctx: Ctx,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    httpserver: HTTPServer,
    tmp_path: Path,
) -> None:
    outcome = run_scenario(
        scenario,
        mode,
        ctx=ctx,
        github=github,
        run_cli=run_cli,
        httpserver=httpserver,
        tmp_path=tmp_path,
    )
    run = outcome.run
    assert_no_leaks(outcome.artefacts, ctx.secrets)
    assert run.returncode == scenario.exit_code, run.output
    assert "Traceback" not in run.stdout
    if "--debug" in ctx.flags:  # the traceback is shown, and redacted like everything else
        assert "Traceback (most recent call last)" in run.stderr
        assert "RuntimeError: history unreadable at ***" in run.stderr
    else:
        assert "Traceback" not in run.stderr
    if scenario.slack != "none" and scenario.exit_code != 2:
        assert outcome.slack_bodies, "the run should have notified Slack"
    if mode == "github":
        assert masks_come_first(run.stdout), run.stdout
        # Every secret the run was given is registered with the runner, in the spellings that
        # can show up (the raw URL, the password as written and percent-decoded).
        masks = mask_values(run.stdout)
        for secret in ctx.secrets:
            if "://" in secret:
                assert secret in masks, secret
                password = url_password(secret)
                if password:
                    assert password in masks and _decoded(password) in masks, secret
    else:
        assert not [x for x in run.output.splitlines() if x.startswith("::")]  # no commands


def _decoded(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def test_scan_finds_a_secret_when_there_is_one(ctx: Ctx) -> None:
    """The scanner itself: the unfiltered output (with its `::add-mask::` lines) and a
    password cut in half are found."""
    url = ctx.direct_url
    password = url_password(url)
    assert find_leaks({"a": f"::add-mask::{url}"}, [url])
    assert find_leaks({"a": "…" + password[:10]}, [url])
    assert find_leaks({"a": _decoded(password)[3:14]}, [url])
    assert find_leaks({"a": os.path.basename(HOOK_PATH)}, [TOKEN])
    assert not find_leaks({"a": f"connected to {ctx.cluster.hostport} as {SPECIAL_ROLE}"}, [url])


def test_every_scenario_of_the_brief_is_here() -> None:
    ids = {s.id for s in SCENARIOS}
    for needed in (
        "success",
        "migration-failure",
        "seed-failure",
        "smoke-failure",
        "wrong-password",
        "unreachable-host",
        "malformed-url",
        "unsupported-scheme",
        "bad-boolean",
        "slack-500",
        "slack-unreachable",
        "env-prints-database-url",
        "env-logs-sqlalchemy-url",
        "revision-raises-url",
        "debug-internal-error",
    ):
        assert needed in ids
