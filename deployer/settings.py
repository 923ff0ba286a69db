"""Settings: one immutable pydantic-settings model, read once at the edge and passed down.

Every setting is one field, and the field says everything the interface needs (the generator,
scripts/generate.py, writes action.yml, python/action.yml, the reusable workflow and the docs'
tables from it):

- the input's name is the field's name in kebab-case (`database_url` → `database-url`), and the
  command-line flag of the same name (deployer/cli.py builds the parser from these fields);
- its validation aliases are where the environment holds it, in precedence order: the runner's
  spelling `INPUT_DATABASE-URL` (upper-cased, hyphens kept: actions/runner Handler.cs
  AddInputsToEnvironment), the underscore spelling `INPUT_DATABASE_URL`, then the plain variable
  (`DATABASE_URL`, `DB_DEPLOY_…`). A field with `INPUT_` aliases is an action input; a field with
  no alias is command-line only (never read from the environment);
- its type parses and checks the text (`Duration`, `Flag`, `Literal` choices, URLs): a new field
  of one of these types cannot miss its parser;
- `SecretStr` marks a secret (masked, passed from `secrets.*` in the reusable workflow);
- `description` and `default` (a duration's in seconds, written `10s`, `5m` by
  `format_duration`).

Precedence: command-line flag (init keyword arguments) > `INPUT_<NAME>` > plain environment >
default, which is pydantic-settings' own order of sources and of `AliasChoices`. The runner sets
every declared input, `""` when the workflow left it out, so an empty (or blank) value counts as
"not given" and the next source is consulted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from deployer.errors import ConfigError
from deployer.types import Expectation, ExtensionRequirement

__all__ = [
    "COMMANDS",
    "Expectation",
    "ExtensionRequirement",
    "Settings",
    "SettingsBase",
    "env_names",
    "format_duration",
    "input_fields",
    "input_names",
    "load_settings",
    "parse_bool",
    "parse_duration",
    "secret_fields",
]

Command = Literal[
    "deploy",
    "plan",
    "status",
    "smoke",
    "seed",
    "drift",
    "backup",
    "restore",
    "preflight",
    "rollback",
    "fleet",
    "fleet-report",
]
UrlDriver = Literal["psycopg", "psycopg_async", "asyncpg", "psycopg2"]
EnvThread = Literal["main", "worker"]
EnvConnection = Literal["shared", "autocommit", "none"]
FailOn = Literal["error", "warning"]
COMMANDS: tuple[str, ...] = get_args(Command)
URL_SCHEMES = ("postgres", "postgresql")
TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
PG_MAX_SECONDS = 2147483.647  # lock_timeout/statement_timeout are int milliseconds


# --------------------------------------------------------------------------- value parsers


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"expected true/false/1/0/yes/no, got {str(value)!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`500ms`, `10s`, `5m`, `1h` or a bare number of seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a duration such as 500ms, 10s, 5m, 1h, got {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration such as 500ms, 10s, 5m or 1h, got {str(value)!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _UNITS[unit]


def format_duration(seconds: float) -> str:
    """The shortest way to write `seconds` that parse_duration reads back (`5m` for 300.0)."""
    if seconds == 0:
        return "0"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = seconds / size
        if abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:f}".rstrip("0").rstrip(".")


def _within_postgres_range(seconds: float) -> float:
    if seconds > PG_MAX_SECONDS:
        raise ValueError("at most 2147483s, about 596 hours (PostgreSQL's limit)")
    return seconds


def _above_zero(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0")
    return seconds


def parse_ladder(value: object) -> tuple[float, ...]:
    """`100ms, 200ms, 400ms` → the lock_timeout of each attempt, in seconds: at least one rung,
    each more than 0 and within PostgreSQL's range, none shorter than the one before."""
    if isinstance(value, tuple | list):
        rungs = tuple(parse_duration(v) for v in value)
    else:
        rungs = tuple(parse_duration(item) for item in _items(str(value)))
    if not rungs:
        raise ValueError("expected at least one duration, e.g. 100ms, 200ms, 400ms")
    for rung in rungs:
        _above_zero(rung)
        _within_postgres_range(rung)
    if any(b < a for a, b in pairwise(rungs)):
        raise ValueError("each rung must be at least as long as the one before")
    return rungs


