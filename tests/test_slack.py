"""Slack against a real local HTTP server (pytest-httpserver): one Block Kit message for every
outcome; a Slack failure never changes the deploy's result."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.helpers import AlembicProject, Database, GitHubRunner, Run


@pytest.fixture
def deploy(
    github: GitHubRunner, run_cli: Callable[..., Run], database: Database, project: AlembicProject
):
    project.add("0001_t", "op.create_table('t', sa.Column('id', sa.Integer))")

    def run(**inputs: str) -> Run:
        inputs.setdefault("database-url", database.url)
        inputs.setdefault("migrations-path", str(project.root))
        return run_cli(env=github.with_inputs(**inputs), cwd=github.workspace)

    return run


def webhook(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/services/T000/B000/XXXXsecretXXXX")


def messages(httpserver: HTTPServer) -> list[dict]:
    return [json.loads(req.get_data()) for req, _ in httpserver.log]


def test_success_message(httpserver: HTTPServer, deploy, github: GitHubRunner) -> None:
    httpserver.expect_request(
        "/services/T000/B000/XXXXsecretXXXX", method="POST"
    ).respond_with_data("ok")
    run = deploy(**{"slack-webhook-url": webhook(httpserver), "environment": "staging"})
    assert run.returncode == 0, run.output
    [msg] = messages(httpserver)
    assert "1 revision(s) applied" in msg["text"]
    text = json.dumps(msg["blocks"])
    assert msg["blocks"][0]["type"] == "header"
    for fact in ("staging", "0001_t", "octocat", "https://github.com/acme/shop/actions/runs/4242"):
        assert fact in text, fact
    assert "XXXXsecretXXXX" not in run.visible + github.summary()
    assert f"::add-mask::{webhook(httpserver)}" in run.stdout


def test_failure_message(
    httpserver: HTTPServer, deploy, database: Database, project: AlembicProject
) -> None:
    project.add("0002_bad", "op.execute('SELECT * FROM nowhere')")
    httpserver.expect_request("/services/T000/B000/XXXXsecretXXXX").respond_with_data("ok")
    run = deploy(**{"slack-webhook-url": webhook(httpserver)})
    assert run.returncode == 1
    [msg] = messages(httpserver)
    assert "failed" in msg["text"]
    assert "0002_bad" in json.dumps(msg) and "nowhere" in json.dumps(msg)


def test_noop_message(httpserver: HTTPServer, deploy) -> None:
    httpserver.expect_request("/services/T000/B000/XXXXsecretXXXX").respond_with_data("ok")
    assert deploy().returncode == 0
    assert deploy(**{"slack-webhook-url": webhook(httpserver)}).returncode == 0
    [msg] = messages(httpserver)
    assert "nothing to migrate" in msg["text"]


def test_server_error_is_retried_then_a_warning(
    httpserver: HTTPServer, deploy, github: GitHubRunner
) -> None:
    httpserver.expect_request("/services/T000/B000/XXXXsecretXXXX").respond_with_data(
        "internal", status=500
    )
    run = deploy(**{"slack-webhook-url": webhook(httpserver)})
    assert run.returncode == 0, run.output
    assert len(httpserver.log) == 2  # one retry
    assert github.outputs()["status"] == "success"
    assert any(
        line.startswith("::warning") and "HTTP 500" in line for line in run.stdout.splitlines()
    )
    assert "Slack notification failed" in github.summary()
    assert "XXXXsecretXXXX" not in run.visible + github.summary()


def test_slow_webhook_times_out_into_a_warning(
    httpserver: HTTPServer, deploy, github: GitHubRunner
) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response("late")

    httpserver.expect_request("/services/T000/B000/XXXXsecretXXXX").respond_with_handler(slow)
    run = deploy(**{"slack-webhook-url": webhook(httpserver), "slack-timeout": "500ms"})
    assert run.returncode == 0, run.output
    assert "no answer within 0.5s" in github.summary()
    assert github.outputs()["status"] == "success"


def test_unreachable_webhook_is_a_warning(deploy, github: GitHubRunner) -> None:
    run = deploy(**{"slack-webhook-url": "http://127.0.0.1:9/services/T/B/unreachableSECRET"})
    assert run.returncode == 0, run.output
    assert "cannot reach the webhook" in github.summary()
    assert "unreachableSECRET" not in run.visible + github.summary()
