"""One source for the interface: the Settings fields and deployer/interface.py's outputs are
written into action.yml, python/action.yml, the reusable workflow and the docs' tables by
scripts/generate.py (`make generate`). The committed files are what it writes; a new field
reaches every file; a name the runner reserves is mapped, not copied; and every other line of
those files stays as it was."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from pydantic import AliasChoices, Field, SecretStr

from deployer.interface import OUTPUTS, Output
from deployer.settings import Flag, Settings, SettingsBase
from tests.helpers import REPO

FILES = (
    "action.yml",
    "python/action.yml",
    ".github/workflows/db-deploy-reusable.yml",
    "README.md",
    "docs/inputs.md",
)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO / "scripts" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def _workflow(text: str) -> dict:
    data = yaml.safe_load(text)
    data["on"] = data.pop(True)
    return data


def test_the_committed_files_are_what_make_generate_writes():
    stale = [
        str(path.relative_to(REPO))
        for path, text in generator.generate().items()
        if path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"run `make generate`: {stale} differ from the Settings fields"
    assert {str(p.relative_to(REPO)) for p in generator.generate()} == set(FILES)


def test_the_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = _copy(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| `target` |", "| `targets` |"))
    written = generator.generate(root=root)
    assert written[readme] != readme.read_text()


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_the_outputs_registry_is_what_the_deployer_writes():
    from deployer.render.outputs import OUTPUTS as WRITTEN

    assert list(WRITTEN) == [o.name for o in OUTPUTS]
    assert len({o.name for o in OUTPUTS}) == len(OUTPUTS)


# --------------------------------------------------------------------------- a synthetic model


class Tiny(SettingsBase):
    """A small settings model: one of each kind, a secret, a name the runner reserves, and a
    command-line-only setting."""

    target: str = Field(
        "heads",
        description="Revision to upgrade to.",
        validation_alias=AliasChoices("INPUT_TARGET", "INPUT_TARGET", "DB_DEPLOY_TARGET"),
    )
    dry_run: Flag = Field(
        False,
        description="Report what would be applied; change nothing.",
        validation_alias=AliasChoices("INPUT_DRY-RUN", "INPUT_DRY_RUN", "DB_DEPLOY_DRY_RUN"),
    )
    connect_retries: int = Field(
        5,
        description="Connection attempts.",
        validation_alias=AliasChoices(
            "INPUT_CONNECT-RETRIES", "INPUT_CONNECT_RETRIES", "DB_DEPLOY_CONNECT_RETRIES"
        ),
    )
    database_url: SecretStr = Field(
        SecretStr(""),
        description="PostgreSQL connection URL. Pass it from a secret.",
        validation_alias=AliasChoices("INPUT_DATABASE-URL", "INPUT_DATABASE_URL", "DATABASE_URL"),
        json_schema_extra={"workflow": {"required": True}},
    )
    github_token: SecretStr = Field(
        SecretStr(""),
        description="Token for the pull-request comment.",
        validation_alias=AliasChoices("INPUT_GITHUB-TOKEN", "INPUT_GITHUB_TOKEN", "GITHUB_TOKEN"),
        json_schema_extra={"workflow": {"value": "${{ github.token }}"}},
    )
    # The rest of the workflow (kept as it is) reads these two.
    environment: str = Field(
        "",
        description="Deployment environment name.",
        validation_alias=AliasChoices(
            "INPUT_ENVIRONMENT", "INPUT_ENVIRONMENT", "DB_DEPLOY_ENVIRONMENT"
        ),
        json_schema_extra={"workflow": {"default": "production"}},
    )
    report_file: str = Field(
        "db-deploy-report.json",
        description="Where to write the JSON report.",
        validation_alias=AliasChoices(
            "INPUT_REPORT-FILE", "INPUT_REPORT_FILE", "DB_DEPLOY_REPORT_FILE"
        ),
    )
    summary_file: str = Field("", description="also write the markdown summary to this file")


TINY_OUTPUTS = (
    Output("status", "`success`, `noop` or `failed`."),
    Output("plan-sql", "plan: the SQL of the pending revisions.", ("plan",)),
)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = _copy(tmp_path)
    written = generator.generate(Tiny, TINY_OUTPUTS, root=root)
    for path, text in written.items():
        path.write_text(text, encoding="utf-8")
    return root, {str(p.relative_to(root)): t for p, t in written.items()}


def test_a_new_field_reaches_every_file(tiny):
    _, files = tiny
    names = ["target", "dry-run", "connect-retries", "database-url", "github-token"]
    names += ["environment", "report-file"]
    for rel in ("action.yml", "python/action.yml"):
        action = yaml.safe_load(files[rel])
        assert list(action["inputs"]) == names
        assert action["inputs"]["connect-retries"]["default"] == "5"
        assert action["inputs"]["dry-run"]["default"] == "false"
        assert list(action["outputs"]) == ["status", "plan-sql"]
    composite = yaml.safe_load(files["python/action.yml"])
    assert composite["outputs"]["plan-sql"]["value"] == "${{ steps.deploy.outputs.plan-sql }}"
    assert "value" not in yaml.safe_load(files["action.yml"])["outputs"]["status"]

    wf = _workflow(files[".github/workflows/db-deploy-reusable.yml"])
    call = wf["on"]["workflow_call"]
    assert call["inputs"]["dry-run"] == {
        "description": "Report what would be applied; change nothing.",
        "type": "boolean",
        "default": False,
    }
    assert call["inputs"]["connect-retries"]["type"] == "number"
    assert call["inputs"]["connect-retries"]["default"] == 5
    assert set(call["inputs"]) == {
        *("target", "dry-run", "connect-retries", "environment", "report-file"),
        *("runs-on", "timeout-minutes"),
    }
    assert call["inputs"]["environment"]["default"] == "production"
    assert call["secrets"] == {
        "DATABASE_URL": {
            "description": "PostgreSQL connection URL. Pass it from a secret.",
            "required": True,
        }
    }
    step = next(s for s in wf["jobs"]["deploy"]["steps"] if s.get("id") == "deploy")
    assert step["with"] == {
        "target": "${{ inputs.target }}",
        "dry-run": "${{ inputs.dry-run }}",
        "connect-retries": "${{ inputs.connect-retries }}",
        "database-url": "${{ secrets.DATABASE_URL }}",
        "github-token": "${{ github.token }}",
        "environment": "${{ inputs.environment }}",
        "report-file": "${{ inputs.report-file }}",
    }
    assert wf["jobs"]["deploy"]["outputs"]["status"] == "${{ steps.deploy.outputs.status }}"
    assert call["outputs"]["plan-sql"]["value"] == "${{ jobs.deploy.outputs.plan-sql }}"

    readme = files["README.md"]
    assert (
        "| `connect-retries` | `DB_DEPLOY_CONNECT_RETRIES` | `5` | Connection attempts |" in readme
    )
    assert "| `status` |" in readme and "| `plan-sql` |" not in readme  # a plan output: docs
    docs = files["docs/inputs.md"]
    assert "| `--summary-file` | also write the markdown summary to this file |" in docs
    assert "| `plan-sql` | `plan` | plan: the SQL of the pending revisions. |" in docs


def test_a_reserved_name_is_mapped_not_declared(tiny):
    """`workflow_call` refuses a secret named GITHUB_TOKEN (the runner reserves GITHUB_*): the
    token comes from the `github` context, and the caller passes nothing for it."""
    _, files = tiny
    text = files[".github/workflows/db-deploy-reusable.yml"]
    call = _workflow(text)["on"]["workflow_call"]
    assert "GITHUB_TOKEN" not in call["secrets"] and "github-token" not in call["inputs"]
    assert "secrets.GITHUB_TOKEN" not in text


def test_the_generated_synthetic_files_pass_the_validators(tiny):
    root, _ = tiny
    bin_dir = Path(sys.executable).parent
    check = subprocess.run(
        [
            str(bin_dir / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-actions",
            "action.yml",
            "python/action.yml",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (root / ".git").mkdir()
    lint = subprocess.run(
        [str(bin_dir / "actionlint"), "-no-color", ".github/workflows/db-deploy-reusable.yml"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_only_the_generated_blocks_change(tiny):
    """Everything outside the inputs/outputs mappings, the workflow's generated blocks and the
    README's markers is kept line for line (another part of the repository owns it)."""
    _, files = tiny
    for rel in ("action.yml", "python/action.yml"):
        before, after = yaml.safe_load((REPO / rel).read_text()), yaml.safe_load(files[rel])
        for key in set(before) - {"inputs", "outputs"}:
            assert after[key] == before[key], (rel, key)
        head = (REPO / rel).read_text().split("\ninputs:")[0]
        assert files[rel].startswith(head)
    before = _workflow((REPO / ".github/workflows/db-deploy-reusable.yml").read_text())
    after = _workflow(files[".github/workflows/db-deploy-reusable.yml"])
    assert set(after) == set(before)
    for key in set(before) - {"on", "jobs"}:
        assert after[key] == before[key], key
    job_before, job_after = before["jobs"]["deploy"], after["jobs"]["deploy"]
    for key in set(job_before) - {"outputs", "steps"}:
        assert job_after[key] == job_before[key], key
    for old, new in zip(job_before["steps"], job_after["steps"], strict=True):
        if old.get("id") == "deploy":
            old, new = {**old, "with": None}, {**new, "with": None}
        assert new == old
    readme_before = (REPO / "README.md").read_text()
    outside = readme_before.split("<!-- BEGIN GENERATED: inputs -->")[0]
    assert files["README.md"].startswith(outside)
    tail = readme_before.split("<!-- END GENERATED: outputs -->")[1]
    assert files["README.md"].endswith(tail)


def test_the_real_settings_map_every_secret_to_a_workflow_secret():
    inputs = generator.inputs_of(Settings)
    secrets = {i.name: i.secret_name for i in inputs if i.secret}
    assert secrets == {
        "database-url": "DATABASE_URL",
        "direct-database-url": "DIRECT_DATABASE_URL",
        "slack-webhook-url": "SLACK_WEBHOOK_URL",
        "scratch-database-url": "SCRATCH_DATABASE_URL",
        "github-token": "GITHUB_TOKEN",  # never a workflow secret: fed from github.token
    }
    assert not any(
        name.startswith("GITHUB_")
        for input_name, name in secrets.items()
        if input_name != "github-token"
    )


def test_a_layout_the_generator_does_not_know_is_refused(tmp_path: Path):
    root = _copy(tmp_path)
    wf = root / ".github/workflows/db-deploy-reusable.yml"
    wf.write_text(wf.read_text().replace("id: deploy", "id: apply"))
    with pytest.raises(generator.LayoutError, match="id: deploy"):
        generator.generate(root=root)