def _items(value: str) -> list[str]:
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


_EXPECT = re.compile(r"^([A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)?)\s*>=\s*(\d+)$")


def parse_expectations(value: object) -> tuple[Expectation, ...]:
    if isinstance(value, tuple | list):
        return tuple(value)
    result = []
    for item in _items(str(value)):
        m = _EXPECT.match(item)
        if not m:
            raise ValueError(f"expected `table>=N` (e.g. connectors>=16), got {item!r}")
        digits = m.group(2).lstrip("0") or "0"
        if len(digits) > len(str(BIGINT_MAX)) or int(digits) > BIGINT_MAX:
            shown = item if len(item) <= 60 else item[:59] + "…"
            raise ValueError(
                f"{shown!r} is out of range: at most {BIGINT_MAX} rows (PostgreSQL's bigint)"
            )
        result.append(Expectation(m.group(1), int(digits)))
    return tuple(result)


BIGINT_MAX = 2**63 - 1
RESERVED_SCHEMAS = {"public", "information_schema"}


def _history_schema(value: object) -> str:
    """The history's schema: a schema of its own (interface.md: never beside the version table,
    which lives in `public` by default, nor where the application's tables are), a name
    PostgreSQL accepts unchanged (not `pg_…`, at most 63 bytes)."""
    name = _not_empty(value)
    if name.lower() in RESERVED_SCHEMAS:
        raise ValueError(
            f"{name!r} is refused: the deploy history lives in a schema of its own, apart from "
            "the version table and the application's tables (public by default); use the "
            "default db_deploy or another dedicated schema"
        )
    if name.lower().startswith("pg_"):
        raise ValueError(f"{name!r} is refused: names starting with pg_ are reserved by PostgreSQL")
    if len(name.encode("utf-8")) > 63:
        raise ValueError(f"{name!r} is longer than PostgreSQL's 63-byte limit for a name")
    return name


_EXTENSION = re.compile(r"^([A-Za-z_][\w-]*)\s*(?:>=\s*(\d+(?:\.\d+)*))?$")


def parse_extensions(value: object) -> tuple[ExtensionRequirement, ...]:
    if isinstance(value, tuple | list):
        return tuple(value)
    result = []
    for item in _items(str(value)):
        m = _EXTENSION.match(item)
        if not m:
            raise ValueError(f"expected `name` or `name>=version` (e.g. vector>=0.7), got {item!r}")
        result.append(ExtensionRequirement(m.group(1), m.group(2) or ""))
    return tuple(result)


def _secret_text(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def check_url(value: object) -> str:
    """Refuse what is not a PostgreSQL URL; the message never repeats the value."""
    value = _secret_text(value).strip()
    if not value:
        return value
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", value)
    if not m:
        raise ValueError(
            "not a connection URL: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    scheme = m.group(1).lower()
    dialect = scheme.split("+", 1)[0]
    netloc = value[m.end() :].split("/", 1)[0].split("?", 1)[0]
    if netloc.count("@") > 1:
        # urllib reads up to the last @, SQLAlchemy and libpq to the first: ambiguous.
        raise ValueError("the user name or password contains '@': percent-encode it as %40")
    if dialect not in URL_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r}: use postgres://, postgresql:// "
            "or postgresql+psycopg://"
        )
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError("port out of range")
    except Exception:  # noqa: BLE001 - make_url raises several kinds; none may echo the URL
        raise ValueError(
            "malformed connection URL (check the port, and percent-encode special characters "
            "in the user name and password)"
        ) from None
    if not url.database and not url.query.get("dbname"):
        raise ValueError("the connection URL names no database: add /DATABASE after the host")
    return value


def _check_webhook(value: object) -> str:
    raw = _secret_text(value).strip()
    if raw and not re.match(r"^https?://[^\s/]+", raw):
        raise ValueError("expected an https:// incoming-webhook URL")
    return raw


def _not_empty(value: object) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def pick(value: object) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {str(value)!r}")
        return text

    return pick


# --------------------------------------------------------------------------- the types

