"""Settings: one immutable pydantic-settings model, read once at the edge and passed down.

Precedence: command-line flag > GitHub input (`INPUT_<NAME>`) > plain environment > default.
The runner spells input `database-url` as `INPUT_DATABASE-URL` (upper-cased, hyphens kept:
actions/runner Handler.cs AddInputsToEnvironment); the underscore spelling is accepted too. The
runner sets every declared input, `""` when the workflow left it out, so an empty input counts as
"not given" and the next source is consulted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from deployer.errors import ConfigError

COMMANDS = (
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
)
URL_DRIVERS = ("psycopg", "psycopg_async", "asyncpg", "psycopg2")
FAIL_ON = ("error", "warning")
CHOICES = {"command": COMMANDS, "url_driver": URL_DRIVERS, "preflight_fail_on": FAIL_ON}
URL_SCHEMES = ("postgres", "postgresql")
TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
PG_MAX_SECONDS = 2147483.647  # lock_timeout/statement_timeout are int milliseconds


def _input(name: str, env: str | None, description: str, *, secret: bool = False) -> Any:
    return {"input": name, "env": env, "secret": secret, "description": description}


@dataclass(frozen=True)
class Expectation:
    """`table>=N` from `smoke-expect`: `table` may be schema-qualified."""

    table: str
    minimum: int

    def __str__(self) -> str:
        return f"{self.table}>={self.minimum}"


@dataclass(frozen=True)
class ExtensionRequirement:
    """`name` or `name>=version` from `required-extensions`."""

    name: str
    min_version: str = ""

    def __str__(self) -> str:
        return f"{self.name}>={self.min_version}" if self.min_version else self.name


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
        result.append(Expectation(m.group(1), int(m.group(2))))
    return tuple(result)


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


def check_url(value: str) -> str:
    """Refuse what is not a PostgreSQL URL; the message never repeats the value."""
    value = value.strip()
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


# --------------------------------------------------------------------------- the model


class Settings(BaseSettings):
    """Every input of the action. Frozen: parsed once at the edge, then only read."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_default=True)

    command: str = Field(
        "deploy",
        json_schema_extra=_input(
            "command", "DB_DEPLOY_COMMAND", "Sub-command: " + ", ".join(COMMANDS)
        ),
    )
    database_url: SecretStr = Field(
        SecretStr(""),
        json_schema_extra=_input(
            "database-url", "DATABASE_URL", "PostgreSQL connection URL", secret=True
        ),
    )
    direct_database_url: SecretStr = Field(
        SecretStr(""),
        json_schema_extra=_input(
            "direct-database-url",
            "DIRECT_DATABASE_URL",
            "Connection for migrations (bypasses a pooler); defaults to database-url",
            secret=True,
        ),
    )
    run_seed: bool = Field(
        False, json_schema_extra=_input("run-seed", "RUN_SEED", "Run the seed after migrating")
    )
    migrations_path: str = Field(
        "migrations",
        json_schema_extra=_input(
            "migrations-path",
            "DB_DEPLOY_MIGRATIONS_PATH",
            "Folder holding alembic.ini or the Alembic script folder, relative to the workspace",
        ),
    )
    target: str = Field(
        "heads", json_schema_extra=_input("target", "DB_DEPLOY_TARGET", "Revision to upgrade to")
    )
    seed_path: str = Field(
        "",
        json_schema_extra=_input(
            "seed-path",
            "DB_DEPLOY_SEED_PATH",
            "A .py file defining seed(connection) or a .sql file; default <migrations-path>/seed.py",
        ),
    )
    environment: str = Field(
        "",
        json_schema_extra=_input(
            "environment",
            "DB_DEPLOY_ENVIRONMENT",
            "Deployment environment name; `production` turns on the production guards",
        ),
    )
    allow_production_seed: bool = Field(
        False,
        json_schema_extra=_input(
            "allow-production-seed",
            "DB_DEPLOY_ALLOW_PRODUCTION_SEED",
            "Allow the seed to run when environment is production",
        ),
    )
    required_extensions: tuple[ExtensionRequirement, ...] = Field(
        (),
        json_schema_extra=_input(
            "required-extensions",
            "DB_DEPLOY_REQUIRED_EXTENSIONS",
            "Comma list of extensions, each `name` or `name>=version`, checked by the smoke step",
        ),
    )
    smoke_expect: tuple[Expectation, ...] = Field(
        (),
        json_schema_extra=_input(
            "smoke-expect",
            "DB_DEPLOY_SMOKE_EXPECT",
            "Lines or commas of `table>=N` (schema-qualified allowed)",
        ),
    )
    lock_timeout: float = Field(
        10.0,
        json_schema_extra=_input(
            "lock-timeout",
            "DB_DEPLOY_LOCK_TIMEOUT",
            "PostgreSQL lock_timeout for migration statements and the smoke's reads",
        ),
    )
    statement_timeout: float = Field(
        0.0,
        json_schema_extra=_input(
            "statement-timeout",
            "DB_DEPLOY_STATEMENT_TIMEOUT",
            "PostgreSQL statement_timeout for migration statements (0 = none)",
        ),
    )
    deploy_lock_wait: float = Field(
        300.0,
        json_schema_extra=_input(
            "deploy-lock-wait",
            "DB_DEPLOY_LOCK_WAIT",
            "How long to wait for another deploy of the same database to finish",
        ),
    )
    connect_timeout: float = Field(
        10.0,
        json_schema_extra=_input(
            "connect-timeout", "DB_DEPLOY_CONNECT_TIMEOUT", "Timeout of each connection attempt"
        ),
    )
    connect_retries: int = Field(
        5,
        ge=1,
        le=100,
        json_schema_extra=_input(
            "connect-retries",
            "DB_DEPLOY_CONNECT_RETRIES",
            "Connection attempts, with exponential backoff and jitter",
        ),
    )
    slack_webhook_url: SecretStr = Field(
        SecretStr(""),
        json_schema_extra=_input(
            "slack-webhook-url",
            "SLACK_WEBHOOK_URL",
            "Slack incoming-webhook URL; a notification on every outcome",
            secret=True,
        ),
    )
    slack_timeout: float = Field(
        10.0,
        json_schema_extra=_input(
            "slack-timeout",
            "DB_DEPLOY_SLACK_TIMEOUT",
            "Timeout of each Slack request (one retry follows a failure)",
        ),
    )
    dry_run: bool = Field(
        False,
        json_schema_extra=_input(
            "dry-run",
            "DB_DEPLOY_DRY_RUN",
            "Report what would be applied, with its SQL; change nothing",
        ),
    )
    history_schema: str = Field(
        "db_deploy",
        json_schema_extra=_input(
            "history-schema",
            "DB_DEPLOY_HISTORY_SCHEMA",
            "Schema holding the tool's own tables (deploy history)",
        ),
    )
    report_file: str = Field(
        "db-deploy-report.json",
        json_schema_extra=_input(
            "report-file",
            "DB_DEPLOY_REPORT_FILE",
            "Where to write the JSON report, relative to the workspace",
        ),
    )
    # Safety (issue 5).
    allow_edited_migrations: bool = Field(
        False,
        json_schema_extra=_input(
            "allow-edited-migrations",
            "DB_DEPLOY_ALLOW_EDITED_MIGRATIONS",
            "Accept (and re-record) applied revisions whose script changed since they ran",
        ),
    )
    require_tls: bool = Field(
        False,
        json_schema_extra=_input(
            "require-tls",
            "DB_DEPLOY_REQUIRE_TLS",
            "Fail when a non-local database is reached without TLS (otherwise a warning)",
        ),
    )
    lock_retries: int = Field(
        0,
        ge=0,
        le=10,
        json_schema_extra=_input(
            "lock-retries",
            "DB_DEPLOY_LOCK_RETRIES",
            "Retry a revision blocked by another session's lock this many times, with backoff",
        ),
    )
    # Operations modes (issue 7).
    scratch_database_url: SecretStr = Field(
        SecretStr(""),
        json_schema_extra=_input(
            "scratch-database-url",
            "DB_DEPLOY_SCRATCH_DATABASE_URL",
            "drift: a server where a scratch database is created, migrated and dropped (the role needs CREATEDB; the database it names is only the maintenance connection). Default: an embedded server",
            secret=True,
        ),
    )
    backup_path: str = Field(
        "",
        json_schema_extra=_input(
            "backup-path",
            "DB_DEPLOY_BACKUP_PATH",
            "backup: file or folder to write (default: backups/ in the workspace); restore: the file",
        ),
    )
    backup_before: bool = Field(
        False,
        json_schema_extra=_input(
            "backup-before", "DB_DEPLOY_BACKUP_BEFORE", "deploy: take a backup before migrating"
        ),
    )
    confirm_restore: str = Field(
        "",
        json_schema_extra=_input(
            "confirm-restore",
            "DB_DEPLOY_CONFIRM_RESTORE",
            "restore: must equal the target database's name",
        ),
    )
    confirm_rollback: bool = Field(
        False,
        json_schema_extra=_input(
            "confirm-rollback",
            "DB_DEPLOY_CONFIRM_ROLLBACK",
            "rollback: required on the production environment",
        ),
    )
    preflight_fail_on: str = Field(
        "error",
        json_schema_extra=_input(
            "preflight-fail-on",
            "DB_DEPLOY_PREFLIGHT_FAIL_ON",
            "preflight: fail on findings of this severity or worse (error or warning)",
        ),
    )
    security_preflight: bool = Field(
        True,
        json_schema_extra=_input(
            "security-preflight",
            "DB_DEPLOY_SECURITY_PREFLIGHT",
            "deploy: run the cheap security checks first",
        ),
    )
    # Real-world Alembic projects (issue 8).
    alembic_ini: str = Field(
        "",
        json_schema_extra=_input(
            "alembic-ini",
            "DB_DEPLOY_ALEMBIC_INI",
            "Path of alembic.ini when it is not in migrations-path",
        ),
    )
    script_location: str = Field(
        "",
        json_schema_extra=_input(
            "script-location",
            "DB_DEPLOY_SCRIPT_LOCATION",
            "Alembic script folder (the one with env.py) when the ini's is wrong for the workspace",
        ),
    )
    url_driver: str = Field(
        "psycopg",
        json_schema_extra=_input(
            "url-driver",
            "DB_DEPLOY_URL_DRIVER",
            "Driver written into sqlalchemy.url for env.py: psycopg, psycopg_async, asyncpg, psycopg2",
        ),
    )
    requirements: str = Field(
        "",
        json_schema_extra=_input(
            "requirements",
            "DB_DEPLOY_REQUIREMENTS",
            "A requirements file in the workspace (or `.` for the workspace's project) to install "
            "before running",
        ),
    )
    # Command-line only (no action input).
    summary_file: str = Field("", json_schema_extra=_input("summary-file", None, ""))
    output_file: str = Field("", json_schema_extra=_input("output-file", None, ""))
    embedded: str | None = Field(None, json_schema_extra=_input("embedded", None, ""))
    workspace: str = Field("", json_schema_extra=_input("workspace", "GITHUB_WORKSPACE", ""))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, GitHubInputSource(settings_cls), PlainEnvSource(settings_cls))

    # -- validators: strings from the environment become typed values

    @field_validator(
        "run_seed",
        "allow_production_seed",
        "dry_run",
        "allow_edited_migrations",
        "require_tls",
        "backup_before",
        "confirm_rollback",
        "security_preflight",
        mode="before",
    )
    @classmethod
    def _bool(cls, v: object) -> bool:
        return parse_bool(v)

    @field_validator(
        "lock_timeout",
        "statement_timeout",
        "deploy_lock_wait",
        "connect_timeout",
        "slack_timeout",
        mode="before",
    )
    @classmethod
    def _duration(cls, v: object, info: ValidationInfo) -> float:
        seconds = parse_duration(v)
        if info.field_name in {"lock_timeout", "statement_timeout"} and seconds > PG_MAX_SECONDS:
            raise ValueError("at most 2147483s, about 596 hours (PostgreSQL's limit)")
        if info.field_name in {"connect_timeout", "slack_timeout"} and seconds <= 0:
            raise ValueError("must be more than 0")
        return seconds

    @field_validator("smoke_expect", mode="before")
    @classmethod
    def _expect(cls, v: object) -> tuple[Expectation, ...]:
        return parse_expectations(v)

    @field_validator("required_extensions", mode="before")
    @classmethod
    def _extensions(cls, v: object) -> tuple[ExtensionRequirement, ...]:
        return parse_extensions(v)

    @field_validator("database_url", "direct_database_url", "scratch_database_url", mode="before")
    @classmethod
    def _url(cls, v: object) -> str:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        return check_url(raw)

    @field_validator("slack_webhook_url", mode="before")
    @classmethod
    def _webhook(cls, v: object) -> str:
        raw = (v.get_secret_value() if isinstance(v, SecretStr) else str(v)).strip()
        if raw and not re.match(r"^https?://[^\s/]+", raw):
            raise ValueError("expected an https:// incoming-webhook URL")
        return raw

    @field_validator("command", "url_driver", "preflight_fail_on", mode="before")
    @classmethod
    def _choice(cls, v: object, info: ValidationInfo) -> str:
        choices = CHOICES[str(info.field_name)]
        text = str(v).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {str(v)!r}")
        return text

    @field_validator("target", "migrations_path", "history_schema", "report_file", mode="before")
    @classmethod
    def _strip(cls, v: object) -> str:
        text = str(v).strip()
        if not text:
            raise ValueError("must not be empty")
        return text

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
    def secrets(self) -> list[str]:
        from deployer.redact import url_secrets

        return [
            *url_secrets(self.url),
            *url_secrets(self.direct_database_url.get_secret_value()),
            *url_secrets(self.scratch_database_url.get_secret_value()),
            *url_secrets(self.webhook),
        ]


