"""`preflight` (the security checks) against a real server: a superuser and a plain role (CREATE
ROLE … LOGIN over the trust-authenticated socket), each finding's severity, preflight-fail-on,
and deploy running the checks first."""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from deployer.steps.security import _server_version, _tls
from tests.helpers import AlembicProject, Database, EmbeddedServer, GitHubRunner, Run

TABLE_A = "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))"


@pytest.fixture
def gh(deploy: Callable[..., Run]) -> Callable[..., Run]:
    """`deploy` with this module's command (fresh file-command files for every run)."""
    return functools.partial(deploy, command="preflight")


def findings(github: GitHubRunner) -> dict[str, tuple[str, str]]:
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    out: dict[str, tuple[str, str]] = {}
    for f in report["security"]["findings"]:
        key = f["check"]
        while key in out:
            key += "+"
        out[key] = (f["severity"], f["message"])
    return out


@pytest.fixture
def role(database: Database, admin_engine: sa.Engine) -> Iterator[str]:
    """A plain LOGIN role that owns the test database (so the `public` schema, owned by
    pg_database_owner, is its to create in)."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
        conn.execute(sa.text(f'ALTER DATABASE "{database.name}" OWNER TO "{name}"'))
    yield name
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database.name}" OWNER TO postgres'))
    with database.engine.begin() as conn:
        conn.execute(sa.text(f'REASSIGN OWNED BY "{name}" TO postgres'))
        conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))


def role_url(role: str, database: Database, server: EmbeddedServer) -> str:
    return f"postgresql://{role}@/{database.name}?host={server.dir}"


def test_superuser_on_a_local_socket_passes(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", TABLE_A)
    # Another application's schema (not the deploy role's own): not judged.
    database.execute("CREATE SCHEMA platform AUTHORIZATION pg_database_owner")
    database.execute("GRANT CREATE ON SCHEMA platform TO PUBLIC")
    run = gh(project, **{"required-extensions": "vector"})
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["preflight-errors"] == "0" and out["preflight-warnings"] == "0"
    f = findings(github)
    assert f["superuser"][0] == "info" and "accepted on a local database" in f["superuser"][1]
    assert f["tls"][0] == "ok" and f["server-version"][0] == "ok"
    assert f["extension"] == ("ok", "extension vector is available (not installed yet)")
    assert f["single-head"] == ("ok", "the migrations have a single head (0001_a)")
    assert f["public-create"] == ("ok", "PUBLIC cannot CREATE in public")
    summary = github.summary()
    assert "### Security preflight" in summary and "| superuser | ℹ️ info |" in summary
    assert "::group::security" in run.stdout


def test_plain_role_owner_of_its_schema_is_clean(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, role: str, pg_server
) -> None:
    project.add("0001_a", TABLE_A)
    run = gh(project, **{"database-url": role_url(role, database, pg_server)})
    assert run.returncode == 0, run.output
    f = findings(github)
    assert f["superuser"] == ("ok", f"role {role} is not a superuser")
    assert f["ownership"][0] == "ok" and f["public-create"][0] == "ok"
    assert github.outputs()["preflight-warnings"] == "0"


def test_warnings_pass_unless_fail_on_warning(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, role: str, pg_server
) -> None:
    project.add("0001_a", TABLE_A)
    database.execute("CREATE TABLE legacy (id int)")  # owned by postgres, not the deploy role
    database.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    url = role_url(role, database, pg_server)
    run = gh(project, **{"database-url": url})
    assert run.returncode == 0, run.output
    f = findings(github)
    assert f["ownership"][0] == "warning" and "public.legacy" in f["ownership"][1]
    assert f["public-create"][0] == "warning" and "CVE-2018-1058" in f["public-create"][1]
    assert github.outputs()["preflight-warnings"] == "2"
    assert len(re.findall(r"^::warning[^:]*::security: ", run.stdout, re.MULTILINE)) == 2
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC;" in github.summary()

    run = gh(project, **{"database-url": url, "preflight-fail-on": "warning"})
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "security"
    assert "2 finding(s) of severity warning or error" in out["error"]


def test_errors_fail_with_exit_1(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, role: str, pg_server
) -> None:
    project.add("0001_a", TABLE_A)
    project.add("0002_left", TABLE_A.replace("'a'", "'l'"), down="0001_a")
    project.add("0002_right", TABLE_A.replace("'a'", "'r'"), down="0001_a")
    database.execute(f'ALTER DATABASE "{database.name}" OWNER TO postgres')  # no CREATE now
    run = gh(
        project,
        **{
            "database-url": role_url(role, database, pg_server),
            "required-extensions": "vector>=99, no_such_extension",
        },
    )
    assert run.returncode == 1, run.output
    f = findings(github)
    assert (
        f["schema-create"][0] == "error"
        and f"role {role} cannot CREATE in schema public" in (f["schema-create"][1])
    )
    assert f["single-head"][0] == "error" and "2 heads" in f["single-head"][1]
    newest = database.scalar(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    )
    assert f["extension"] == (
        "error",
        f"extension vector >= 99 is required, the server offers {newest} at most",
    )
    assert f["extension+"] == (
        "error",
        "extension no_such_extension is not available on this server (pg_available_extensions)",
    )
    out = github.outputs()
    assert out["preflight-errors"] == "4"
    assert out["failed-step"] == "security"


def test_remote_host_without_tls(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, pg_server
) -> None:
    """A host name that is not local (libpq's `host` query parameter still reaches the socket):
    an unencrypted connection is a warning, an error with require-tls."""
    project.add("0001_a", TABLE_A)
    url = f"postgresql://postgres@db.example.test/{database.name}?host={pg_server.dir}"
    run = gh(project, **{"database-url": url})
    assert run.returncode == 0, run.output
    f = findings(github)
    assert f["tls"][0] == "warning" and "not encrypted" in f["tls"][1]
    assert f["superuser"][0] == "warning"  # a superuser on a shared database
    # require-tls: the connection step itself refuses (exit 2) before any check runs.
    run = gh(project, **{"database-url": url, "require-tls": "true"})
    assert run.returncode == 2, run.output
    assert "not encrypted" in github.outputs()["error"]


def test_deploy_runs_the_checks_first(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, role: str, pg_server
) -> None:
    project.add("0001_a", TABLE_A)
    database.execute(f'ALTER DATABASE "{database.name}" OWNER TO postgres')  # no CREATE
    url = role_url(role, database, pg_server)
    run = gh(project, command="deploy", **{"database-url": url})
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["failed-step"] == "security"
    assert "deploy refused by the security preflight" in out["error"]
    assert "::group::migrate" not in run.stdout
    assert database.version() == set()
    assert "### Security preflight" in github.summary()

    # Without the checks, the deploy goes on and fails where the checks said it would.
    run = gh(project, command="deploy", **{"database-url": url, "security-preflight": "false"})
    assert run.returncode != 0, run.output
    assert github.outputs()["failed-step"] == "migrate"
    assert "permission denied for schema public" in github.outputs()["error"]
    assert "::group::security" not in run.stdout


def test_deploy_with_clean_checks_shows_them_folded(
    project: AlembicProject, database: Database, github: GitHubRunner, gh
) -> None:
    project.add("0001_a", TABLE_A)
    run = gh(project, command="deploy")
    assert run.returncode == 0, run.output
    assert database.version() == {"0001_a"}
    summary = github.summary()
    assert "### Security preflight" in summary
    assert "<details><summary>Findings</summary>" in summary
    assert github.outputs()["preflight-errors"] == "0"


def test_finding_rules() -> None:
    assert _server_version(120000, "12.22").severity == "error"
    assert _server_version(130000, "13.0").severity == "ok"
    assert _tls("postgresql://u@db.example.com/x", False, False).severity == "warning"
    assert _tls("postgresql://u@db.example.com/x", False, True).severity == "error"
    assert _tls("postgresql://u@db.example.com/x?sslmode=require", True, False).severity == (
        "warning"
    )
    assert _tls("postgresql://u@db.example.com/x?sslmode=verify-full", True, True).severity == "ok"
    assert _tls("postgresql://u@localhost/x", False, True).severity == "ok"


def test_role_checks_judge_the_role_that_migrates(
    project: AlembicProject, database: Database, github: GitHubRunner, gh, role: str, pg_server
) -> None:
    """database-url is the application's role (it cannot create anything); the migrations run
    over direct-database-url, whose role is the one the ownership checks are about."""
    project.add("0001_a", TABLE_A)
    database.execute(f'ALTER DATABASE "{database.name}" OWNER TO postgres')  # no CREATE
    run = gh(
        project,
        **{
            "database-url": role_url(role, database, pg_server),
            "direct-database-url": database.url,
        },
    )
    assert run.returncode == 0, run.output
    f = findings(github)
    assert f["superuser"][0] == "info" and "role postgres" in f["superuser"][1]
    assert "schema-create" not in f
    # And the other way round: the migration role is the one that cannot create.
    run = gh(
        project,
        **{
            "database-url": database.url,
            "direct-database-url": role_url(role, database, pg_server),
        },
    )
    assert run.returncode == 1, run.output
    assert findings(github)["schema-create"][0] == "error"