Flag = Annotated[bool, BeforeValidator(parse_bool)]
"""`true/false/1/0/yes/no/on/off`, any case; anything else is an error."""
Duration = Annotated[float, BeforeValidator(parse_duration)]
"""`500ms`, `10s`, `5m`, `1h` or seconds."""
PostgresDuration = Annotated[Duration, AfterValidator(_within_postgres_range)]
"""A duration PostgreSQL takes as a setting in milliseconds (`lock_timeout`, …)."""
Timeout = Annotated[Duration, AfterValidator(_above_zero), AfterValidator(_within_postgres_range)]
"""A duration that must be more than 0."""
PostgresUrl = Annotated[SecretStr, BeforeValidator(check_url)]
WebhookUrl = Annotated[SecretStr, BeforeValidator(_check_webhook)]
NonEmpty = Annotated[str, BeforeValidator(_not_empty)]
HistorySchema = Annotated[str, BeforeValidator(_history_schema)]
Expectations = Annotated[tuple[Expectation, ...], NoDecode, BeforeValidator(parse_expectations)]
Extensions = Annotated[
    tuple[ExtensionRequirement, ...], NoDecode, BeforeValidator(parse_extensions)
]
CommandName = Annotated[Command, BeforeValidator(_one_of(get_args(Command)))]
DriverName = Annotated[UrlDriver, BeforeValidator(_one_of(get_args(UrlDriver)))]
EnvThreadName = Annotated[EnvThread, BeforeValidator(_one_of(get_args(EnvThread)))]
EnvConnectionName = Annotated[EnvConnection, BeforeValidator(_one_of(get_args(EnvConnection)))]
Ladder = Annotated[tuple[float, ...], NoDecode, BeforeValidator(parse_ladder)]
"""Comma-separated durations, each at least the one before (`100ms, 200ms, 400ms`)."""
Severity = Annotated[FailOn, BeforeValidator(_one_of(get_args(FailOn)))]
RiskLevel = Literal["none", "low", "medium", "high"]
RiskLevelName = Annotated[RiskLevel, BeforeValidator(_one_of(get_args(RiskLevel)))]
OptionalFlag = Annotated[
    bool | None, BeforeValidator(lambda v: None if v is None else parse_bool(v))
]
"""A flag whose absence means something of its own (`risk-review`: by command)."""


def _env(name: str, plain: str) -> AliasChoices:
    """An action input's places in the environment, first found wins: the runner's spelling
    (`INPUT_DATABASE-URL`), the underscore one (`INPUT_DATABASE_URL`), the plain variable."""
    upper = name.upper()
    spellings = dict.fromkeys(
        [f"INPUT_{upper}", "INPUT_" + re.sub(r"[^A-Z0-9]", "_", upper), plain]
    )
    return AliasChoices(*spellings)  # `target`: one INPUT_ spelling


# --------------------------------------------------------------------------- the model


