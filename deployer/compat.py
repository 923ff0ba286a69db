"""The versions of Alembic and SQLAlchemy db-deploy supports, in one place, checked at start.

Your env.py, models and revisions run with the Alembic and SQLAlchemy your environment holds
(in the composite action, your application's own: docs/python-action.md), so the deployer has
to work with a range of them, not only the versions in requirements.lock. The range:

- SQLAlchemy >=2.0,<3: the 2.0 API (`Connection.commit`, `exec_driver_sql`, the psycopg 3
  dialect `postgresql+psycopg`); 3.0 is a new major whose changes nobody has tested here.
- Alembic >=1.13,<2: `ScriptDirectory._upgrade_revs` and `MigrationContext.
  on_version_apply_callbacks` as the deployer uses them, tested at 1.13; 2.0 is a new major.

The floors are those of pyproject.toml; tests/test_python_action.py deploys with the floors
(an application pinning them) and tests/test_compat.py refuses versions outside the ranges.
Only the distributions' metadata is read (`importlib.metadata`): nothing is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from deployer.errors import ConfigError


@dataclass(frozen=True)
class Supported:
    """A distribution and its supported versions: at least `floor`, below `ceiling`."""

    name: str
    floor: tuple[int, ...]
    ceiling: tuple[int, ...]

    @property
    def range(self) -> str:
        return f">={_dotted(self.floor)},<{_dotted(self.ceiling)}"

    def accepts(self, version: str) -> bool:
        release = release_tuple(version)
        return release is not None and self.floor <= release < self.ceiling


SUPPORTED = (
    Supported("SQLAlchemy", floor=(2, 0), ceiling=(3,)),
    Supported("alembic", floor=(1, 13), ceiling=(2,)),
)


def release_tuple(version: str) -> tuple[int, ...] | None:
    """`2.0.36` → (2, 0, 36); a pre-release or local part is ignored (`2.1.0b1` → (2, 1, 0));
    None when the version does not start with a number."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in release)


def problems() -> list[str]:
    """One line per supported distribution missing or outside its range (empty: all good)."""
    out = []
    for spec in SUPPORTED:
        try:
            dist = metadata.distribution(spec.name)
        except metadata.PackageNotFoundError:
            out.append(f"{spec.name} is not installed: db-deploy needs {spec.name} {spec.range}")
            continue
        version = dist.version
        if not spec.accepts(version):
            where = dist.locate_file("")
            out.append(
                f"{spec.name} {version} is not supported: db-deploy needs {spec.name} "
                f"{spec.range} (installed in {where})"
            )
    return out


def check_versions() -> None:
    """Raise ConfigError (exit 2) with one line when Alembic or SQLAlchemy is missing or
    outside its supported range; the first such line when both are."""
    found = problems()
    if found:
        raise ConfigError(found[0])