# --------------------------------------------------------------------------- sources


def _meta(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def input_names() -> dict[str, str]:
    """Action inputs → field names (the command-line-only settings excluded)."""
    return {
        _meta(f)["input"]: name
        for name, f in Settings.model_fields.items()
        if _meta(f).get("description") and name not in {"workspace"}
    }


class GitHubInputSource(PydanticBaseSettingsSource):
    """`INPUT_DATABASE-URL` (runner spelling) or `INPUT_DATABASE_URL`; empty means not given."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None):
        super().__init__(settings_cls)
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = _meta(field).get("input", "")
        for key in (
            "INPUT_" + name.replace(" ", "_").upper(),
            "INPUT_" + re.sub(r"[^A-Z0-9]", "_", name.upper()),
        ):
            value = self.environ.get(key, "")
            if value.strip():
                return value, field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not _meta(field).get("description"):
                continue  # command-line-only settings are not action inputs
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                data[name] = value
        return data


class PlainEnvSource(PydanticBaseSettingsSource):
    """Plain environment variables (`DATABASE_URL`, `RUN_SEED`, `DB_DEPLOY_*`); empty = unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None):
        super().__init__(settings_cls)
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = _meta(field).get("env")
        value = self.environ.get(env, "") if env else ""
        return (value if value.strip() else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                data[name] = value
        return data


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """Read the settings once. Bad input raises ConfigError with one line naming the input."""
    try:
        return Settings(**dict(flags or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        info = Settings.model_fields.get(field)
        name = _meta(info)["input"] if info is not None else field
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"invalid {name}: {msg}")
    return "; ".join(lines)
