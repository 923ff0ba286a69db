"""The run's record as the JSON report sees it, and its redaction."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from deployer.redact import Redactor, redact_record
from deployer.results import (
    AppliedRevision,
    MigrateResult,
    Revision,
    RunResult,
    SmokeResult,
    TableCheck,
    Telemetry,
    plain,
)


def filled_record() -> RunResult:
    result = RunResult(command="deploy", telemetry=Telemetry(actor="octo", sha="abc"))
    result.migrate = MigrateResult(
        script_location="migrations",
        previous=["0001"],
        current=["0003"],
        pending=[Revision("0002", "two", ["0001"], "v/0002.py")],
        applied=[AppliedRevision("0002", "two", 0.01), AppliedRevision("0003", "three", 0.02)],
        sql={"0002": "CREATE TABLE t ();"},
    )
    result.smoke = SmokeResult(tables=[TableCheck(schema="public", name="t", rows=3)])
    result.steps = {"preflight": 0.1, "migrate": 0.2}
    result.extra = {"tuple": (1, "two"), "nested": {"k": [1, 2]}}
    return result


def test_plain_is_asdict_without_the_copy() -> None:
    result = filled_record()
    ours = plain(result)
    theirs = dataclasses.asdict(result)
    # the same structure (tuples become lists either way in JSON)
    assert json.dumps(ours, default=str) == json.dumps(theirs, default=str)
    assert ours["migrate"]["applied"][1] == {
        "revision": "0003",
        "description": "three",
        "seconds": 0.02,
        "committed": True,
    }
    assert ours["extra"]["tuple"] == [1, "two"]
    # no copy of the leaves, and the record is not shared: changing one changes not the other
    ours["migrate"]["current"].append("x")
    assert result.migrate is not None and result.migrate.current == ["0003"]


def test_to_dict_reads_like_the_report() -> None:
    data = filled_record().to_dict()
    assert data["schema_version"] == 1
    assert data["revisions"]["current"] == "0003"
    assert data["smoke"]["summary"] == {"tables": 1, "failed": 0, "rows": 3, "problems": []}
    json.dumps(data, default=str)  # serialisable as it stands


def test_redact_record_masks_values_and_keys() -> None:
    secret = 'pässwörd-with-"quotes"'  # JSON would escape it: the text pass would miss it
    result = filled_record()
    result.error = f"connect failed for {secret}"
    result.extra = {
        f"key {secret}": [f"in a list {secret}"],
        "ok": {"deep": secret},
        "pair": (secret, 1),
    }
    redact_record(result, Redactor([secret]))
    text = json.dumps(plain(result), default=str)
    assert secret not in text and json.dumps(secret)[1:-1] not in text
    assert result.extra == {
        "key ***": ["in a list ***"],
        "ok": {"deep": "***"},
        "pair": ("***", 1),
    }


def test_each_section_renders_its_own_record() -> None:
    from deployer.render import markdown, operations, terminal
    from deployer.results import Difference, DriftResult, RestoreResult

    result = filled_record()
    assert result.migrate is not None and result.smoke is not None
    assert markdown.migrations(result.migrate, rollback=False)[:4] == [
        "### Migrations",
        "",
        "| Revision | Description | Time | Result |",
        "| --- | --- | ---: | --- |",
    ]
    assert markdown.smoke(result.smoke)[2] == "1 tables checked, 0 failed, 3 rows in 0.00 s."
    assert terminal.applied(result.migrate)[0] == "applied    2 revision(s)"
    whole = markdown.render(result)
    assert whole.index("### Migrations") < whole.index("### Smoke test")

    drift = DriftResult(
        revision=["0003"],
        scratch="scratch",
        differences=[Difference("table", f"t{i}", "differs", "a|b", "c") for i in range(205)],
    )
    lines = operations.drift(drift)
    assert lines[2].startswith("❌ 205 difference(s)")
    assert "| table | `t0` | differs | a\\|b | c |" in lines  # cells escaped
    assert "… and 5 more (see the JSON report)." in lines

    left = [f"t{i}" for i in range(25)]
    rows = "\n".join(
        operations.restore(RestoreResult(path="b.dump", left_in_place=left), dry_run=True)
    )
    assert "Dry run: `b.dump` verified, nothing restored." in rows
    assert "`t19` and 5 more" in rows


def test_a_deploy_does_not_create_the_records_it_does_not_use() -> None:
    """What a deploy imports on its way (the entry point, the command, the renderers) leaves the
    records of the operations modes, the risk review and the fleet unimported, and the seed
    step; they come on first use, by the same names."""
    code = """
import sys
from deployer import cli, publish
from deployer.commands import preload
from deployer.render import json_report, markdown, outputs, slack, terminal
preload("deploy")
print(" ".join(sorted(m for m in sys.modules if m.startswith("deployer."))))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert {"deployer.commands.deploy", "deployer.results.run", "deployer.steps.migrate"} <= loaded
    lazy = {"deployer.results.operations", "deployer.results.risk", "deployer.results.fleet"}
    assert not loaded & (lazy | {"deployer.steps.seed"})
    from deployer.results import BackupResult, FleetResult, RiskResult

    assert (BackupResult.__module__, FleetResult.__module__, RiskResult.__module__) == (
        "deployer.results.operations",
        "deployer.results.fleet",
        "deployer.results.risk",
    )
    with pytest.raises(AttributeError, match="NoSuchRecord"):
        import deployer.results

        deployer.results.NoSuchRecord  # noqa: B018