class SettingsBase(BaseSettings):
    """The configuration and the sources: Settings', the lenient read of `artefact_paths`, and
    any model the generator is tried on (tests/test_interface.py)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,  # the flags come in by field name
        case_sensitive=True,  # the runner upper-cases; DATABASE_URL is not database_url
        env_ignore_empty=True,  # the runner passes "" for every input left out
        # A model's validator is built on its first use, not at import.
        defer_build=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env file and no secrets folder: the flags, then the environment.
        return (init_settings, _Environment(settings_cls))


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, read through the fields' validation aliases only:
    a command-line-only field (no alias) is not read from the environment. A blank value counts
    as not given, like an empty one."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {k: v for k, v in self.env_vars.items() if v is None or v.strip()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field.validation_alias is None:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class _ConnectionFields:
    """The command to run and the databases it connects to."""

    command: CommandName = Field(
        "deploy",
        description="Sub-command to run: deploy (the whole pipeline, the default), plan, status, "
        "smoke, seed, drift, backup, restore, preflight, rollback, fleet or fleet-report.",
        validation_alias=_env("command", "DB_DEPLOY_COMMAND"),
    )
    database_url: PostgresUrl = Field(
        SecretStr(""),
        description="PostgreSQL connection URL (postgres://, postgresql:// or "
        "postgresql+psycopg://). Pass it from a secret. Empty: the DATABASE_URL environment "
        "variable is used; one of the two must be set.",
        validation_alias=_env("database-url", "DATABASE_URL"),
        json_schema_extra={"workflow": {"required": True}},
    )
    direct_database_url: PostgresUrl = Field(
        SecretStr(""),
        description="Connection used for migrations, bypassing a connection pooler. Empty: "
        "DIRECT_DATABASE_URL, else database-url.",
        validation_alias=_env("direct-database-url", "DIRECT_DATABASE_URL"),
    )


class _DeployFields:
    """What a deploy applies: the project, the target, the seed, the smoke checks."""

    run_seed: Flag = Field(
        False,
        description="Run the seed after migrating (true/false/1/0/yes/no, case-insensitive; "
        "anything else is an error). Refused on production unless allow-production-seed is true.",
        validation_alias=_env("run-seed", "RUN_SEED"),
    )
    migrations_path: NonEmpty = Field(
        "migrations",
        description="Folder holding alembic.ini, or the Alembic script folder (or the "
        "alembic.ini file itself), relative to the workspace.",
        validation_alias=_env("migrations-path", "DB_DEPLOY_MIGRATIONS_PATH"),
    )
    target: NonEmpty = Field(
        "heads",
        description="Revision to upgrade to.",
        validation_alias=_env("target", "DB_DEPLOY_TARGET"),
    )
    seed_path: str = Field(
        "",
        description="A .py file defining seed(connection), or a .sql file, relative to the "
        "workspace. Empty: <migrations-path>/seed.py.",
        validation_alias=_env("seed-path", "DB_DEPLOY_SEED_PATH"),
    )
    environment: str = Field(
        "",
        description="Deployment environment name; `production` turns on the production guards.",
        validation_alias=_env("environment", "DB_DEPLOY_ENVIRONMENT"),
        json_schema_extra={
            "workflow": {
                # Also the job's GitHub environment there, which cannot be empty.
                "default": "production",
                "description": "GitHub environment of the job (its protection rules and "
                "secrets) and the deployer's environment name; `production` turns on the "
                "production guards.",
            }
        },
    )
    allow_production_seed: Flag = Field(
        False,
        description="Allow the seed to run when environment is production.",
        validation_alias=_env("allow-production-seed", "DB_DEPLOY_ALLOW_PRODUCTION_SEED"),
    )
    required_extensions: Extensions = Field(
        (),
        description="Comma list of PostgreSQL extensions the smoke step checks, each `name` or "
        "`name>=version` (e.g. `vector>=0.7`).",
        validation_alias=_env("required-extensions", "DB_DEPLOY_REQUIRED_EXTENSIONS"),
    )
    smoke_expect: Expectations = Field(
        (),
        description="Smoke expectations, one per line or comma-separated, each `table>=N` "
        "(schema-qualified allowed), e.g. `connectors>=16`.",
        validation_alias=_env("smoke-expect", "DB_DEPLOY_SMOKE_EXPECT"),
    )


class _TimeoutFields:
    """PostgreSQL timeouts, the deploy lock's wait and the connection attempts."""

    lock_timeout: PostgresDuration = Field(
        10.0,
        description="PostgreSQL lock_timeout for every lock wait outside the lock ladder (the "
        "smoke's reads, statements in autocommit_block such as CREATE INDEX CONCURRENTLY, the "
        "seed) and the cap of each ladder rung (500ms, 10s, 5m, 1h or seconds; 0 = none).",
        validation_alias=_env("lock-timeout", "DB_DEPLOY_LOCK_TIMEOUT"),
    )
    lock_timeout_ladder: Ladder = Field(
        (0.1, 0.2, 0.3),
        description="lock_timeout of each attempt of the migrations (their locks on existing "
        "relations), comma-separated; a timed-out attempt rolls its transaction back and is "
        "retried after a jittered wait (at most 2s), the last rung repeating until "
        "lock-wait-budget is spent. Keep the rungs well under the application's latency "
        "goal: its queries queue behind a waiting ALTER for up to one rung.",
        validation_alias=_env("lock-timeout-ladder", "DB_DEPLOY_LOCK_TIMEOUT_LADDER"),
    )
    lock_wait_budget: Timeout = Field(
        180.0,
        description="Total time the lock ladder may spend on attempts and waits: no attempt "
        "starts after it, and the deploy fails (exit 1, error-class lock-timeout) naming the "
        "session that blocks it.",
        validation_alias=_env("lock-wait-budget", "DB_DEPLOY_LOCK_WAIT_BUDGET"),
    )
    statement_timeout: PostgresDuration = Field(
        0.0,
        description="PostgreSQL statement_timeout for migration statements (0 = none).",
        validation_alias=_env("statement-timeout", "DB_DEPLOY_STATEMENT_TIMEOUT"),
    )
    deploy_lock_wait: PostgresDuration = Field(
        300.0,
        description="How long to wait for another deploy of the same database to finish.",
        validation_alias=_env("deploy-lock-wait", "DB_DEPLOY_LOCK_WAIT"),
    )
    connect_timeout: Timeout = Field(
        10.0,
        description="Timeout of each connection attempt.",
        validation_alias=_env("connect-timeout", "DB_DEPLOY_CONNECT_TIMEOUT"),
    )
    connect_retries: int = Field(
        5,
        ge=1,
        le=100,
        description="Connection attempts, with exponential backoff and jitter (serverless "
        "databases wake up slowly).",
        validation_alias=_env("connect-retries", "DB_DEPLOY_CONNECT_RETRIES"),
    )


