"""Settings: precedence flag > INPUT_* (runner spelling) > plain env > default, and bad input."""

from __future__ import annotations

import pytest

from deployer.errors import ConfigError
from deployer.settings import (
    Expectation,
    ExtensionRequirement,
    Settings,
    artefact_paths,
    env_names,
    format_duration,
    input_fields,
    load_settings,
    parse_duration,
    secret_fields,
)

URL = "postgresql://app:s3cr%40t-pw@db.example.com:5432/shop"


@pytest.fixture(autouse=True)
def clean(clean_environ: pytest.MonkeyPatch) -> None:
    """Every test here reads this process's environment: start from none of our settings."""


def test_defaults_match_the_spec() -> None:
    s = load_settings()
    assert s.command == "deploy"
    assert s.run_seed is False
    assert s.migrations_path == "migrations"
    assert s.target == "heads"
    assert s.lock_timeout == 10.0
    assert s.statement_timeout == 0.0
    assert s.deploy_lock_wait == 300.0
    assert s.connect_timeout == 10.0
    assert s.connect_retries == 5
    assert s.history_schema == "db_deploy"
    assert s.seed_file == s.migrations_dir / "seed.py"


def test_runner_spelling_with_hyphens(monkeypatch: pytest.MonkeyPatch) -> None:
    # actions/runner Handler.cs: "INPUT_" + name.Replace(' ', '_').ToUpperInvariant()
    monkeypatch.setenv("INPUT_DATABASE-URL", URL)
    monkeypatch.setenv("INPUT_RUN-SEED", "TRUE")
    monkeypatch.setenv("INPUT_LOCK-TIMEOUT", "500ms")
    s = load_settings()
    assert s.url == URL
    assert s.direct_url == URL  # direct defaults to database-url
    assert s.run_seed is True
    assert s.lock_timeout == 0.5


def test_underscore_spelling_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_DATABASE_URL", URL)
    monkeypatch.setenv("INPUT_SMOKE_EXPECT", "connectors>=16\nagents>=3")
    s = load_settings()
    assert s.url == URL
    assert s.smoke_expect == (Expectation("connectors", 16), Expectation("agents", 3))


def test_precedence_flag_over_input_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUN_SEED", "false")
    monkeypatch.setenv("DB_DEPLOY_TARGET", "from-env")
    monkeypatch.setenv("INPUT_TARGET", "from-input")
    monkeypatch.setenv("INPUT_MIGRATIONS-PATH", "from-input")
    monkeypatch.setenv("DB_DEPLOY_MIGRATIONS_PATH", "from-env")
    monkeypatch.setenv("DB_DEPLOY_SEED_PATH", "seed.sql")
    s = load_settings({"target": "from-flag"})
    assert s.target == "from-flag"
    assert s.migrations_path == "from-input"
    assert s.seed_path == "seed.sql"
    assert s.run_seed is False


def test_empty_input_falls_through_to_plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner sets every declared input, "" when the workflow left it out.
    monkeypatch.setenv("INPUT_DATABASE-URL", "")
    monkeypatch.setenv("INPUT_RUN-SEED", "")
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("RUN_SEED", "yes")
    s = load_settings()
    assert s.url == URL
    assert s.run_seed is True


