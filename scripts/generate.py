"""Write the interface from its one source: `make generate` (or `python scripts/generate.py`).

The inputs are the fields of deployer.settings.Settings (name, default, description, SecretStr
for a secret, the plain environment variable, action input or command-line only); the outputs
are deployer.interface.OUTPUTS. From them this writes:

- action.yml and python/action.yml: their `inputs:` and `outputs:` mappings only (the composite's
  outputs are `${{ steps.deploy.outputs.<name> }}`); every other line stays as it is;
- .github/workflows/db-deploy-reusable.yml: `on.workflow_call` inputs, secrets and outputs, the
  job's outputs and the `with:` of the step `id: deploy`; secrets (SecretStr fields) become
  workflow secrets passed as `${{ secrets.NAME }}`; a field whose `workflow.value` is set (a name
  the runner reserves, e.g. a `github-token` fed from `${{ github.token }}`) is neither an input
  nor a secret there, only that expression;
- README.md between `<!-- BEGIN GENERATED: inputs|outputs -->` and `<!-- END GENERATED: … -->`
  (a compact table) and docs/inputs.md (the whole reference).

`--check` writes nothing and exits 1 naming the files that differ (tests/test_interface.py runs
the same comparison).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, SecretStr

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployer.interface import OUTPUTS, RUN_OUTPUTS, Output  # noqa: E402

WIDTH = 100
STEP_ID = "deploy"  # the step that runs db-deploy, in python/action.yml and the workflow
JOB_ID = "deploy"  # the reusable workflow's job

# Inputs of the reusable workflow alone (the job's, not the deployer's).
WORKFLOW_ONLY_INPUTS: dict[str, dict[str, Any]] = {
    "runs-on": {
        "description": "Runner label (a Linux runner with Docker: container actions need one).",
        "type": "string",
        "default": "ubuntu-24.04",
    },
    "timeout-minutes": {"description": "Job timeout.", "type": "number", "default": 15},
}

# README's compact table: one row per input of these areas, one row for each other area.
AREAS = {
    "operations": "operations modes: [docs/operations.md](docs/operations.md)",
    "project": "your own Alembic project: [docs/alembic-projects.md](docs/alembic-projects.md)",
    "fleet": "fleets, one deploy to many databases: [docs/fleets.md](docs/fleets.md)",
}


# --------------------------------------------------------------------------- the model, read


@dataclass(frozen=True)
class Input:
    """An action input, as the files declare it."""

    name: str
    description: str
    default: str  # as a user writes it
    kind: str  # the reusable workflow's type: string, boolean or number
    secret: bool
    env: str  # the plain environment variable
    area: str = "deploy"
    workflow: dict[str, Any] = field(default_factory=dict)  # default/description/required/value

    @property
    def secret_name(self) -> str:
        """The reusable workflow's secret: the input's name as a variable (DATABASE_URL)."""
        return re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    @property
    def workflow_value(self) -> str:
        """What the reusable workflow passes to the action for this input."""
        if "value" in self.workflow:
            return str(self.workflow["value"])
        if self.secret:
            return f"${{{{ secrets.{self.secret_name} }}}}"
        return f"${{{{ inputs.{self.name} }}}}"


@dataclass(frozen=True)
class CliFlag:
    """A command-line-only setting."""

    name: str
    description: str


def _aliases(info: Any) -> tuple[str, ...]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(c) for c in alias.choices)
    return (alias,) if isinstance(alias, str) else ()


def _default_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return ", ".join(_default_text(v) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):  # a duration, in seconds
        from deployer.settings import format_duration

        return format_duration(value)
    return str(value)


def _kind(annotation: Any) -> str:
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "number"
    return "string"


def inputs_of(model: type[BaseModel]) -> list[Input]:
    """The action inputs of a settings model: its fields with an `INPUT_` validation alias."""
    found = []
    for name, info in model.model_fields.items():
        aliases = _aliases(info)
        if not any(a.startswith("INPUT_") for a in aliases):
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        workflow = extra.get("workflow") or {}
        assert isinstance(workflow, dict)
        found.append(
            Input(
                name=name.replace("_", "-"),
                description=str(info.description or ""),
                default=_default_text(info.default),
                kind=_kind(info.annotation),
                secret=info.annotation is SecretStr,
                env=next((a for a in aliases if not a.startswith("INPUT_")), ""),
                area=str(extra.get("area", "deploy")),
                workflow=dict(workflow),
            )
        )
    return found


def flags_of(model: type[BaseModel]) -> list[CliFlag]:
    """The command-line-only settings: no alias at all."""
    return [
        CliFlag(name.replace("_", "-"), str(info.description or ""))
        for name, info in model.model_fields.items()
        if not _aliases(info)
    ]


# --------------------------------------------------------------------------- YAML text


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def _text(key: str, text: str, indent: int) -> list[str]:
    """`key: "text"` when it fits the line, else a folded block; both read back as `text`."""
    pad = " " * indent
    one_line = f"{pad}{key}: {_scalar(text)}"
    if len(one_line) <= WIDTH or "\n" in text or "  " in text or text != text.strip():
        return [one_line]
    body = textwrap.wrap(text, WIDTH - indent - 2, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{key}: >-", *(f"{pad}  {line}" for line in body)]


def action_inputs(inputs: Sequence[Input], indent: int = 0) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}inputs:"]
    for i in inputs:
        lines.append(f"{pad}  {i.name}:")
        lines += _text("description", i.description, indent + 4)
        lines.append(f"{pad}    required: false")
        lines.append(f"{pad}    default: {_scalar(i.default)}")
    return lines


def action_outputs(outputs: Sequence[Output], *, composite: bool, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}outputs:"]
    for o in outputs:
        lines.append(f"{pad}  {o.name}:")
        lines += _text("description", o.description, indent + 4)
        if composite:
            lines.append(f"{pad}    value: ${{{{ steps.{STEP_ID}.outputs.{o.name} }}}}")
    return lines


def workflow_inputs(inputs: Sequence[Input], indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}inputs:"]
    declared: list[tuple[str, dict[str, Any]]] = []
    for i in inputs:
        if i.secret or "value" in i.workflow:
            continue
        default: Any = i.workflow.get("default", i.default)
        if i.kind == "boolean":
            default = default == "true"
        elif i.kind == "number":
            default = int(default)
        spec = {
            "description": i.workflow.get("description", i.description),
            "type": i.kind,
            "default": default,
        }
        declared.append((i.name, spec))
    for name, spec in [*declared, *WORKFLOW_ONLY_INPUTS.items()]:
        lines.append(f"{pad}  {name}:")
        lines += _text("description", spec["description"], indent + 4)
        lines.append(f"{pad}    type: {spec['type']}")
        lines.append(f"{pad}    default: {_scalar(spec['default'])}")
    return lines


def workflow_secrets(inputs: Sequence[Input], indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}secrets:"]
    for i in inputs:
        if not i.secret or "value" in i.workflow:
            continue
        lines.append(f"{pad}  {i.secret_name}:")
        lines += _text("description", i.workflow.get("description", i.description), indent + 4)
        lines.append(f"{pad}    required: {_scalar(bool(i.workflow.get('required', False)))}")
    return lines


def workflow_outputs(outputs: Sequence[Output], indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}outputs:"]
    for o in outputs:
        lines.append(f"{pad}  {o.name}:")
        lines += _text("description", o.description, indent + 4)
        lines.append(f"{pad}    value: ${{{{ jobs.{JOB_ID}.outputs.{o.name} }}}}")
    return lines


def job_outputs(outputs: Sequence[Output], indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}outputs:"] + [
        f"{pad}  {o.name}: ${{{{ steps.{STEP_ID}.outputs.{o.name} }}}}" for o in outputs
    ]


def step_with(inputs: Sequence[Input], indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}with:"] + [f"{pad}  {i.name}: {i.workflow_value}" for i in inputs]


# --------------------------------------------------------------------------- blocks in a file


class LayoutError(Exception):
    """The file does not have the shape the generator rewrites."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _end_of(lines: list[str], start: int, hi: int) -> int:
    """The end (exclusive) of the block whose key is on line `start`: the first content line
    indented no deeper than the key, trailing blank lines left out."""
    indent = _indent(lines[start])
    end = start + 1
    while end < hi and not (_content(lines[end]) and _indent(lines[end]) <= indent):
        end += 1
    while end - 1 > start and not lines[end - 1].strip():
        end -= 1
    return end