class _ReportingFields:
    """Notifications, dry run, the history's schema and the JSON report."""

    slack_webhook_url: WebhookUrl = Field(
        SecretStr(""),
        description="Slack incoming-webhook URL (pass it from a secret): a notification on every "
        "outcome. Empty: SLACK_WEBHOOK_URL, else no notification.",
        validation_alias=_env("slack-webhook-url", "SLACK_WEBHOOK_URL"),
    )
    slack_timeout: Timeout = Field(
        10.0,
        description="Timeout of each Slack request (one retry follows a failure).",
        validation_alias=_env("slack-timeout", "DB_DEPLOY_SLACK_TIMEOUT"),
    )
    dry_run: Flag = Field(
        False,
        description="Report what would be applied, with its SQL; change nothing.",
        validation_alias=_env("dry-run", "DB_DEPLOY_DRY_RUN"),
    )
    history_schema: HistorySchema = Field(
        "db_deploy",
        description="Schema holding the tool's own tables (the deploy history), created on "
        "first use.",
        validation_alias=_env("history-schema", "DB_DEPLOY_HISTORY_SCHEMA"),
    )
    report_file: NonEmpty = Field(
        "db-deploy-report.json",
        description="Where to write the JSON report, relative to the workspace (outside GitHub "
        "Actions only when given).",
        validation_alias=_env("report-file", "DB_DEPLOY_REPORT_FILE"),
    )


class _SafetyFields:
    """Safety (issue 5): edited migrations, TLS, lock retries."""

    allow_edited_migrations: Flag = Field(
        False,
        description="Accept (and re-record) applied revisions whose script changed since they ran.",
        validation_alias=_env("allow-edited-migrations", "DB_DEPLOY_ALLOW_EDITED_MIGRATIONS"),
    )
    require_tls: Flag = Field(
        False,
        description="Fail when a non-local database is reached without TLS (otherwise a warning).",
        validation_alias=_env("require-tls", "DB_DEPLOY_REQUIRE_TLS"),
    )
    lock_retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Attempts at the lock ladder's last rung after its rungs: 0 = as many as "
        "lock-wait-budget allows, N = at most N more (the budget still ends them first).",
        validation_alias=_env("lock-retries", "DB_DEPLOY_LOCK_RETRIES"),
    )


