"""Slack delivery: a failure or a timeout never changes the deploy's result, it becomes a warning."""

from __future__ import annotations

import time
from typing import Any

from deployer.redact import cut

TIMEOUT = 10.0
ATTEMPTS = 2  # one retry


def post_slack(webhook: str, payload: dict[str, Any], *, timeout: float = TIMEOUT) -> str | None:
    """POST the message; returns None on success, else a one-line reason (without the URL)."""
    import requests

    reason = ""
    for attempt in range(ATTEMPTS):
        try:
            resp = requests.post(webhook, json=payload, timeout=timeout)
        except requests.Timeout:
            reason = f"no answer within {timeout:g}s"
        except requests.RequestException as exc:
            reason = f"cannot reach the webhook ({type(exc).__name__})"
        except (ValueError, OSError) as exc:  # e.g. an invalid timeout or URL
            reason = f"cannot send to the webhook ({type(exc).__name__})"
        else:
            if resp.status_code < 300:
                return None
            # Redacted before it is cut (the answer may echo the webhook's path).
            reason = f"HTTP {resp.status_code} {cut(resp.text.strip(), 200)}"
            if resp.status_code < 500 and resp.status_code != 429:
                break  # a client error will not get better
        if attempt + 1 < ATTEMPTS:
            time.sleep(1.0)
    return f"Slack notification failed: {reason}"
