"""`fleet`: deploy every target of the fleet file, one child process each (deployer/fleet).

Precedence of a target's inputs: what the command was given (flags, `INPUT_*`) > the target's
own keys > the file's `defaults` > the usual sources (plain environment variables, defaults).
So `--dry-run` always holds. Every target's inputs are checked as the deploy would check them
before anything runs: bad input anywhere is exit 2, naming the entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from deployer.commands.context import Context
from deployer.errors import ConfigError
from deployer.fleet.reports import REPORTS_DIR
from deployer.fleet.runner import FleetRunner
from deployer.fleet.spec import Fleet, FleetError, load
from deployer.results import FleetResult, RunResult
from deployer.settings import (
    Settings,
    describe_validation_error,
    env_names,
    format_duration,
    input_fields,
)

TARGETS_ENV = "DB_DEPLOY_FLEET_TARGETS"  # the workflow's shard: names, comma-separated
# Settings that are the fleet's own, never passed on to a target.
FLEET_SETTINGS = (
    "command",
    "fleet_file",
    "max_parallel",
    "fail_fast",
    "shards",
    "max_parallel_jobs",
    "report_file",
    "summary_file",
    "output_file",
    "slack_webhook_url",
    "slack_timeout",
    "github_token",  # children never post on a pull request (the fleet has one summary)
    "embedded",
    "workspace",
)
PER_TARGET = ("database_url", "direct_database_url")
CANCEL_EXIT = {2: 130, 15: 143}  # SIGINT, SIGTERM


def run(ctx: Context) -> RunResult:
    s = ctx.settings
    fleet = read_fleet(ctx)
    given = command_inputs(s, os.environ)
    mask = getattr(ctx.observer, "mask", None)
    for target in fleet.targets:
        if mask is not None:
            mask(*_secret_parts(target.secrets))
    folder = s.workspace_dir / REPORTS_DIR
    ctx.info(
        f"{len(fleet.targets)} target(s) in {len(fleet.waves)} wave(s); reports in {REPORTS_DIR}/"
    )
    with ctx.step("fleet"):
        runner = FleetRunner(
            fleet=fleet,
            reports_dir=folder,
            workspace=s.workspace_dir,
            inputs=given,
            max_parallel=s.max_parallel,
            fail_fast=s.fail_fast,
            # `plan` with a fleet file plans every target; `fleet` and `deploy` deploy them.
            command="plan" if s.command == "plan" else "deploy",
            stripped=fleet_environ(),
            on_event=ctx.info,
        )
        fleet_result = runner.run()
    finish(ctx.result, fleet_result, cancelled=runner.cancelled)
    return ctx.result


def fleet_environ() -> tuple[str, ...]:
    """The plain environment variables of the fleet's own settings (`DB_DEPLOY_FLEET_FILE`, …):
    never passed on to a child, whose `deploy` would otherwise read the fleet file again and
    deploy the whole fleet from every target."""
    return tuple(
        name
        for setting in FLEET_SETTINGS
        if setting != "workspace"
        for name in env_names(setting)
        if not name.startswith("INPUT_")
    )


def read_fleet(ctx: Context) -> Fleet:
    """The fleet file (this shard's targets when DB_DEPLOY_FLEET_TARGETS names them), every
    target's inputs checked."""
    s = ctx.settings
    ctx.at("config")
    if not s.fleet_file:
        raise ConfigError("fleet-file is required: the path of the fleet file (docs/fleets.md)")
    for name in PER_TARGET:
        if name in s.model_fields_set and _origin(name, os.environ) != "env":
            raise ConfigError(
                f"{name.replace('_', '-')} is per target in a fleet: set it in the fleet "
                "file (`defaults` or a target), not as an input"
            )
    names = tuple(input_fields())
    try:
        fleet = load(s.resolve(s.fleet_file), os.environ, input_names=names)
        if os.environ.get(TARGETS_ENV, "").strip():
            fleet = fleet.select(os.environ[TARGETS_ENV])
    except FleetError as exc:
        raise ConfigError(str(exc)) from None
    fields = input_fields()
    for target in fleet.targets:
        values: dict[str, Any] = {fields[k]: v for k, v in target.inputs.items() if k in fields}
        try:
            Settings(**values)
        except ValidationError as exc:
            raise ConfigError(
                f"fleet file {s.fleet_file}: target {target.name}: {describe_validation_error(exc)}"
            ) from None
    return fleet


def command_inputs(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The inputs the command was given (flags, `INPUT_*`), kebab-case → text: they win over
    the fleet file. A value from a plain environment variable does not count (the child
    inherits it, below the file), nor does a value equal to the input's default: the runner
    sets every input of action.yml, at its default when the workflow left it out."""
    out: dict[str, str] = {}
    for name in sorted(settings.model_fields_set):
        if name in FLEET_SETTINGS or name in PER_TARGET or name not in Settings.model_fields:
            continue
        if not env_names(name) or _origin(name, environ) == "env":
            continue
        value = getattr(settings, name)
        if _text(value) == _text(Settings.model_fields[name].default):
            continue  # the runner passes every input, at its default when left out
        out[name.replace("_", "-")] = _text(value)
    return out


def _origin(name: str, environ: Mapping[str, str]) -> str:
    """`input` (an INPUT_ variable), `env` (only a plain variable) or `flag`."""
    aliases = env_names(name)
    if any(a.startswith("INPUT_") and environ.get(a, "").strip() for a in aliases):
        return "input"
    if any(not a.startswith("INPUT_") and environ.get(a, "").strip() for a in aliases):
        return "env"
    return "flag"


def _text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_duration(value)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _secret_parts(urls: list[str]) -> list[str]:
    from deployer.redact import url_secrets

    out: list[str] = []
    for url in urls:
        out += url_secrets(url)
    return out


def finish(result: RunResult, fleet: FleetResult, *, cancelled: int = 0) -> None:
    """The run's record from the fleet's: status, exit code, one error line."""
    result.extra["fleet"] = fleet
    failed = fleet.failed_names
    if cancelled:
        result.status = "cancelled"
        result.exit_code = CANCEL_EXIT.get(cancelled, 1)
        result.failed_step = "fleet"
        result.error = f"cancelled: {fleet.stopped_by}"
        return
    result.status = fleet.status
    if fleet.status == "success":
        return
    result.exit_code = 1
    result.failed_step = "fleet"
    shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
    parts = [f"{len(failed)} of {fleet.total} target(s) failed" + (f": {shown}" if shown else "")]
    if fleet.not_reached:
        parts.append(f"{fleet.not_reached} not reached ({fleet.stopped_by})")
    result.error = "; ".join(parts)
    result.extra["failed_targets"] = json.dumps(failed)
