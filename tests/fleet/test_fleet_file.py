"""The fleet file: the YAML subset, validation (exit 2 naming the entry, before anything runs),
URL templating with percent-encoding, the name restriction, and precedence."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from deployer.fleet import yamlish
from deployer.fleet.runner import FleetRunner
from deployer.fleet.spec import FleetError, load
from deployer.settings import input_fields

SPEC_EXAMPLE = """\
defaults:                     # any input, kebab-case, for every target
  database-url: postgresql://deployer:${FLEET_PASSWORD}@db.internal:5432/{name}
  migrations-path: migrations
targets:
  - name: tenant_canary       # {name} in any value is the target's name
    wave: 0                   # waves run in ascending order (default 0); a wave starts only
  - name: tenant_a            #   when every target of the waves before it succeeded
    wave: 1
  - name: tenant_b
    wave: 1
    database-url-env: TENANT_B_URL   # the URL from this environment variable instead
    run-seed: true
"""
NAMES = tuple(input_fields())
URL = "defaults:\n  database-url: postgresql://u@h/{name}\n"


def write(tmp_path: Path, text: str, name: str = "fleet.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_subset_reads_what_pyyaml_reads() -> None:
    assert yamlish.loads(SPEC_EXAMPLE) == yaml.safe_load(SPEC_EXAMPLE)
    text = "a: 'it''s # not a comment'\nb: [x, 'y, z', 3]\nc: {k: v, n: 1}\nd:\n- 1\n- two\ne: \"q\\\"\"\n"
    assert yamlish.loads(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text",
    ["a: &x 1\nb: *x\n", "a: |\n  text\n", "a: 1\n  b: 2\n", "a: 1\na: 2\n", "a: 'open\n"],
)
def test_yaml_subset_refuses_with_the_line(text: str) -> None:
    with pytest.raises(yamlish.YamlError, match=r"line \d"):
        yamlish.loads(text)


def test_spec_example_resolves_and_percent_encodes(tmp_path: Path) -> None:
    env = {"FLEET_PASSWORD": "p@ss/w?rd#1%", "TENANT_B_URL": "postgresql://b:secret@h/b"}
    fleet = load(write(tmp_path, SPEC_EXAMPLE), env, input_names=NAMES)
    by = {t.name: t for t in fleet.targets}
    assert fleet.waves == [0, 1]
    url = by["tenant_a"].inputs["database-url"]
    assert url == "postgresql://deployer:p%40ss%2Fw%3Frd%231%25@db.internal:5432/tenant_a"
    assert unquote(url.split(":")[2].split("@")[0]) == env["FLEET_PASSWORD"]
    assert by["tenant_b"].inputs["database-url"] == env["TENANT_B_URL"]  # the target's source wins
    assert by["tenant_b"].inputs["run-seed"] == "true"
    assert by["tenant_canary"].inputs["migrations-path"] == "migrations"
    assert url in by["tenant_a"].secrets


def test_json_file_and_url_map(tmp_path: Path) -> None:
    data = {
        "defaults": {"database-url-env": "FLEET_URLS"},
        "targets": [{"name": "a"}, {"name": "b", "wave": 2}],
    }
    urls = {"a": "postgresql://u:x@h/a", "b": "postgresql://u:y@h/b"}
    fleet = load(write(tmp_path, json.dumps(data), "fleet.json"), {"FLEET_URLS": json.dumps(urls)})
    assert [t.inputs["database-url"] for t in fleet.targets] == [urls["a"], urls["b"]]
    with pytest.raises(FleetError, match=r"targets\[1\] \(b\): .*FLEET_URLS has no URL"):
        load(write(tmp_path, json.dumps(data), "fleet.json"), {"FLEET_URLS": '{"a": "x"}'})


def test_a_name_cannot_smuggle_url_options(tmp_path: Path) -> None:
    text = "defaults:\n  database-url: postgresql://u@h/{name}\ntargets:\n  - name: 'a?host=evil'\n"
    with pytest.raises(FleetError, match=r"targets\[0\]: the name 'a\?host=evil' must match"):
        load(write(tmp_path, text), {})
    with pytest.raises(FleetError, match="at most 63"):
        load(write(tmp_path, "targets:\n  - " + "x" * 64 + "\n"), {})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("targets: []\n", "`targets` must be a non-empty list"),
        (URL + "targets:\n  - a\n  - a\n", r"targets\[1\] \(a\): duplicate name"),
        (
            "targets:\n  - name: a\n    run_seed: true\n",
            r"targets\[0\] \(a\): unknown key 'run_seed' \(inputs are kebab-case",
        ),
        (URL + "targets:\n  - name: a\n    wave: -1\n", r"targets\[0\] \(a\): wave must be"),
        ("targets:\n  - name: a\n    command: status\n", "'command' is set for the whole fleet"),
        ("nope: 1\ntargets: [a]\n", "unknown top-level key 'nope'"),
        (
            "targets:\n  - name: b\n    database-url: postgresql://u:${NOPE}@h/b\n",
            r"\(b\): database-url: the environment variable NOPE is not set",
        ),
        ("targets:\n  - name: b\n", r"\(b\): no database URL"),
        ("defaults:\n  name: x\ntargets: [a]\n", "`name` belongs to a target"),
    ],
)
def test_validation_names_the_entry(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        load(write(tmp_path, body), {}, input_names=NAMES)


def test_precedence_command_over_target_over_defaults(tmp_path: Path) -> None:
    text = (
        "defaults:\n  database-url: postgresql://u@h/{name}\n  lock-timeout: 5s\n  dry-run: false\n"
        "  environment: staging\n"
        "targets:\n  - name: a\n    lock-timeout: 7s\n    dry-run: false\n  - name: b\n"
    )
    fleet = load(write(tmp_path, text), {}, input_names=NAMES)
    runner = FleetRunner(
        fleet=fleet,
        reports_dir=tmp_path,
        workspace=tmp_path,
        inputs={"dry-run": "true"},
        environ={
            "INPUT_COMMAND": "fleet",
            "INPUT_FLEET-FILE": "f",
            "GITHUB_OUTPUT": "/x",
            "DB_DEPLOY_LOCK_TIMEOUT": "1s",
            "PATH": "/bin",
        },
    )
    a, b = (runner.child_env(t) for t in fleet.targets)
    assert a["INPUT_DRY-RUN"] == b["INPUT_DRY-RUN"] == "true"  # the command's input holds
    assert a["INPUT_LOCK-TIMEOUT"] == "7s" and b["INPUT_LOCK-TIMEOUT"] == "5s"
    assert a["INPUT_ENVIRONMENT"] == "staging"
    assert a["INPUT_DATABASE-URL"] == "postgresql://u@h/a"
    assert "INPUT_COMMAND" not in a and "INPUT_FLEET-FILE" not in a and "GITHUB_OUTPUT" not in a
    assert a["DB_DEPLOY_LOCK_TIMEOUT"] == "1s"  # plain variables stay, below the file's inputs


def test_command_inputs_are_flags_and_inputs_off_their_defaults(clean_environ) -> None:
    from deployer.commands.fleet import command_inputs
    from deployer.settings import Settings

    env = {
        "INPUT_COMMAND": "fleet",
        "INPUT_FLEET-FILE": "fleet.yml",
        "INPUT_MIGRATIONS-PATH": "migrations",  # the runner passes action.yml's default
        "INPUT_LOCK-TIMEOUT": "10s",
        "INPUT_DRY-RUN": "true",
        "INPUT_ENVIRONMENT": "staging",
        "DB_DEPLOY_STATEMENT_TIMEOUT": "5s",  # a plain variable: below the file
    }
    for key, value in env.items():
        clean_environ.setenv(key, value)
    settings = Settings(connect_retries=2)  # a flag
    assert command_inputs(settings, env) == {
        "dry-run": "true",
        "environment": "staging",
        "connect-retries": "2",
    }