@pytest.mark.parametrize(
    "value,expected",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("YES", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_booleans(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("INPUT_RUN-SEED", value)
    assert load_settings().run_seed is expected


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("7", 7),
        ("2.5s", 2.5),
        (" 3 s ", 3),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [0.0, 0.5, 10.0, 300.0, 3600.0, 1.25, 2147483.647])
def test_a_formatted_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(300.0) == "5m" and format_duration(10.0) == "10s"


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"run_seed": "maybe"}, "invalid run-seed: expected true/false/1/0/yes/no, got 'maybe'"),
        ({"lock_timeout": "10 parsecs"}, "invalid lock-timeout: expected a duration"),
        ({"deploy_lock_wait": "-5s"}, "invalid deploy-lock-wait"),
        ({"smoke_expect": "connectors>16"}, "invalid smoke-expect: expected `table>=N`"),
        ({"required_extensions": "vector>=x"}, "invalid required-extensions"),
        ({"connect_retries": "0"}, "invalid connect-retries"),
        ({"command": "explode"}, "invalid command: expected one of deploy"),
        ({"url_driver": "pg8000"}, "invalid url-driver"),
    ],
)
def test_bad_values_name_the_input(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags)
    assert message in exc.value.message
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    "url,message",
    [
        ("mysql://root:hunter2pw@db/shop", "unsupported scheme 'mysql'"),
        ("db.example.com:5432/shop hunter2pw", "not a connection URL"),
        ("postgresql://app:hunter2pw@db.example.com:notaport/shop", "malformed connection URL"),
        ("postgresql://app:hunter2pw@db.example.com:5432", "names no database"),
    ],
)
def test_bad_urls_never_repeat_the_secret(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"database_url": url})
    assert message in exc.value.message
    assert "hunter2pw" not in exc.value.message
    assert "invalid database-url" in exc.value.message


def test_accepted_schemes() -> None:
    for scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        assert load_settings({"database_url": f"{scheme}://u:p@h/db"}).url.startswith(scheme)


def test_settings_are_immutable() -> None:
    s = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        s.target = "x"  # type: ignore[misc]


def test_secrets_cover_encoded_passwords() -> None:
    s = load_settings({"database_url": URL, "slack_webhook_url": "https://hooks.example/T/B/x"})
    assert "s3cr%40t-pw" in s.secrets and "s3cr@t-pw" in s.secrets
    assert "https://hooks.example/T/B/x" in s.secrets
    assert "app:s3cr" not in repr(s)  # SecretStr keeps them out of reprs


def test_extensions_parse() -> None:
    s = load_settings({"required_extensions": "vector>=0.7, plpgsql"})
    assert s.required_extensions == (
        ExtensionRequirement("vector", "0.7"),
        ExtensionRequirement("plpgsql"),
    )


def test_every_input_has_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    names = input_fields()
    assert {"database-url", "run-seed", "migrations-path", "slack-webhook-url", "dry-run"} <= set(
        names
    )
    monkeypatch.setenv("INPUT_DEPLOY-LOCK-WAIT", "1m")
    monkeypatch.setenv("DB_DEPLOY_CONNECT_RETRIES", "3")
    s = load_settings()
    assert s.deploy_lock_wait == 60.0 and s.connect_retries == 3


def test_aliases_are_the_runners_spellings_then_the_plain_variable() -> None:
    """Each action input's validation aliases, in pydantic-settings' precedence order."""
    for name, field in input_fields().items():
        assert field == name.replace("-", "_"), "the input is the field's name in kebab-case"
        runner, *underscore, plain = env_names(field)
        assert runner == "INPUT_" + name.upper()
        spelled = "INPUT_" + name.upper().replace("-", "_")
        assert underscore == ([spelled] if "-" in name else []), "each spelling once"
        assert plain and not plain.startswith("INPUT_")
    assert env_names("database_url")[2] == "DATABASE_URL"
    assert env_names("workspace") == ("GITHUB_WORKSPACE",)
    for cli_only in ("summary_file", "output_file", "embedded"):
        assert env_names(cli_only) == ()


def test_command_line_only_settings_are_not_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("summary_file", "SUMMARY_FILE", "INPUT_SUMMARY-FILE", "embedded", "EMBEDDED"):
        monkeypatch.setenv(key, "from-env")
    s = load_settings()
    assert s.summary_file == "" and s.embedded is None
    assert load_settings({"summary_file": "s.md"}).summary_file == "s.md"


