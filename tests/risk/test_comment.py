"""The pull-request comment against a local HTTP server implementing the GitHub REST endpoints
used (list issue comments with Link pagination, create, update), with the documented request
headers and response shapes: created once, updated in place (the marker found on a later page),
a fork's read-only token, rate limits and server errors retried once, the token never shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from deployer.risk import comment

TOKEN = "ghs_secret_token_value_123"
REPO = "octo/app"
LIST = f"/repos/{REPO}/issues/7/comments"


def shape(id_: int, body: str, server: HTTPServer) -> dict[str, object]:
    """An issue comment as GitHub documents it (the fields that matter, and a few more)."""
    return {
        "id": id_,
        "node_id": f"IC_{id_}",
        "url": server.url_for(f"/repos/{REPO}/issues/comments/{id_}"),
        "html_url": f"https://github.com/{REPO}/pull/7#issuecomment-{id_}",
        "body": body,
        "user": {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"},
        "created_at": "2026-12-06T07:00:00Z",
        "updated_at": "2026-12-06T07:00:00Z",
        "author_association": "NONE",
    }


def documented(request: Request) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert request.headers["User-Agent"]


def page(server: HTTPServer, items: list[dict[str, object]], next_page: int | None) -> Response:
    headers = {}
    if next_page:
        url = server.url_for(LIST) + f"?per_page=100&page={next_page}"
        headers["Link"] = f'<{url}>; rel="next", <{url}>; rel="last"'
    return Response(json.dumps(items), status=200, headers=headers, content_type="application/json")


def upsert(server: HTTPServer, **kw: object) -> comment.Outcome:
    return comment.upsert(
        server.url_for("/"), REPO, 7, TOKEN, "## plan", sleep=lambda s: None, **kw
    )  # type: ignore[arg-type]


def test_created_once_when_no_page_has_the_marker(httpserver: HTTPServer) -> None:
    seen: list[str] = []

    def listing(request: Request) -> Response:
        documented(request)
        seen.append(request.args.get("page", "1"))
        if request.args.get("page") == "2":
            return page(httpserver, [shape(2, "someone else", httpserver)], None)
        return page(httpserver, [shape(1, "hello", httpserver)], 2)

    def create(request: Request) -> Response:
        documented(request)
        body = request.get_json()
        assert body["body"].startswith(comment.MARKER + "\n## plan")
        return Response(
            json.dumps(shape(3, body["body"], httpserver)),
            status=201,
            content_type="application/json",
        )

    httpserver.expect_request(LIST, method="GET").respond_with_handler(listing)
    httpserver.expect_request(LIST, method="POST").respond_with_handler(create)
    outcome = upsert(httpserver)
    assert outcome == comment.Outcome(
        "created", url=f"https://github.com/{REPO}/pull/7#issuecomment-3"
    )
    assert seen == ["1", "2"]


def test_updated_in_place_when_a_later_page_has_it(httpserver: HTTPServer) -> None:
    def listing(request: Request) -> Response:
        if request.args.get("page") == "2":
            return page(httpserver, [shape(42, comment.MARKER + "\nold plan", httpserver)], None)
        return page(httpserver, [shape(1, "hello", httpserver)], 2)

    def update(request: Request) -> Response:
        documented(request)
        body = request.get_json()["body"]
        return Response(
            json.dumps(shape(42, body, httpserver)), status=200, content_type="application/json"
        )

    httpserver.expect_request(LIST, method="GET").respond_with_handler(listing)
    httpserver.expect_request(
        f"/repos/{REPO}/issues/comments/42", method="PATCH"
    ).respond_with_handler(update)
    outcome = upsert(httpserver)
    assert outcome.action == "updated" and outcome.url.endswith("issuecomment-42")
    assert not any(r.method == "POST" for r, _ in httpserver.log)


def test_a_forks_read_only_token_is_an_outcome_not_an_error(httpserver: HTTPServer) -> None:
    httpserver.expect_request(LIST, method="GET").respond_with_json([])
    httpserver.expect_request(LIST, method="POST").respond_with_json(
        {
            "message": "Resource not accessible by integration",
            "documentation_url": "https://docs.github.com/rest/issues/comments#create-an-issue-comment",
            "status": "403",
        },
        status=403,
    )
    outcome = upsert(httpserver)
    assert outcome.action == "read-only"
    assert "Resource not accessible by integration" in outcome.reason
    assert TOKEN not in repr(outcome)


def test_a_rate_limit_is_waited_out_once(httpserver: HTTPServer) -> None:
    calls: list[int] = []
    waits: list[float] = []

    def listing(request: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return Response(
                json.dumps({"message": "API rate limit exceeded"}),
                status=403,
                headers={
                    "x-ratelimit-limit": "1000",
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-reset": str(int(time.time()) + 2),
                },
                content_type="application/json",
            )
        return page(httpserver, [], None)

    httpserver.expect_request(LIST, method="GET").respond_with_handler(listing)
    httpserver.expect_request(LIST, method="POST").respond_with_json(
        shape(5, "x", httpserver), status=201
    )
    outcome = comment.upsert(httpserver.url_for("/"), REPO, 7, TOKEN, "b", sleep=waits.append)
    assert outcome.action == "created"
    assert len(calls) == 2 and 0 < waits[0] <= 2


def test_a_long_rate_limit_fails_without_waiting(httpserver: HTTPServer) -> None:
    waits: list[float] = []
    httpserver.expect_request(LIST, method="GET").respond_with_json(
        {"message": "You have exceeded a secondary rate limit"},
        status=429,
        headers={"retry-after": "3600"},
    )
    outcome = comment.upsert(httpserver.url_for("/"), REPO, 7, TOKEN, "b", sleep=waits.append)
    assert outcome.action == "failed" and "secondary rate limit" in outcome.reason
    assert waits == []


def test_a_server_error_is_retried_once(httpserver: HTTPServer) -> None:
    answers = iter([Response("oops", status=502), page(httpserver, [], None)])
    httpserver.expect_request(LIST, method="GET").respond_with_handler(lambda r: next(answers))
    httpserver.expect_request(LIST, method="POST").respond_with_json(
        shape(9, "x", httpserver), status=201
    )
    assert upsert(httpserver).action == "created"


def test_an_unreachable_api_fails_in_one_line_without_the_token() -> None:
    outcome = comment.upsert(
        "http://127.0.0.1:9", REPO, 7, TOKEN, "b", timeout=1, sleep=lambda s: None
    )
    assert outcome.action == "failed" and outcome.reason.startswith("GitHub API unreachable")
    assert TOKEN not in repr(outcome)


def test_the_pull_request_number_comes_from_the_event(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps({"action": "synchronize", "number": 7, "pull_request": {"number": 7}})
    )
    assert comment.pull_request_number(event) == 7
    event.write_text(json.dumps({"ref": "refs/heads/main"}))
    assert comment.pull_request_number(event) is None
    assert comment.pull_request_number(tmp_path / "missing.json") is None


@pytest.mark.parametrize("size", [10, 70000])
def test_the_body_fits_githubs_limit(size: int) -> None:
    body = ("line\n" * size)[:size]
    assert len(comment.fit(body)) <= comment.BODY_LIMIT