class _OperationsFields:
    """Operations modes (issue 7): drift, backup, restore, rollback, preflight."""

    scratch_database_url: PostgresUrl = Field(
        SecretStr(""),
        description="drift: a server where a scratch database is created, migrated and dropped "
        "(the role needs CREATEDB; the database the URL names is only the maintenance "
        "connection). Pass it from a secret. Empty: DB_DEPLOY_SCRATCH_DATABASE_URL, else an "
        "embedded server.",
        validation_alias=_env("scratch-database-url", "DB_DEPLOY_SCRATCH_DATABASE_URL"),
        json_schema_extra={"area": "operations"},
    )
    backup_path: str = Field(
        "",
        description="backup: file or folder to write (empty: backups/ in the workspace); "
        "restore: the file to restore.",
        validation_alias=_env("backup-path", "DB_DEPLOY_BACKUP_PATH"),
        json_schema_extra={"area": "operations"},
    )
    backup_before: Flag = Field(
        False,
        description="deploy: take a backup before migrating.",
        validation_alias=_env("backup-before", "DB_DEPLOY_BACKUP_BEFORE"),
        json_schema_extra={"area": "operations"},
    )
    confirm_restore: str = Field(
        "",
        description="restore: must equal the target database's name.",
        validation_alias=_env("confirm-restore", "DB_DEPLOY_CONFIRM_RESTORE"),
        json_schema_extra={"area": "operations"},
    )
    confirm_rollback: Flag = Field(
        False,
        description="rollback: required on the production environment.",
        validation_alias=_env("confirm-rollback", "DB_DEPLOY_CONFIRM_ROLLBACK"),
        json_schema_extra={"area": "operations"},
    )
    preflight_fail_on: Severity = Field(
        "error",
        description="preflight: fail on findings of this severity or worse (error or warning).",
        validation_alias=_env("preflight-fail-on", "DB_DEPLOY_PREFLIGHT_FAIL_ON"),
        json_schema_extra={"area": "operations"},
    )
    security_preflight: Flag = Field(
        True,
        description="deploy: run the cheap security checks first.",
        validation_alias=_env("security-preflight", "DB_DEPLOY_SECURITY_PREFLIGHT"),
        json_schema_extra={"area": "operations"},
    )


class _RiskFields:
    """Risk review (issue 18)."""

    risk_review: OptionalFlag = Field(
        None,
        description="plan and deploy: review the pending revisions before anything is applied "
        "(rehearsed on a scratch database: scratch-database-url, else the embedded server; "
        "checked by rules; weighed against the live database). Empty: on for plan, off for "
        "deploy unless risk-fail-on is set.",
        validation_alias=_env("risk-review", "DB_DEPLOY_RISK_REVIEW"),
    )
    risk_fail_on: RiskLevelName = Field(
        "none",
        description="plan and deploy: exit 1 (error-class risk-gate) before anything is applied "
        "when a risk finding not accepted reaches this level: none, low, medium or high.",
        validation_alias=_env("risk-fail-on", "DB_DEPLOY_RISK_FAIL_ON"),
    )
    github_token: SecretStr = Field(
        SecretStr(""),
        description="plan on a pull request: post the plan as one comment that later runs "
        "update (needs pull-requests: write; a fork's read-only token falls back to the "
        "summary).",
        validation_alias=_env("github-token", "DB_DEPLOY_GITHUB_TOKEN"),
        json_schema_extra={"workflow": {"value": "${{ github.token }}"}},
    )