def test_blank_input_counts_as_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_TARGET", "   ")
    monkeypatch.setenv("DB_DEPLOY_TARGET", "from-env")
    assert load_settings().target == "from-env"


def test_underscore_spelling_yields_to_the_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_TARGET", "underscore")
    monkeypatch.setenv("INPUT_MIGRATIONS-PATH", "runner")
    monkeypatch.setenv("INPUT_MIGRATIONS_PATH", "underscore")
    s = load_settings()
    assert s.target == "underscore" and s.migrations_path == "runner"


def test_booleans_accept_on_and_off_and_refuse_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({"dry_run": "ON"}).dry_run is True
    assert load_settings({"dry_run": "off"}).dry_run is False
    with pytest.raises(ConfigError, match="invalid dry-run: expected true/false"):
        load_settings({"dry_run": "2"})
    monkeypatch.setenv("INPUT_DRY-RUN", "nope")
    with pytest.raises(ConfigError, match=r"invalid dry-run: .*got 'nope'"):
        load_settings()


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"statement_timeout": "1000h"}, "invalid statement-timeout: at most 2147483s"),
        ({"connect_timeout": "0"}, "invalid connect-timeout: must be more than 0"),
        ({"slack_timeout": "0s"}, "invalid slack-timeout: must be more than 0"),
        ({"deploy_lock_wait": "10 years"}, "invalid deploy-lock-wait: expected a duration"),
        ({"preflight_fail_on": "info"}, "invalid preflight-fail-on: expected one of error"),
        ({"target": " "}, "invalid target: must not be empty"),
        ({"slack_webhook_url": "hooks"}, "invalid slack-webhook-url: expected an https://"),
    ],
)
def test_each_type_checks_its_bounds(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags)
    assert message in exc.value.message


def test_an_error_from_the_environment_names_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_DEPLOY_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"^invalid lock-timeout: expected a duration"):
        load_settings()


def test_choices_are_read_case_insensitively() -> None:
    s = load_settings({"command": " Plan ", "url_driver": "AsyncPG"})
    assert s.command == "plan" and s.url_driver == "asyncpg"


def test_secrets_are_the_secretstr_fields() -> None:
    assert secret_fields() == [
        "database_url",
        "direct_database_url",
        "slack_webhook_url",
        "scratch_database_url",
        "github_token",
    ]
    assert all(Settings.model_fields[f].annotation is not str for f in secret_fields())


def test_artefact_paths_follow_the_same_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the settings are refused, the report still goes where the user asked."""
    monkeypatch.setenv("INPUT_RUN-SEED", "perhaps")
    monkeypatch.setenv("INPUT_REPORT-FILE", "from-input.json")
    monkeypatch.setenv("DB_DEPLOY_REPORT_FILE", "from-env.json")
    monkeypatch.setenv("GITHUB_WORKSPACE", "/ws")
    monkeypatch.setenv("DB_DEPLOY_LOCK_TIMEOUT", "garbage")
    with pytest.raises(ConfigError):
        load_settings()
    s = artefact_paths({"summary_file": "s.md", "run_seed": "perhaps"})
    assert (s.report_file, s.summary_file, s.workspace) == ("from-input.json", "s.md", "/ws")
    assert s.lock_timeout == 10.0 and s.run_seed is False  # the rest: the defaults
    assert artefact_paths({"report_file": "flag.json"}).report_file == "flag.json"


def test_every_float_is_a_duration_and_every_bool_a_flag() -> None:
    """The parser comes with the type: a field typed `float` or `bool` without `Duration` or
    `Flag` would refuse `10s` or accept only pydantic's own spellings."""
    from pydantic.functional_validators import BeforeValidator

    from deployer.settings import parse_bool

    for name, field in Settings.model_fields.items():
        parsers = {m.func for m in field.metadata if isinstance(m, BeforeValidator)}
        if field.annotation is float:
            assert parse_duration in parsers, name
        if field.annotation is bool:
            assert parse_bool in parsers, name
