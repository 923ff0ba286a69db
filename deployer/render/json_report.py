"""The JSON report: everything the summary shows, machine-readable, with `schema_version`."""

from __future__ import annotations

import json
from collections.abc import Callable

from deployer.results import RunResult


def render(result: RunResult, redact: Callable[[object], object] = lambda v: v) -> str:
    return json.dumps(redact(result.to_dict()), indent=2, sort_keys=False, default=str) + "\n"
