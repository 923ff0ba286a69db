"""The risk review inside `plan` and `deploy`, run as the action runs: on by default for plan
(the summary's risk table, annotations on the revision file, outputs risk-level and
risk-findings), off by default for deploy, the gate (risk-fail-on) stopping before anything is
applied, an accepted finding, a bad level refused."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.helpers import AlembicProject, Database, GitHubRunner, Run, alembic_upgrade

BASE = (
    "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), sa.Column('x', sa.Integer))",
    "op.drop_table('t')",
)
INDEX = ("op.create_index('ix_t_x', 't', ['x'])", "op.drop_index('ix_t_x', 't')")


@pytest.fixture
def plan(deploy: Callable[..., Run], github: GitHubRunner) -> Callable[..., Run]:
    github.env.update(GITHUB_EVENT_NAME="pull_request", GITHUB_REF="refs/pull/7/merge")
    return functools.partial(deploy, command="plan")


def test_plan_reviews_the_risk_and_shows_it_where_reviewers_look(
    project: AlembicProject, database: Database, github: GitHubRunner, plan: Callable[..., Run]
) -> None:
    project.add("0001_t", *BASE)
    alembic_upgrade(project.root, database)
    path = project.add("0002_ix", *INDEX, message="index t.x")
    run = plan(project)
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["risk-level"] == "low"  # an index on an empty live table
    (finding,) = json.loads(out["risk-findings"])
    assert finding["rule"] == "index-not-concurrent" and finding["table"] == "public.t"
    assert finding["revision"] == "0002_ix" and finding["line"] > 0
    summary = github.summary()
    assert "### Risk review: 🟢 low" in summary and "`index-not-concurrent`" in summary
    shown = path.relative_to(github.workspace) if path.is_relative_to(github.workspace) else path
    (annotation,) = [line for line in run.stdout.splitlines() if line.startswith("::warning")]
    assert f"file={shown},line={finding['line']}" in annotation
    assert "title=db-deploy risk low%3A index-not-concurrent on public.t" in annotation
    report = json.loads((github.workspace / "db-deploy-report.json").read_text())
    assert report["risk"]["revisions"][0]["findings"][0]["rule"] == "index-not-concurrent"
    assert database.version() == {"0001_t"}  # a plan applies nothing


def test_the_gate_stops_a_deploy_before_anything_is_applied(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    project.add("0001_t", *BASE)
    alembic_upgrade(project.root, database)
    project.add("0002_ix", *INDEX)
    run = deploy(project, **{"risk-fail-on": "low"})
    assert run.returncode == 1, run.output
    out = github.outputs()
    assert out["status"] == "failed" and out["failed-step"] == "risk"
    assert "risk-fail-on low" in out["error"]
    assert out["risk-level"] == "low"
    assert database.version() == {"0001_t"}
    assert "ix_t_x" not in {r[0] for r in database.rows("SELECT indexname FROM pg_indexes")}


def test_deploy_does_not_review_by_default_and_an_accepted_finding_passes_the_gate(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    project.add("0001_t", *BASE)
    alembic_upgrade(project.root, database)
    path = project.add("0002_ix", *INDEX)
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert github.outputs()["risk-level"] == ""
    # Accepted: the gate lets it through, the report still shows it.
    database.execute("DROP INDEX ix_t_x")
    database.execute("UPDATE alembic_version SET version_num = '0001_t'")
    path.write_text(
        path.read_text() + '\ndb_deploy_accept = {"index-not-concurrent": "t is tiny"}\n'
    )
    run = deploy(project, **{"risk-fail-on": "low"})
    assert run.returncode == 0, run.output
    out = github.outputs()
    assert out["risk-level"] == "none"
    assert json.loads(out["risk-findings"])[0]["accepted"] == "t is tiny"


def test_a_bad_risk_level_is_refused(
    project: AlembicProject, github: GitHubRunner, deploy: Callable[..., Run]
) -> None:
    project.add("0001_t", *BASE)
    run = deploy(project, **{"risk-fail-on": "severe"})
    assert run.returncode == 2
    assert "risk-fail-on" in run.output and "Traceback" not in run.output


def test_a_plan_whose_offline_sql_is_unavailable_shows_the_rehearsed_sql(
    project: AlembicProject, database: Database, github: GitHubRunner, plan: Callable[..., Run]
) -> None:
    project.add("0001_t", *BASE)
    alembic_upgrade(project.root, database)
    project.add(
        "0002_read",
        """
        n = op.get_bind().execute(sa.text("SELECT count(*) FROM t")).scalar()
        op.add_column("t", sa.Column("seen", sa.Integer(), server_default=str(n)))
        """,
    )
    run = plan(project)
    assert run.returncode == 0, run.output
    sql = github.outputs()["plan-sql"]
    assert "offline SQL unavailable" not in sql
    assert "-- as rehearsed on the scratch database" in sql
    assert "SELECT count(*) FROM t;" in sql and "ALTER TABLE t ADD COLUMN seen" in sql


def test_the_plan_is_posted_on_the_pull_request_and_updated_in_place(
    project: AlembicProject,
    database: Database,
    github: GitHubRunner,
    plan: Callable[..., Run],
    httpserver: HTTPServer,
) -> None:
    comments: list[dict[str, object]] = []

    def listing(request: Request) -> Response:
        return Response(json.dumps(comments), status=200, content_type="application/json")

    def create(request: Request) -> Response:
        assert request.headers["Authorization"] == "Bearer ghs_plan_token_1234"
        comments.append({"id": 1, "body": request.get_json()["body"], "html_url": "u"})
        return Response(json.dumps(comments[-1]), status=201, content_type="application/json")

    def update(request: Request) -> Response:
        comments[0]["body"] = request.get_json()["body"]
        return Response(json.dumps(comments[0]), status=200, content_type="application/json")

    httpserver.expect_request(
        "/repos/acme/shop/issues/7/comments", method="GET"
    ).respond_with_handler(listing)
    httpserver.expect_request(
        "/repos/acme/shop/issues/7/comments", method="POST"
    ).respond_with_handler(create)
    httpserver.expect_request(
        "/repos/acme/shop/issues/comments/1", method="PATCH"
    ).respond_with_handler(update)
    event = github.workspace.parent / "event.json"
    event.write_text(json.dumps({"number": 7, "pull_request": {"number": 7}}))
    github.env.update(
        GITHUB_API_URL=httpserver.url_for("/").rstrip("/"), GITHUB_EVENT_PATH=str(event)
    )
    project.add("0001_t", *BASE)
    alembic_upgrade(project.root, database)
    project.add("0002_ix", *INDEX)
    peek = github.workspace.parent / "peek.txt"
    github.env["PEEK_FILE"] = str(peek)
    project.add(
        "0003_peek",
        """
        import os
        seen = any("ghs_plan_token_1234" in v for v in os.environ.values())
        open(os.environ["PEEK_FILE"], "a").write(f"{seen}\\n")
        """,
    )
    for _ in range(2):
        run = plan(project, **{"github-token": "ghs_plan_token_1234"})
        assert run.returncode == 0, run.output
        assert "ghs_plan_token_1234" not in run.visible
    assert len(comments) == 1  # created once, then updated in place
    assert set(peek.read_text().split()) == {"False"}  # the revisions never saw the token
    body = str(comments[0]["body"])
    assert body.startswith("<!-- db-deploy:plan") and "### Risk review" in body
