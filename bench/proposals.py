"""The proposed performance changes to deployer/, as exact edits applied to a copy.

`python -m bench --candidate proposals` copies the installed deployer package into the work
folder, applies every edit below (each anchored on the current text: a missing anchor is
reported, not guessed) and measures that copy interleaved with the installed one. The diff
is written next to the results (bench/results/proposals.diff) for review; nothing under
deployer/ is touched here.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.proc import REPO


@dataclass(frozen=True)
class Edit:
    proposal: str
    path: str  # inside deployer/
    old: str
    new: str
    unless: str = ""  # skip when the file already contains this (e.g. an import)


EDITS: list[Edit] = [
    # Empty: every proposal measured so far is applied in deployer/ or set aside, with its
    # reason, in bench/README.md ("What changed because of it"). Add the next one here as an
    # Edit(proposal, path, old, new) and run `make bench BENCH_ARGS="--candidate proposals"`.
]


def build(dest: Path, source: Path = REPO / "deployer") -> tuple[Path, list[str], str]:
    """Copy `source` to dest/deployer and apply EDITS. Returns (folder for PYTHONPATH,
    problems, unified diff)."""
    target = dest / "deployer"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    problems: list[str] = []
    touched: dict[str, str] = {}
    for edit in EDITS:
        path = target / edit.path
        text = path.read_text()
        touched.setdefault(edit.path, text)
        if edit.unless and edit.unless in text:
            continue
        if text.count(edit.old) != 1:
            problems.append(f"{edit.proposal}: anchor not found once in deployer/{edit.path}")
            continue
        path.write_text(text.replace(edit.old, edit.new))
    diff = "".join(
        "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                (target / rel).read_text().splitlines(keepends=True),
                fromfile=f"a/deployer/{rel}",
                tofile=f"b/deployer/{rel}",
            )
        )
        for rel, before in touched.items()
    )
    return dest, problems, diff