class _ProjectFields:
    """Real-world Alembic projects (issue 8)."""

    alembic_ini: str = Field(
        "",
        description="Path of alembic.ini when it is not in migrations-path.",
        validation_alias=_env("alembic-ini", "DB_DEPLOY_ALEMBIC_INI"),
        json_schema_extra={"area": "project"},
    )
    script_location: str = Field(
        "",
        description="Alembic script folder (the one with env.py) when the ini's script_location "
        "is wrong for the workspace.",
        validation_alias=_env("script-location", "DB_DEPLOY_SCRIPT_LOCATION"),
        json_schema_extra={"area": "project"},
    )
    url_driver: DriverName = Field(
        "psycopg",
        description="Driver written into sqlalchemy.url for env.py: psycopg, psycopg_async, "
        "asyncpg or psycopg2.",
        validation_alias=_env("url-driver", "DB_DEPLOY_URL_DRIVER"),
        json_schema_extra={"area": "project"},
    )
    env_thread: EnvThreadName = Field(
        "main",
        description="Where env.py runs: main (the main thread) or worker (a worker thread of an "
        "AnyIO event loop, for env.py files that call back into the loop).",
        validation_alias=_env("env-thread", "DB_DEPLOY_ENV_THREAD"),
        json_schema_extra={"area": "project"},
    )
    env_connection: EnvConnectionName = Field(
        "shared",
        description="The connection env.py is handed: shared (the deployer's, in a "
        "transaction), autocommit (an autocommit connection) or none (env.py builds its own "
        "engine from sqlalchemy.url / DATABASE_URL). A handed connection uses url-driver's "
        "driver (psycopg or psycopg2).",
        validation_alias=_env("env-connection", "DB_DEPLOY_ENV_CONNECTION"),
        json_schema_extra={"area": "project"},
    )
    requirements: str = Field(
        "",
        description="A requirements file in the workspace (or `.` for the workspace's project) "
        "to install before running, for an env.py that imports the application's models.",
        validation_alias=_env("requirements", "DB_DEPLOY_REQUIREMENTS"),
        json_schema_extra={"area": "project"},
    )


class _FleetFields:
    """Fleets (issue 20): deployer/fleet, docs/fleets.md."""

    fleet_file: str = Field(
        "",
        description="The fleet file (YAML or JSON) listing the targets, relative to the "
        "workspace (docs/fleets.md): fleet and fleet-report read it; deploy and plan with it "
        "run on every target.",
        validation_alias=_env("fleet-file", "DB_DEPLOY_FLEET_FILE"),
        json_schema_extra={"area": "fleet"},
    )
    max_parallel: int = Field(
        0,
        ge=0,
        le=256,
        description="fleet: targets deployed at once inside one job, one process each (0: the "
        "CPU count).",
        validation_alias=_env("max-parallel", "DB_DEPLOY_MAX_PARALLEL"),
        json_schema_extra={"area": "fleet"},
    )
    fail_fast: Flag = Field(
        False,
        description="fleet: after a failed target start no other target of its wave (later "
        "waves never start after a failure).",
        validation_alias=_env("fail-fast", "DB_DEPLOY_FAIL_FAST"),
        json_schema_extra={"area": "fleet"},
    )
    shards: int = Field(
        1,
        ge=1,
        le=256,
        description="Reusable fleet workflow: shards (matrix jobs) per wave job.",
        validation_alias=_env("shards", "DB_DEPLOY_SHARDS"),
        json_schema_extra={"area": "fleet"},
    )
    max_parallel_jobs: int = Field(
        4,
        ge=1,
        le=256,
        description="Reusable fleet workflow: shard jobs running at once (strategy.max-parallel).",
        validation_alias=_env("max-parallel-jobs", "DB_DEPLOY_MAX_PARALLEL_JOBS"),
        json_schema_extra={"area": "fleet"},
    )


class _CommandLineFields:
    """Command-line only (no alias, never read from the environment), and the workspace."""

    # Command-line only: no alias, so never read from the environment.
    summary_file: str = Field("", description="also write the markdown summary to this file")
    output_file: str = Field(
        "", description="also write the outputs (GITHUB_OUTPUT format) to this file"
    )
    embedded: str | None = Field(
        None,
        description="deploy to a local PostgreSQL with pgvector started in DIR (default: a "
        "temporary folder, removed at exit); database URLs from the environment are ignored, "
        "a URL flag beside it is refused",
    )
    # Not an action input: the runner's own variable, or --workspace.
    workspace: str = Field(
        "",
        description="folder that relative paths start from (default: GITHUB_WORKSPACE or the "
        "current folder)",
        validation_alias="GITHUB_WORKSPACE",
    )


