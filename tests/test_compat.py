"""The supported ranges of Alembic and SQLAlchemy (deployer/compat.py), checked at start.

A version outside them is refused before anything runs: exit 2, one line naming the version,
the range and where it is installed. The old versions here are real wheels from PyPI, installed
with `pip install --no-deps --target` into a folder put first on PYTHONPATH (what an
application that pins them does to the process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deployer.compat import SUPPORTED, check_versions, problems, release_tuple
from tests.helpers import REPO

SQLALCHEMY, ALEMBIC = SUPPORTED


def test_the_ranges():
    assert [(s.name, s.range) for s in SUPPORTED] == [
        ("SQLAlchemy", ">=2.0,<3"),
        ("alembic", ">=1.13,<2"),
    ]
    assert SQLALCHEMY.accepts("2.0.0") and SQLALCHEMY.accepts("2.1.9")
    assert SQLALCHEMY.accepts("2.1.0b1"), "a pre-release of a supported release"
    assert not SQLALCHEMY.accepts("1.4.54") and not SQLALCHEMY.accepts("3.0.0")
    assert ALEMBIC.accepts("1.13.0") and not ALEMBIC.accepts("1.12.1")
    assert not ALEMBIC.accepts("2.0") and not ALEMBIC.accepts("nonsense")
    assert release_tuple("1.13.0.post1+local") == (1, 13, 0)


def test_the_floors_are_pyprojects_and_the_lock_is_inside_the_ranges():
    """compat.py is the one statement of the ranges; pyproject.toml's floors and the locked
    versions must agree with it."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for dep in deps["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([\d.]+)", dep.split(",")[0])
        if match:
            floors[match.group(1).lower()] = release_tuple(match.group(2))
    lock = (REPO / "requirements.lock").read_text(encoding="utf-8")
    for spec in SUPPORTED:
        assert floors[spec.name.lower()] == spec.floor, spec.name
        locked = re.search(rf"^{spec.name.lower()}==(\S+)", lock, re.M | re.I)
        assert locked and spec.accepts(locked.group(1)), spec.name


def test_the_installed_versions_pass():
    assert problems() == []
    check_versions()


def test_the_ranges_are_stated_in_the_docs():
    for doc in ("docs/python-action.md", "docs/alembic-projects.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        for spec in SUPPORTED:
            name = "Alembic" if spec.name == "alembic" else spec.name
            assert f"{name} {spec.range}" in text, (doc, spec.name)


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory):
    """Real old releases, each in a folder of its own: `old_release("sqlalchemy==1.4.54")`."""
    root = tmp_path_factory.mktemp("old-releases")

    def install(requirement: str) -> Path:
        target = root / requirement.replace("==", "-")
        if not target.exists():
            argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
            argv += ["--no-deps", "--only-binary=:all:", "--target", str(target), requirement]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return target

    return install


def db_deploy(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """`python -m deployer status` as a process of its own, with `pythonpath` first on sys.path;
    outside GitHub Actions. The URL names no server: nothing may be reached."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(REPO)])
    argv = [sys.executable, "-m", "deployer", "status"]
    argv += ["--database-url", "postgresql://deploy@127.0.0.1:9/app"]
    argv += ["--report-file", "db-deploy-report.json"]  # a terminal run writes it when asked
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("SQLAlchemy==1.4.54", "SQLAlchemy 1.4.54 is not supported: db-deploy needs SQLAlchemy >=2.0,<3"),
        ("alembic==1.12.1", "alembic 1.12.1 is not supported: db-deploy needs alembic >=1.13,<2"),
    ],
)  # fmt: skip
def test_a_version_outside_the_range_exits_2_with_one_line(
    old_release, tmp_path: Path, requirement: str, expected: str
):
    folder = old_release(requirement)
    proc = db_deploy(tmp_path, folder)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {expected} (installed in {folder})"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "db-deploy-report.json").read_text(encoding="utf-8"))
    assert report["status"] == "failed" and report["exit_code"] == 2
    assert report["error"] == f"{expected} (installed in {folder})"
