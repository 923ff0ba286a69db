"""prefect, installed from PyPI, deployed unchanged with the composite action (`python/action.yml`:
db-deploy in the job's own Python, what docs/python-action.md advises for a heavy application),
and compared with prefect's own migration tool on the same server.

Why prefect: its env.py is of two hard styles at once (issue 21). It ends with
`run_async_from_worker_thread(apply_migrations)`, which works only inside a worker thread of an
AnyIO event loop (input `env-thread: worker`), and it sets `context.script.version_locations`
itself: its alembic.ini names no version folder, so read before env.py runs the project has no
revision at all. env.py builds its own asyncpg engine from prefect's setting
PREFECT_API_DATABASE_CONNECTION_URL (set in the step's `env:`, as prefect's users set it).

Its PostgreSQL revisions create pg_trgm, a contrib extension the embedded server lacks: the suite
runs on Debian's PostgreSQL with contrib (tests/apps/harness.py installs it when missing).

Run by `make apps-test` (CI: .ci/run); skipped elsewhere unless DB_DEPLOY_APPS_TESTS=1. The first
run installs prefect into .cache/apps/ (about a minute), later runs reuse it.
"""

from __future__ import annotations

import json
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
REQUIREMENTS = HERE / "prefect-requirements.txt"
# What docs/alembic-projects.md gives for an env.py of prefect's style.
PREFECT_INPUTS = {"env-thread": "worker"}


@pytest.fixture(scope="module")
def prefect_python() -> Path:
    python, seconds = app_python("prefect", REQUIREMENTS)
    if seconds:
        print(f"\nprefect installed in {seconds:.0f} s: {python}")
    return python


@pytest.fixture(scope="module")
def prefect_ini(prefect_python: Path) -> Path:
    """prefect's own alembic.ini, inside the installed package (nothing copied, nothing edited)."""
    return site_file(prefect_python, "prefect.server.database", "alembic.ini")


