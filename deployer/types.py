"""Value types parsed from the inputs and read by the steps: the bottom layer, so that settings
(which parses them) and the steps (which check them) both import them from here. No I/O but
`give_to_owner` (what we write in the workspace goes to the workspace's owner)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def version_tuple(v: str) -> tuple[int, ...]:
    """`0.8.1` → (0, 8, 1); the digits of each part, 0 for a part without any (`1.2beta` → (1, 2))."""
    parts = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def give_to_owner(path: Path, workspace: Path | None) -> None:
    """Running as root (a container action: root inside, the workspace owned by the runner's
    user on the host), `path` and the folders between it and `workspace` go to the workspace
    folder's owner (uid and gid), so that later steps (upload-artifact) can read them and the
    runner can clean them. Modes are kept (a dump stays 0600). Outside the workspace, or not
    root, or a workspace owned by root: nothing to do. Best effort: never fails the run."""
    if workspace is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        root = workspace.resolve()
        st = root.stat()
        if st.st_uid == 0 and st.st_gid == 0:
            return
        full = path.absolute()
        rel = full.parent.resolve().relative_to(root)
    except (OSError, ValueError):
        return
    chain = [full]
    parent = root
    for part in rel.parts:
        parent = parent / part
        chain.append(parent)
    for item in chain:
        try:
            if item.exists() or item.is_symlink():
                os.chown(item, st.st_uid, st.st_gid, follow_symlinks=False)
        except OSError:
            pass
