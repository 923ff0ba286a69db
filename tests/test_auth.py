"""Real authentication: a TCP cluster with scram-sha-256 passwords (tests/pgcluster.py).

The embedded server trusts every local connection, so it cannot show what a wrong password
does. Here the server checks passwords: the right one deploys, a wrong one is exit 3 at once
(no retry: it is permanent) with one clear line, and a password full of URL-special characters
works percent-encoded in `database-url`, in `direct-database-url` and as `?password=`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import AlembicProject, GitHubRunner, Run
from tests.helpers.pgcluster import (
    PLAIN_PASSWORD,
    PLAIN_ROLE,
    SPECIAL_PASSWORD,
    SPECIAL_ROLE,
    ClusterDatabase,
    PgCluster,
    assert_no_leaks,
    encode,
    mask_values,
    masks_come_first,
)

WRONG_PASSWORD = "Wr0ng:p@ss/w%rd"


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith("::error")]


def auth_failures(cluster: PgCluster) -> int:
    """How many password checks the server refused so far (its own log)."""
    log = cluster.base / "server.log"
    return log.read_text(errors="replace").count("password authentication failed")


@pytest.fixture
def deploy(
    github: GitHubRunner, run_cli: Callable[..., Run], project: AlembicProject
) -> Callable[..., Run]:
    project.add(
        "0001_docs",
        "op.execute('CREATE TABLE docs (id int PRIMARY KEY, embedding vector(3))')",
    )

    def run(**inputs: str) -> Run:
        inputs.setdefault("migrations-path", str(project.root))
        return run_cli(env=github.with_inputs(**inputs), cwd=github.workspace)

    return run


def test_cluster_has_scram_and_pgvector(pg_cluster: PgCluster) -> None:
    """The fixture itself: passwords are checked on TCP and pgvector can be installed."""
    [(method,)] = pg_cluster.query("SELECT current_setting('password_encryption')")
    assert method == "scram-sha-256"
    rules = pg_cluster.query("SELECT type, auth_method FROM pg_hba_file_rules")
    assert ("host", "scram-sha-256") in rules and ("host", "trust") not in rules
    names = {r[0] for r in pg_cluster.query("SELECT name FROM pg_available_extensions")}
    assert "vector" in names


@pytest.mark.parametrize(
    "how",
    ["database-url", "direct-database-url", "query-parameter"],
)
def test_right_password_deploys(
    how: str,
    pg_cluster: PgCluster,
    cluster_db: ClusterDatabase,
    deploy: Callable[..., Run],
    github: GitHubRunner,
) -> None:
    """The special-character password works percent-encoded in either URL, and as a query
    parameter; pgvector is there (installed by the superuser, as a platform would)."""
    cluster_db.execute("CREATE EXTENSION vector")
    special = cluster_db.url()
    inputs = {"database-url": special, "required-extensions": "vector>=0.8"}
    if how == "direct-database-url":
        # A typical split: the application's role for preflight and smoke, the schema owner
        # (with the special password) for migrations.
        inputs["database-url"] = cluster_db.url(PLAIN_ROLE)
        inputs["direct-database-url"] = special
    elif how == "query-parameter":
        inputs["database-url"] = (
            f"postgresql://{SPECIAL_ROLE}@{pg_cluster.hostport}/{cluster_db.name}"
            f"?password={encode(SPECIAL_PASSWORD)}"
        )
    run = deploy(**inputs)
    assert run.returncode == 0, run.output
    assert cluster_db.version() == {"0001_docs"}
    # Migrations ran as the owner of the direct URL, preflight as the application's role.
    [(owner,)] = pg_cluster.query(
        "SELECT tableowner FROM pg_tables WHERE tablename = 'docs'", cluster_db.name
    )
    assert owner == SPECIAL_ROLE
    app_role = PLAIN_ROLE if how == "direct-database-url" else SPECIAL_ROLE
    assert f"connected to {pg_cluster.hostport}/{cluster_db.name} as {app_role}" in run.stdout
    assert "✅ extension vector >= 0.8: 0.8" in run.stdout
    out = github.outputs()
    assert out["status"] == "success" and out["current-revision"] == "0001_docs"
    assert masks_come_first(run.stdout)
    assert {SPECIAL_PASSWORD, encode(SPECIAL_PASSWORD)} <= mask_values(run.stdout)
    artefacts = {
        "log": run.visible,
        "outputs": github.output_file.read_text(),
        "summary": github.summary(),
        "report": (github.workspace / "db-deploy-report.json").read_text(),
    }
    assert_no_leaks(artefacts, [special, inputs["database-url"], PLAIN_PASSWORD])


@pytest.mark.parametrize("where", ["userinfo", "query-parameter"])
def test_wrong_password_is_exit_3_at_once(
    where: str,
    pg_cluster: PgCluster,
    cluster_db: ClusterDatabase,
    deploy: Callable[..., Run],
    github: GitHubRunner,
) -> None:
    if where == "userinfo":
        url = cluster_db.url(password=WRONG_PASSWORD)
    else:
        url = (
            f"postgresql://{SPECIAL_ROLE}@{pg_cluster.hostport}/{cluster_db.name}"
            f"?password={encode(WRONG_PASSWORD)}"
        )
    refused = auth_failures(pg_cluster)
    started = time.monotonic()
    run = deploy(**{"database-url": url, "connect-retries": "5", "connect-timeout": "2s"})
    elapsed = time.monotonic() - started
    assert run.returncode == 3, run.output
    [line] = error_lines(run)
    assert f"cannot connect to {pg_cluster.hostport}/{cluster_db.name}:" in line
    assert f'password authentication failed for user "{SPECIAL_ROLE}"' in line
    assert "Traceback" not in run.output
    # Permanent: no retry, one refused attempt in the server's own log.
    assert "retrying" not in run.output and "attempts" not in line
    assert auth_failures(pg_cluster) - refused == 1
    assert elapsed < 10
    assert github.outputs()["failed-step"] == "preflight"
    artefacts = {
        "log": run.visible,
        "outputs": github.output_file.read_text(),
        "summary": github.summary(),
        "report": (github.workspace / "db-deploy-report.json").read_text(),
    }
    assert_no_leaks(artefacts, [url, WRONG_PASSWORD])
    assert WRONG_PASSWORD in mask_values(run.stdout)
    assert cluster_db.tables() == set() and "db_deploy" not in cluster_db.schemas()


def test_wrong_password_in_direct_url_changes_nothing(
    pg_cluster: PgCluster,
    cluster_db: ClusterDatabase,
    deploy: Callable[..., Run],
    github: GitHubRunner,
) -> None:
    """The application's URL is right, the migrations' URL is wrong: exit 3 before anything
    is applied, and the line names the migrations' connection."""
    direct = cluster_db.url(password=WRONG_PASSWORD)
    run = deploy(**{"database-url": cluster_db.url(PLAIN_ROLE), "direct-database-url": direct})
    assert run.returncode == 3, run.output
    [line] = error_lines(run)
    assert "password authentication failed" in line and pg_cluster.hostport in line
    assert "retrying" not in run.output
    assert cluster_db.tables() == set() and "db_deploy" not in cluster_db.schemas()
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["status"] == "failed"
    assert_no_leaks({"log": run.visible, "report": json.dumps(report)}, [direct])