@pytest.fixture(scope="module")
def prefect_revisions(prefect_python: Path, prefect_ini: Path) -> tuple[int, set[str]]:
    """How many PostgreSQL revisions prefect ships, and its heads (read as its env.py reads them)."""
    code = (
        "import json; from alembic.config import Config; from alembic.script import ScriptDirectory\n"
        f"script = ScriptDirectory.from_config(Config({str(prefect_ini)!r}))\n"
        "script.version_locations = [script.dir + '/versions/postgresql']\n"
        "print(json.dumps([len(list(script.walk_revisions())), sorted(script.get_heads())]))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    proc = subprocess.run(
        [str(prefect_python), "-c", code], env=clean, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    count, heads = json.loads(proc.stdout)
    assert count >= 100 and len(heads) == 1
    return count, set(heads)


def prefect_env(cluster: PgCluster, dbname: str, home: Path) -> dict[str, str]:
    """prefect's own settings, as its users set them in a workflow step's `env:`."""
    url = cluster.url(dbname, role=PLAIN_ROLE, password=PLAIN_PASSWORD, scheme="postgresql+asyncpg")
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def assert_masked(run: CompositeRun, secret: str) -> None:
    """The password shows only in the `::add-mask::` commands (the runner hides it everywhere)."""
    for line in run.text.splitlines():
        if secret in line:
            assert line.lstrip().startswith("::add-mask::"), f"unmasked: {line!r}"


def version(cluster: PgCluster, dbname: str) -> set[str]:
    return cluster.version(dbname)


def public_tables(cluster: PgCluster, dbname: str) -> set[str]:
    return cluster.tables(dbname)


class Prefect:
    """The composite action, called in a job whose Python holds prefect, against one cluster."""

    def __init__(
        self,
        github: GitHubRunner,
        cluster: PgCluster,
        python: Path,
        ini: Path,
        checkout: Path,
        runner_temp: Path,
        home: Path,
    ) -> None:
        self.github, self.cluster, self.python, self.ini = github, cluster, python, ini
        self.checkout, self.runner_temp, self.home = checkout, runner_temp, home

    def action(self, dbname: str, **inputs: str) -> CompositeRun:
        self.github.output_file.write_text("")
        url = self.cluster.url(dbname, role=PLAIN_ROLE, password=PLAIN_PASSWORD)
        with_ = {"database-url": url, "migrations-path": str(self.ini), **PREFECT_INPUTS, **inputs}
        return run_composite(
            self.github,
            with_=with_,
            step_env=prefect_env(self.cluster, dbname, self.home),
            job_python=self.python,
            runner_temp=self.runner_temp,
            action_file=self.checkout,
        )

    def own_tool(self, dbname: str) -> subprocess.CompletedProcess[str]:
        """`prefect server database upgrade -y`: prefect's CLI, which runs Alembic itself."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        env.update(prefect_env(self.cluster, dbname, self.home))
        return subprocess.run(
            [str(self.python.parent / "prefect"), "server", "database", "upgrade", "-y"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture
def prefect(
    github: GitHubRunner,
    contrib_cluster: PgCluster,
    prefect_python: Path,
    prefect_ini: Path,
    action_checkout: Path,
    runner_temp: Path,
    tmp_path: Path,
) -> Prefect:
    return Prefect(
        github,
        contrib_cluster,
        prefect_python,
        prefect_ini,
        action_checkout,
        runner_temp,
        tmp_path / "prefect-home",
    )


def test_prefect_deploys_unchanged_and_matches_its_own_tool(
    prefect: Prefect, contrib_cluster: PgCluster, prefect_revisions: tuple[int, set[str]]
) -> None:
    count, heads = prefect_revisions
    ours, theirs = new_database(contrib_cluster), new_database(contrib_cluster)

    run = prefect.action(ours)
    assert run.returncode == 0, run.log
    assert run.outputs["status"] == "success", run.log
    assert int(run.outputs["applied-count"]) == count
    assert set(run.outputs["current-revision"].split(",")) == heads
    assert run.outputs["pending-count"] == "0"
    assert version(contrib_cluster, ours) == heads
    assert_masked(run, PLAIN_PASSWORD)

    own = prefect.own_tool(theirs)
    assert own.returncode == 0, own.stdout + own.stderr
    assert version(contrib_cluster, theirs) == heads
    # Same tables, columns, indexes (pg_trgm's GIN ones among them), constraints, functions.
    assert schema_dump(contrib_cluster, ours, "db_deploy") == schema_dump(contrib_cluster, theirs)
    assert "gin_trgm_ops" in schema_dump(contrib_cluster, ours)

    # Deployed again: nothing to do.
    again = prefect.action(ours)
    assert again.returncode == 0, again.log
    assert again.outputs["status"] == "noop", again.log
    assert again.outputs["applied-count"] == "0"


def test_prefect_status_and_plan(
    prefect: Prefect, contrib_cluster: PgCluster, prefect_revisions: tuple[int, set[str]]
) -> None:
    count, heads = prefect_revisions
    migrated, fresh = new_database(contrib_cluster), new_database(contrib_cluster)

    # A database prefect's own tool migrated: db-deploy reads it at the head, nothing pending.
    own = prefect.own_tool(migrated)
    assert own.returncode == 0, own.stdout + own.stderr
    status = prefect.action(migrated, command="status")
    assert status.returncode == 0, status.log
    assert set(status.outputs["current-revision"].split(",")) == heads
    assert set(status.outputs["head-revision"].split(",")) == heads
    assert status.outputs["pending-count"] == "0"

    # plan on an empty database: every revision pending, nothing created. Their SQL cannot be
    # shown (next test); the plan says so and goes on.
    plan = prefect.action(fresh, command="plan")
    assert plan.returncode == 0, plan.log
    assert int(plan.outputs["pending-count"]) == count
    assert len(json.loads(plan.outputs["pending-revisions"])) == count
    assert "-- offline SQL unavailable: " in plan.outputs["plan-sql"]
    assert public_tables(contrib_cluster, fresh) == set()
    assert version(contrib_cluster, fresh) == set()


def test_prefect_plan_says_why_its_sql_is_unavailable(
    prefect: Prefect, contrib_cluster: PgCluster
) -> None:
    """A data migration of 2022 reads `result.rowcount` of an UPDATE, None in Alembic's offline
    (`--sql`) mode: prefect's own `prefect server database upgrade --dry-run` stops on that line,
    and so does the plan's offline SQL, which names that error (not one of the deployer's)."""
    fresh = new_database(contrib_cluster)
    plan = prefect.action(fresh, command="plan")
    assert plan.returncode == 0, plan.log
    sql = plan.outputs["plan-sql"]
    assert (
        "offline SQL unavailable: AttributeError: 'NoneType' object has no attribute 'rowcount'"
        in sql
    )


def test_prefect_on_the_main_thread_fails_before_migrating(
    prefect: Prefect, contrib_cluster: PgCluster
) -> None:
    """The negative control: without `env-thread: worker`, prefect's env.py cannot call back into
    an event loop; the run fails and nothing is created."""
    dbname = new_database(contrib_cluster)
    run = prefect.action(dbname, **{"env-thread": "main"})
    assert run.returncode != 0, run.log
    assert run.outputs["status"] == "failed", run.log
    assert "NoEventLoopError" in run.outputs["error"], run.log
    assert public_tables(contrib_cluster, dbname) == set()
