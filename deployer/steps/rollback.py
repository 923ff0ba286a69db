"""Rollback: what a downgrade to `target` would undo, and whether each revision can undo itself.

The downgrade itself is `deployer.steps.migrate.migrate(..., downgrade=True)`, with deploy's
per-revision tracking and report. This module decides before anything runs:
- the target (`-N` steps back from a single current head, a revision, or `base`);
- which revisions the downgrade passes through (Alembic's own plan);
- that each has a real `downgrade()`: read from the revision file's syntax tree, never run. One
  whose body is only `pass`, `...` or a docstring (while its `upgrade()` does something), or that
  raises NotImplementedError, cannot be undone: the rollback is refused before it starts.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.alembic_project import AlembicProject, describe_exception
from deployer.errors import ConfigError

HEAD_TARGETS = {"head", "heads"}
_RELATIVE = re.compile(r"^-(\d+)$")


@dataclass
class Irreversible:
    revision: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.revision} ({Path(self.path).name}): {self.reason}"


def resolve(project: AlembicProject, target: str, heads: list[str]) -> str:
    """The absolute target of a rollback. `-N`: N revisions below the single current head."""
    target = target.strip()
    if target in HEAD_TARGETS:
        raise ConfigError(
            "rollback needs a target: set target to the revision to return to "
            "(a revision id, -1 for one revision back, or base)"
        )
    m = _RELATIVE.match(target)
    if not m:
        return target
    steps = int(m.group(1))
    if steps < 1:
        raise ConfigError(f"invalid rollback target {target!r}: use -1 or more")
    if len(heads) != 1:
        raise ConfigError(
            f"rollback target {target!r} is relative, but the database is at "
            f"{', '.join(heads) or 'base'}: name the revision to return to"
        )
    chain = [sc.revision for sc in project.script.iterate_revisions(heads[0], "base")]
    if steps >= len(chain):
        return "base"
    below = project.script.get_revision(chain[steps])
    if below is None:  # pragma: no cover - iterate_revisions only yields known revisions
        return "base"
    return below.revision


def plan(project: AlembicProject, target: str, heads: list[str]) -> list[str]:
    """Revisions a downgrade from `heads` to `target` undoes, in the order it undoes them."""
    current: Any = tuple(heads)  # alembic accepts a tuple of heads; its stubs say str
    try:
        steps = project.script._downgrade_revs(target, current)
    except Exception as exc:  # noqa: BLE001 - alembic raises several kinds here
        raise ConfigError(
            f"cannot plan the downgrade from {', '.join(heads) or 'base'} to {target!r}: "
            f"{describe_exception(exc)}"
        ) from None
    return [s.revision.revision for s in steps]


def _is_empty(body: list[ast.stmt]) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.Pass):
            continue
        if (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and (isinstance(stmt.value.value, str) or stmt.value.value is Ellipsis)
        ):
            continue
        return False
    return True


def _raises_not_implemented(body: list[ast.stmt]) -> bool:
    """A `raise NotImplementedError[(...)]` among the function's own statements (not inside an
    `if`: a conditional refusal is a decision of the revision's author)."""
    for stmt in body:
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def irreversible(path: Path) -> str:
    """Why the revision file at `path` cannot be downgraded, or "" when it can."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot read its source: {describe_exception(exc)}"
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    down = functions.get("downgrade")
    if down is None:
        assigned = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "downgrade" for t in node.targets)
            for node in tree.body
        )
        return "" if assigned else "it has no downgrade() function"
    if _raises_not_implemented(down.body):
        return "its downgrade() raises NotImplementedError"
    if _is_empty(down.body):
        up = functions.get("upgrade")
        if up is not None and _is_empty(up.body):
            return ""  # a revision that changes nothing (a merge point): nothing to undo
        return "its downgrade() is empty (pass): the changes of its upgrade() would stay"
    return ""


def check_reversible(project: AlembicProject, revisions: list[str]) -> list[Irreversible]:
    out: list[Irreversible] = []
    for rev in revisions:
        sc = project.revision(rev)
        reason = irreversible(Path(sc.path))
        if reason:
            out.append(Irreversible(revision=rev, path=str(sc.path), reason=reason))
    return out
