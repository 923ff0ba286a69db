"""dagster, installed from PyPI, upgraded by db-deploy unchanged with the composite action, and
compared with dagster's own `dagster instance migrate` on the same server.

Why dagster: it runs Alembic on an engine with `isolation_level="AUTOCOMMIT"` and hands env.py
that connection, so its revisions build indexes with `postgresql_concurrently=True` without
`autocommit_block()` (input `env-connection: autocommit`, issue 21 point 3). And it never replays
its migrations on a new database: it creates the tables from its models and stamps the head. So
the databases are made by an older dagster (1.7.12, July 2024, before those revisions), as a
user's existing instance was, and db-deploy takes over from the stamped database with the new
release's revisions (docs/alembic-projects.md, "Tables from models, then stamp").

Runs on the contrib cluster of tests/apps (Debian's PostgreSQL) with the prefect suite; dagster's
own tool connects with psycopg2 (dagster-postgres's driver), db-deploy with its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.apps.harness import app_python, new_database, schema_dump, site_file
from tests.helpers import GitHubRunner
from tests.helpers.pgcluster import PLAIN_PASSWORD, PLAIN_ROLE, PgCluster
from tests.test_python_action import CompositeRun, run_composite

pytestmark = [pytest.mark.apps, pytest.mark.slow]

if os.environ.get("DB_DEPLOY_APPS_TESTS") != "1":
    pytest.skip(
        "the application tests run under `make apps-test` (or with DB_DEPLOY_APPS_TESTS=1)",
        allow_module_level=True,
    )

HERE = Path(__file__).resolve().parent
# What docs/alembic-projects.md gives for an env.py of dagster's style.
DAGSTER_INPUTS = {"env-connection": "autocommit"}
DAGSTER_YAML = (
    "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n"
    "telemetry:\n  enabled: false\n"
)
CONCURRENT_INDEX = "CREATE INDEX CONCURRENTLY cannot run inside a transaction block"


@pytest.fixture(scope="module")
def dagster_python() -> Path:
    return app_python("dagster", HERE / "dagster-requirements.txt")[0]


@pytest.fixture(scope="module")
def dagster_old_python() -> Path:
    return app_python("dagster-old", HERE / "dagster-old-requirements.txt")[0]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


class Dagster:
    """dagster's CLI (an instance whose storage is the database) and the composite action, on
    one cluster."""

    def __init__(
        self,
        github: GitHubRunner,
        cluster: PgCluster,
        python: Path,
        checkout: Path,
        runner_temp: Path,
        homes: Path,
    ) -> None:
        self.github, self.cluster, self.python = github, cluster, python
        self.checkout, self.runner_temp, self.homes = checkout, runner_temp, homes
        self.ini = site_file(python, "dagster_postgres", "alembic/alembic.ini")

    def url(self, dbname: str, scheme: str = "postgresql") -> str:
        return self.cluster.url(dbname, role=PLAIN_ROLE, password=PLAIN_PASSWORD, scheme=scheme)

    def cli(self, python: Path, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`dagster ARGS` with DAGSTER_HOME's dagster.yaml naming the database (psycopg2)."""
        home = self.homes / dbname
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
        env = clean_env()
        env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=self.url(dbname, "postgresql+psycopg2"))
        return subprocess.run(
            [str(python.parent / "dagster"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def migrate(self, python: Path, dbname: str) -> None:
        """`dagster instance migrate`: on a new database, the tables from the models and a stamp."""
        proc = self.cli(python, dbname, "instance", "migrate")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def action(self, dbname: str, **inputs: str) -> CompositeRun:
        self.github.output_file.write_text("")
        with_ = {
            "database-url": self.url(dbname),
            "migrations-path": str(self.ini),
            **DAGSTER_INPUTS,
            **inputs,
        }
        return run_composite(
            self.github,
            with_=with_,
            job_python=self.python,
            runner_temp=self.runner_temp,
            action_file=self.checkout,
        )


@pytest.fixture
def dagster(
    github: GitHubRunner,
    contrib_cluster: PgCluster,
    dagster_python: Path,
    action_checkout: Path,
    runner_temp: Path,
    tmp_path: Path,
) -> Dagster:
    # A job of its own (RUNNER_TEMP): the deployer's environment is built over dagster's Python.
    return Dagster(
        github, contrib_cluster, dagster_python, action_checkout, runner_temp / "dagster",
        tmp_path / "dagster-homes",
    )  # fmt: skip


def test_dagster_upgrade_matches_its_own_tool(
    dagster: Dagster, contrib_cluster: PgCluster, dagster_old_python: Path
) -> None:
    ours, theirs = new_database(contrib_cluster), new_database(contrib_cluster)
    for dbname in (ours, theirs):
        dagster.migrate(dagster_old_python, dbname)
    (stamped,) = contrib_cluster.version(ours)
    assert contrib_cluster.version(theirs) == {stamped}
    assert "runs" in contrib_cluster.tables(ours)

    # dagster's own upgrade, with the new release.
    dagster.migrate(dagster.python, theirs)
    (head,) = contrib_cluster.version(theirs)
    assert head != stamped

    run = dagster.action(ours)
    assert run.returncode == 0, run.log
    assert run.outputs["status"] == "success", run.log
    assert run.outputs["previous-revision"] == stamped
    assert run.outputs["current-revision"] == head
    assert int(run.outputs["applied-count"]) >= 5
    assert contrib_cluster.version(ours) == {head}
    # The same tables, columns, indexes (the concurrent ones among them) and constraints.
    assert schema_dump(contrib_cluster, ours, "db_deploy") == schema_dump(contrib_cluster, theirs)
    assert "idx_run_tags_run_idx" in schema_dump(contrib_cluster, ours)

    again = dagster.action(ours)
    assert again.returncode == 0, again.log
    assert again.outputs["status"] == "noop", again.log

    # A database dagster upgraded itself: db-deploy reads it at the head, nothing pending.
    status = dagster.action(theirs, command="status")
    assert status.returncode == 0, status.log
    assert status.outputs["current-revision"] == head
    assert status.outputs["pending-count"] == "0"


def test_dagster_in_a_transaction_fails_on_its_concurrent_index(
    dagster: Dagster, contrib_cluster: PgCluster, dagster_old_python: Path
) -> None:
    """The negative control: with the default `env-connection: shared` dagster's revisions run
    in a transaction, which CREATE INDEX CONCURRENTLY refuses; the run fails and the database
    stays at a revision db-deploy reports."""
    dbname = new_database(contrib_cluster)
    dagster.migrate(dagster_old_python, dbname)
    before = contrib_cluster.version(dbname)
    run = dagster.action(dbname, **{"env-connection": "shared"})
    assert run.returncode == 1, run.log
    assert run.outputs["status"] == "failed", run.log
    assert CONCURRENT_INDEX in run.outputs["error"], run.log
    assert contrib_cluster.version(dbname) != set()
    assert run.outputs["previous-revision"] == ",".join(before)