def _find_key(lines: list[str], key: str, lo: int, hi: int, indent: int) -> int:
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:\s*(#.*)?$")
    for i in range(lo, hi):
        if pattern.match(lines[i]):
            return i
    raise LayoutError(f"no `{key}:` at indent {indent}")


def _child_indent(lines: list[str], start: int, end: int) -> int:
    for i in range(start + 1, end):
        if _content(lines[i]):
            return _indent(lines[i])
    raise LayoutError(f"`{lines[start].strip()}` is empty")


def find_block(lines: list[str], path: Sequence[str]) -> tuple[int, int, int]:
    """(key line, end, indent) of the block at `path`: keys from the top level, where `-id=X`
    steps into the list item whose `id:` is X."""
    lo, hi, indent = 0, len(lines), 0
    start = -1
    for depth, key in enumerate(path):
        if key.startswith("-id="):
            start = _find_item(lines, key[4:], lo, hi, indent)
            lo, hi, indent = start, _end_of(lines, start, hi), indent + 2
            continue
        start = _find_key(lines, key, lo, hi, indent)
        lo, hi = start + 1, _end_of(lines, start, hi)
        if depth < len(path) - 1:
            indent = _child_indent(lines, start, hi)
    return start, hi, indent


def _find_item(lines: list[str], item_id: str, lo: int, hi: int, indent: int) -> int:
    for i in range(lo, hi):
        if lines[i].startswith(" " * indent + "- "):
            end = _end_of(lines, i, hi)
            keys = [lines[i][indent + 2 :], *(ln[indent + 2 :] for ln in lines[i + 1 : end])]
            if any(re.fullmatch(rf"id:\s*{re.escape(item_id)}\s*", k) for k in keys):
                return i
    raise LayoutError(f"no list item with `id: {item_id}`")


def replace_block(text: str, path: Sequence[str], render: Callable[[int], list[str]]) -> str:
    """`text` with the block at `path` replaced by `render(indent)`; every other line kept."""
    lines = text.split("\n")
    start, end, indent = find_block(lines, path)
    return "\n".join([*lines[:start], *render(indent), *lines[end:]])


# --------------------------------------------------------------------------- the files


def action_file(
    text: str, inputs: Sequence[Input], outputs: Sequence[Output], *, composite: bool
) -> str:
    text = replace_block(text, ["inputs"], lambda n: action_inputs(inputs, n))
    return replace_block(
        text, ["outputs"], lambda n: action_outputs(outputs, composite=composite, indent=n)
    )


def reusable_workflow(text: str, inputs: Sequence[Input], outputs: Sequence[Output]) -> str:
    call = ["on", "workflow_call"]
    text = replace_block(text, [*call, "inputs"], lambda n: workflow_inputs(inputs, n))
    text = replace_block(text, [*call, "secrets"], lambda n: workflow_secrets(inputs, n))
    text = replace_block(text, [*call, "outputs"], lambda n: workflow_outputs(outputs, n))
    text = replace_block(text, ["jobs", JOB_ID, "outputs"], lambda n: job_outputs(outputs, n))
    step = ["jobs", JOB_ID, "steps", f"-id={STEP_ID}", "with"]
    return replace_block(text, step, lambda n: step_with(inputs, n))


def _md(text: str) -> str:
    """A table cell: `|` escaped, `<` outside code spans as an entity (not an HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if k % 2 else p.replace("<", "&lt;") for k, p in enumerate(parts))


def _short(text: str) -> str:
    """README's compact cell: the first sentence, without a closing parenthesis."""
    first = re.split(r"(?<=[.;])\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    return re.sub(r"\s*\([^()]*\)$", "", first)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def readme_inputs(inputs: Sequence[Input]) -> list[str]:
    rows = ["| input | environment | default | meaning |", "| --- | --- | --- | --- |"]
    grouped: dict[str, list[Input]] = {}
    for i in inputs:
        if i.area in AREAS:
            grouped.setdefault(i.area, []).append(i)
            continue
        cells = [_code(i.name), _code(i.env), _code(i.default), _md(_short(i.description))]
        rows.append("| " + " | ".join(cells) + " |")
    for area, members in grouped.items():
        names = ", ".join(_code(i.name) for i in members)
        rows.append(f"| {names} | `DB_DEPLOY_…` | | {AREAS[area]} |")
    return [*rows, "", "Every input with its whole description: [docs/inputs.md](docs/inputs.md)."]


def readme_outputs(outputs: Sequence[Output]) -> list[str]:
    rows = ["| output | meaning |", "| --- | --- |"]
    rows += [f"| {_code(o.name)} | {_md(o.description)} |" for o in outputs if not o.commands]
    return rows


def docs_inputs(
    inputs: Sequence[Input], flags: Sequence[CliFlag], outputs: Sequence[Output]
) -> str:
    lines = [
        "# Inputs and outputs",
        "",
        "<!-- Generated by `make generate` (scripts/generate.py) from deployer/settings.py and",
        "     deployer/interface.py: edit those, not this file. -->",
        "",
        "Every input is an action input, a command-line flag of the same name (`--run-seed true`,",
        "or bare `--run-seed` / `--no-run-seed` for a boolean) and a plain environment variable.",
        "Precedence: flag > action input (`INPUT_DATABASE-URL` as the runner spells it, or",
        "`INPUT_DATABASE_URL`) > environment variable > default; an empty value counts as not",
        "given. Secrets are masked in every output; in the reusable workflow they are `secrets:`.",
        "",
        "## Inputs",
        "",
        "| input | environment | default | secret | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in inputs:
        cells = [
            _code(i.name),
            _code(i.env),
            _code(i.default),
            "yes" if i.secret else "",
            _md(i.description),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Command line only:", "", "| flag | description |", "| --- | --- |"]
    lines += [f"| `--{f.name}` | {_md(f.description)} |" for f in flags]
    lines += ["", "## Outputs", "", "| output | commands | description |", "| --- | --- | --- |"]
    for o in outputs:
        commands = ", ".join(_code(c) for c in o.commands) or "every command"
        lines.append(f"| {_code(o.name)} | {commands} | {_md(o.description)} |")
    return "\n".join(lines) + "\n"


def between_markers(text: str, name: str, body: Iterable[str]) -> str:
    begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise LayoutError(f"one {begin} … {end} pair expected")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return head + begin + "\n" + "\n".join(body) + "\n" + end + tail


# --------------------------------------------------------------------------- all of them


def generate(
    model: type[BaseModel] | None = None,
    outputs: Sequence[Output] = OUTPUTS,
    root: Path = REPO,
) -> dict[Path, str]:
    """path → the text the generator writes there (from the files' current text)."""
    if model is None:
        from deployer.settings import Settings

        model = Settings
    inputs = inputs_of(model)
    run_outputs = [o for o in outputs if o in RUN_OUTPUTS or not o.commands]

    def read(rel: str) -> str:
        return (root / rel).read_text(encoding="utf-8")

    files = {
        "action.yml": action_file(read("action.yml"), inputs, outputs, composite=False),
        "python/action.yml": action_file(
            read("python/action.yml"), inputs, outputs, composite=True
        ),
        ".github/workflows/db-deploy-reusable.yml": reusable_workflow(
            read(".github/workflows/db-deploy-reusable.yml"), inputs, outputs
        ),
        "docs/inputs.md": docs_inputs(inputs, flags_of(model), outputs),
    }
    readme = between_markers(read("README.md"), "inputs", readme_inputs(inputs))
    files["README.md"] = between_markers(readme, "outputs", readme_outputs(run_outputs))
    for rel, text in files.items():
        if rel.endswith(".yml"):
            _check_yaml(rel, text, inputs, outputs)
    return {root / rel: text for rel, text in files.items()}


def _check_yaml(rel: str, text: str, inputs: Sequence[Input], outputs: Sequence[Output]) -> None:
    """What was written reads back as meant (a folded description, a quoted default)."""
    data = yaml.safe_load(text)
    if "workflow_call" not in text:
        assert {k: (v["description"], v["default"]) for k, v in data["inputs"].items()} == {
            i.name: (i.description, i.default) for i in inputs
        }, rel
        assert {k: v["description"] for k, v in data["outputs"].items()} == {
            o.name: o.description for o in outputs
        }, rel
        return
    call = data[True]["workflow_call"] if True in data else data["on"]["workflow_call"]
    step = next(s for s in data["jobs"][JOB_ID]["steps"] if s.get("id") == STEP_ID)
    assert step["with"] == {i.name: i.workflow_value for i in inputs}, rel
    assert set(call["outputs"]) == {o.name for o in outputs}, rel


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(text, encoding="utf-8")
    for rel in stale:
        print(f"{'differs' if args.check else 'wrote'}: {rel}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
