"""Issue 15, point 4: every secret masked in every form, in every artefact.

A role whose password is longer than 63 bytes and holds `é`, quotes, a backslash and a colon
logs in over TCP with scram-sha-256 (tests/helpers/pgcluster.py), the password given by
`PGPASSWORD`, by a `.pgpass` file (`PGPASSFILE`) or by the URL's `?password=`: never in the
URL's userinfo. env.py and a revision print it in every form (raw, percent-encoded, `repr()`,
a dict, `json.dumps` with `\\u00e9` escapes and without, `unicode_escape`, logging's `%r`),
with the Slack webhook's token likewise; the revision then uses the password as a table name,
so that the server's error quotes it cut to 63 bytes (NAMEDATALEN - 1). No form may appear in
stdout, stderr, the outputs file, the step summary, the JSON report or the Slack request body
(pytest-httpserver), and every form is registered with `::add-mask::`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from pytest_httpserver import HTTPServer

from tests.helpers import AlembicProject, GitHubRunner, Run
from tests.helpers.pgcluster import PgCluster, find_leaks, mask_values, masks_come_first

HOOK_PATH = "/services/T0000/B0000/hardeningWebhookToken7Q"
PASSWORD = "Wé'ird\"Pa\\ss:w0rd-" + "x7Q" * 18 + "-ünïcödé-tail"
assert len(PASSWORD.encode()) > 63


def forms(secret: str) -> set[str]:
    """What a secret can look like in text (defined here, not taken from the code under test)."""
    out = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
    }
    out |= {f.encode()[:63].decode("utf-8", "ignore") for f in list(out) if len(f.encode()) > 63}
    return out


PRINT_ALL = """
import json as _j, logging as _l, os as _o, sys as _s
for _name in ("LEAK_PASSWORD", "LEAK_WEBHOOK"):
    _v = _o.environ[_name]
    print(_v)
    print(repr(_v), {"secret": _v}, [_v])
    print(_j.dumps(_v), _j.dumps({"secret": _v}, ensure_ascii=False))
    print(_v.encode("unicode_escape").decode())
    _s.stderr.write("in pieces: ")
    for _i in range(0, len(_v), 5):
        _s.stderr.write(_v[_i : _i + 5])
        _s.stderr.flush()
    _s.stderr.write("\\n")
    _l.getLogger("alembic").warning("value=%r", _v)
"""


@pytest.fixture
def role_db(pg_cluster: PgCluster) -> Iterator[tuple[str, str]]:
    role = f"r_{uuid.uuid4().hex[:10]}"
    literal = PASSWORD.replace("'", "''")
    pg_cluster.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{literal}'")
    name = pg_cluster.create_database(role)
    try:
        yield role, name
    finally:
        pg_cluster.drop_database(name)
        pg_cluster.execute(f"DROP ROLE IF EXISTS {role}")


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@pytest.mark.parametrize("source", ["PGPASSWORD", "pgpass", "query"])
def test_every_form_of_every_secret_is_masked_everywhere(
    source: str,
    role_db: tuple[str, str],
    pg_cluster: PgCluster,
    project: AlembicProject,
    github: GitHubRunner,
    run_cli: Callable[..., Run],
    httpserver: HTTPServer,
    tmp_path: Path,
) -> None:
    role, dbname = role_db
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    webhook = httpserver.url_for(HOOK_PATH)
    host, port = pg_cluster.host, pg_cluster.port
    url = f"postgresql://{role}@{host}:{port}/{dbname}"
    env = github.with_inputs(
        **{
            "database-url": url
            + (f"?password={quote(PASSWORD, safe='')}" if source == "query" else ""),
            "migrations-path": str(project.root),
            "slack-webhook-url": webhook,
            "connect-retries": "1",
        }
    )
    env["LEAK_PASSWORD"] = PASSWORD
    env["LEAK_WEBHOOK"] = webhook
    if source == "PGPASSWORD":
        env["PGPASSWORD"] = PASSWORD
    elif source == "pgpass":
        passfile = tmp_path / "pgpass"
        passfile.write_text(
            "# other entries first\n"
            f"otherhost:5432:*:*:not-this-one-{uuid.uuid4().hex}\n"
            f"{host}:{port}:{dbname}:{role}:{_pgpass_escape(PASSWORD)}\n"
        )
        passfile.chmod(0o600)
        env["PGPASSFILE"] = str(passfile)
    env_py = project.root / "env.py"
    env_py.write_text(PRINT_ALL + env_py.read_text())
    project.add("0001_ok", "op.create_table('a', sa.Column('id', sa.Integer))")
    ident = '"' + PASSWORD.replace('"', '""') + '"'
    project.add(
        "0002_leaks",
        PRINT_ALL
        + f"op.execute({('CREATE TABLE ' + ident + ' (id int)')!r})\n"
        + f"op.execute({('CREATE TABLE ' + ident + ' (id int)')!r})\n",
    )
    run = run_cli(env=env, cwd=github.workspace)
    assert run.returncode == 1, run.output  # the second CREATE TABLE fails
    assert "already exists" in run.output  # the server quoted the name, cut to 63 bytes
    assert masks_come_first(run.stdout)

    secrets = [PASSWORD, webhook, HOOK_PATH.rsplit("/", 1)[1]]
    artefacts = {
        "stdout": "\n".join(
            ln for ln in run.stdout.splitlines() if not ln.startswith("::add-mask::")
        ),
        "stderr": run.stderr,
        "outputs": github.output_file.read_text(),
        "summary": github.summary_file.read_text(),
        "report": (github.workspace / "db-deploy-report.json").read_text(),
    }
    bodies = [req.get_data(as_text=True) for req, _ in httpserver.log]
    assert bodies, "Slack was not called"
    artefacts |= {f"slack {i}": body for i, body in enumerate(bodies)}
    assert "***" in artefacts["stdout"]  # the prints were there, masked
    for secret in secrets:
        for form in forms(secret):
            for name, text in artefacts.items():
                assert form not in text, f"{name} shows {form!r}"
    assert not find_leaks(artefacts, [PASSWORD, webhook])
    masked = mask_values(run.stdout)
    for secret in (PASSWORD, webhook):
        missing = {f for f in forms(secret) if f not in masked}
        assert not missing, f"not registered with ::add-mask::: {missing}"
