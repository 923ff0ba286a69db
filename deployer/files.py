"""Files the run writes in the workspace (the JSON report, the summary and outputs files, a
fleet's records and logs, a backup and its checksum): `give_to_owner` hands them to the
workspace's owner. In the bottom layer of the import contract, beside the plain types, for
those who write such files sit in different layers: a step (backup), a fleet run and the
publishing of a record."""

from __future__ import annotations

import os
from pathlib import Path


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