def test_terminal_wrong_password_is_one_line(
    cluster_db: ClusterDatabase,
    pg_cluster: PgCluster,
    run_cli: Callable[..., Run],
    project: AlembicProject,
    tmp_path: Path,
) -> None:
    """Outside GitHub: one `error:` line on stderr, the password nowhere."""
    project.add("0001_t", "op.create_table('t', sa.Column('id', sa.Integer))")
    url = cluster_db.url(password=WRONG_PASSWORD)
    run = run_cli("--database-url", url, "--migrations-path", str(project.root), cwd=tmp_path)
    assert run.returncode == 3
    [line] = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert pg_cluster.hostport in line and "password authentication failed" in line
    assert_no_leaks({"stdout": run.stdout, "stderr": run.stderr}, [url])


def test_remote_host_without_tls_is_one_warning_or_an_error(
    cluster_db: ClusterDatabase, deploy: Callable[..., Run], github: GitHubRunner
) -> None:
    """A host name that is not local (here resolved to 127.0.0.1 through hostaddr) reached
    without TLS (the cluster has no certificate): one warning in the log, the summary, the
    report's warnings; with require-tls, exit 2 and nothing changed."""
    cluster_db.execute("CREATE EXTENSION vector")
    url = cluster_db.url(host="db.example.test") + "?hostaddr=127.0.0.1"
    run = deploy(**{"database-url": url, "require-tls": "true"})
    assert run.returncode == 2, run.output
    assert "not encrypted" in github.outputs()["error"]
    assert cluster_db.version() == set()
    github.output_file.write_text("")
    run = deploy(**{"database-url": url})
    assert run.returncode == 0, run.output
    tls = [
        line for line in run.stdout.splitlines() if line.startswith("::warning") and "TLS" in line
    ]
    assert len(tls) == 1, run.stdout
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert any("TLS" in w for w in report["warnings"])
