"""The plan as one pull-request comment, updated in place by later runs.

GitHub's REST API (docs.github.com/en/rest/issues/comments), called with `requests`:
- `GET /repos/{owner}/{repo}/issues/{number}/comments?per_page=100` (pages followed through the
  `Link: <…>; rel="next"` header) to find our comment by its hidden marker;
- `PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}` `{"body": …}` to update it, else
- `POST /repos/{owner}/{repo}/issues/{number}/comments` `{"body": …}` (201) to create it.
Headers as GitHub documents them: `Authorization: Bearer <token>`,
`Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`, a User-Agent.

Every call has a timeout and is retried once: after a connection error or a 5xx, and after a
rate limit (403/429 with `retry-after`, or `x-ratelimit-remaining: 0` and `x-ratelimit-reset`),
waiting what GitHub asks when that is short (at most `max_wait`). A fork's pull request gets a
read-only token: the 403 ("Resource not accessible by integration") is an outcome, not an
error, and the caller falls back to the step summary with a notice. The token never appears
in a message: it is only in a header, and any text from GitHub is redacted by the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

API_VERSION = "2022-11-28"
BODY_LIMIT = 65536  # characters GitHub accepts in a comment body
MARKER = "<!-- db-deploy:plan -->"


@dataclass(frozen=True)
class Outcome:
    """What happened: `created`, `updated`, `read-only` (a fork's token: fall back to the
    summary) or `failed`; the comment's URL; a one-line reason when it did not post."""

    action: str
    url: str = ""
    reason: str = ""


def marker(environment: str = "") -> str:
    """The hidden marker: one comment per environment the plan ran for."""
    return f"<!-- db-deploy:plan:{environment} -->" if environment else MARKER


def pull_request_number(event_path: str | Path | None) -> int | None:
    """The pull request's number from the event payload (GITHUB_EVENT_PATH), for
    `pull_request` and `pull_request_target` events; None for any other."""
    if not event_path:
        return None
    try:
        event = json.loads(Path(event_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pr = event.get("pull_request") if isinstance(event, dict) else None
    number = pr.get("number") if isinstance(pr, dict) else None
    return number if isinstance(number, int) else None


def fit(body: str, limit: int = BODY_LIMIT) -> str:
    if len(body) <= limit:
        return body
    note = "\n\n_Cut to fit GitHub's comment size; the job summary holds everything._\n"
    cut = body[: limit - len(note)]
    return cut[: cut.rfind("\n")] + note if "\n" in cut else cut + note


class _Client:
    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        timeout: float,
        max_wait: float,
        sleep: Callable[[float], None],
        session: requests.Session | None,
    ) -> None:
        self.api = api_url.rstrip("/")
        self.timeout = timeout
        self.max_wait = max_wait
        self.sleep = sleep
        self.session = session or requests.Session()
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "db-deploy-action",
        }

    def call(self, method: str, url: str, body: dict[str, Any] | None = None) -> requests.Response:
        if not url.startswith("http"):
            url = self.api + url
        for attempt in (1, 2):
            try:
                response = self.session.request(
                    method, url, json=body, headers=self.headers, timeout=self.timeout
                )
            except requests.RequestException as exc:
                if attempt == 2:
                    raise CommentError(f"GitHub API unreachable ({type(exc).__name__})") from None
                self.sleep(1.0)
                continue
            wait = self._retry_after(response)
            if attempt == 1 and wait is not None:
                self.sleep(wait)
                continue
            return response
        raise AssertionError("unreachable")

    def _retry_after(self, r: requests.Response) -> float | None:
        """Seconds to wait before the one retry, or None: no retry."""
        if r.status_code >= 500:
            return 1.0
        if r.status_code not in (403, 429):
            return None
        header = r.headers.get("retry-after")
        if header and header.isdigit():
            wait = float(header)
        elif r.headers.get("x-ratelimit-remaining") == "0":
            reset = r.headers.get("x-ratelimit-reset", "")
            wait = max(0.0, float(reset) - time.time()) if reset.isdigit() else self.max_wait + 1
        else:
            return None  # a plain 403: permissions, not a rate limit
        return wait if wait <= self.max_wait else None


def _rate_limited(r: requests.Response) -> bool:
    return r.status_code == 429 or (
        r.status_code == 403
        and ("retry-after" in r.headers or r.headers.get("x-ratelimit-remaining") == "0")
    )


class CommentError(Exception):
    """The API could not be reached or answered something unexpected (one line, no token)."""


def _message(r: requests.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    text = data.get("message", "") if isinstance(data, dict) else ""
    return f"HTTP {r.status_code}: {text}" if text else f"HTTP {r.status_code}"


def upsert(
    api_url: str,
    repository: str,
    number: int,
    token: str,
    body: str,
    *,
    mark: str = MARKER,
    timeout: float = 10.0,
    max_wait: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    session: requests.Session | None = None,
) -> Outcome:
    """Create or update the pull request's comment that carries `mark`."""
    client = _Client(
        api_url, token, timeout=timeout, max_wait=max_wait, sleep=sleep, session=session
    )
    text = fit(f"{mark}\n{body}")
    try:
        existing = _find(client, f"/repos/{repository}/issues/{number}/comments", mark)
        if existing is not None:
            r = client.call(
                "PATCH", f"/repos/{repository}/issues/comments/{existing}", {"body": text}
            )
            action = "updated"
        else:
            r = client.call("POST", f"/repos/{repository}/issues/{number}/comments", {"body": text})
            action = "created"
    except CommentError as exc:
        return Outcome("failed", reason=str(exc))
    if r.status_code in (200, 201):
        data = r.json()
        return Outcome(action, url=str(data.get("html_url", "")) if isinstance(data, dict) else "")
    if _rate_limited(r):
        return Outcome("failed", reason=f"rate limited ({_message(r)})")
    if r.status_code in (403, 404):
        return Outcome("read-only", reason=_message(r))
    return Outcome("failed", reason=_message(r))


def _find(client: _Client, url: str, mark: str) -> int | None:
    """The id of the first comment whose body starts with `mark`, across every page."""
    url += "?per_page=100"
    pages = 0
    while url and pages < 50:
        pages += 1
        r = client.call("GET", url)
        if r.status_code != 200:
            if r.status_code in (403, 404) and not _rate_limited(r):
                return None  # no read access: try to create, which says read-only
            raise CommentError(f"listing the comments failed ({_message(r)})")
        for comment in r.json():
            if isinstance(comment, dict) and str(comment.get("body", "")).startswith(mark):
                return int(comment["id"])
        url = r.links.get("next", {}).get("url", "")
    return None