# The field groups above are plain classes: pydantic collects the annotated fields of every
# base, from the last to the first (listed in reverse, so that the fields keep their order: the
# inputs' order in action.yml and the docs), and only Settings is a model (a model per group
# would collect and copy its fields once more at import, for nothing).
class Settings(
    SettingsBase,
    _CommandLineFields,
    _FleetFields,
    _ProjectFields,
    _RiskFields,
    _OperationsFields,
    _SafetyFields,
    _ReportingFields,
    _TimeoutFields,
    _DeployFields,
    _ConnectionFields,
):
    """Every input of the action. Frozen: parsed once at the edge, then only read."""

    # -- derived values

    @property
    def url(self) -> str:
        """The application's connection (preflight, smoke)."""
        return self.database_url.get_secret_value()

    @property
    def direct_url(self) -> str:
        """The connection for migrations, the deploy lock and the history."""
        return self.direct_database_url.get_secret_value() or self.url

    @property
    def webhook(self) -> str:
        return self.slack_webhook_url.get_secret_value()

    @property
    def workspace_dir(self) -> Path:
        return Path(self.workspace or os.getcwd()).resolve()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.workspace_dir / p

    @property
    def migrations_dir(self) -> Path:
        return self.resolve(self.migrations_path)

    @property
    def seed_file(self) -> Path:
        if self.seed_path:
            return self.resolve(self.seed_path)
        base = self.migrations_dir
        return (base.parent if base.suffix == ".ini" else base) / "seed.py"

    @property
    def is_production(self) -> bool:
        return self.environment.strip().lower() in {"production", "prod"}

    @property
    def risk_review_on(self) -> bool:
        """`risk-review`, else on for plan (and whenever risk-fail-on asks for a gate)."""
        if self.risk_review is not None:
            return self.risk_review
        return self.command == "plan" or self.risk_fail_on != "none"

    @property
    def secrets(self) -> list[str]:
        """Every secret of the run: the secret inputs (URLs: their passwords too), and the
        passwords libpq would use for the database URL (`PGPASSWORD`, a `.pgpass` entry)."""
        import os

        from deployer.redact import libpq_passwords, url_secrets

        out: list[str] = []
        for name in secret_fields():
            out += url_secrets(getattr(self, name).get_secret_value())
        out += libpq_passwords(self.database_url.get_secret_value(), os.environ)
        return out


# --------------------------------------------------------------------------- the fields, read


def env_names(field: str) -> tuple[str, ...]:
    """Where the environment holds a setting, in precedence order (its validation aliases)."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (alias,) if isinstance(alias, str) else ()


def input_fields() -> dict[str, str]:
    """Action inputs → field names, in declaration order: the fields with an `INPUT_` alias."""
    return {
        name.replace("_", "-"): name
        for name in Settings.model_fields
        if any(e.startswith("INPUT_") for e in env_names(name))
    }


input_names = input_fields  # the older name, still read by tests


def secret_fields() -> list[str]:
    """The settings typed `SecretStr`: masked wherever they appear."""
    return [name for name, field in Settings.model_fields.items() if field.annotation is SecretStr]


_ARTEFACTS = ("workspace", "summary_file", "output_file", "report_file")


def artefact_paths(flags: Mapping[str, Any]) -> Settings:
    """Where the artefacts go when the settings as a whole were refused: the path settings
    alone, read by the same fields and sources (flag > input > environment > default), and the
    other settings at their defaults. If even those are refused, every default."""
    fields: dict[str, Any] = {name: (str, Settings.model_fields[name]) for name in _ARTEFACTS}
    command = Settings.model_fields["command"]  # as given, unchecked: it may be what failed
    fields["command"] = (str, Field(command.default, validation_alias=command.validation_alias))
    paths = create_model("ArtefactPaths", __base__=SettingsBase, **fields)
    wanted = {k: v for k, v in flags.items() if k in fields and v is not None}
    try:
        values = paths(**wanted).model_dump()
    except ValidationError:
        values = {}
    # Every field given its default as a keyword: the defaults, parsed, whatever the environment.
    defaults = Settings(**{name: f.default for name, f in Settings.model_fields.items()})
    return defaults.model_copy(update=values)


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings once. Bad input raises ConfigError with one line naming the input."""
    try:
        return Settings(**dict(flags or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    by_alias = {alias: name for name in Settings.model_fields for alias in (name, *env_names(name))}
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = str(err["loc"][0]) if err["loc"] else ""
        name = by_alias.get(loc, loc).replace("_", "-")
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"invalid {name}: {msg}")
    return "; ".join(lines)
