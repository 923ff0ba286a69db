"""Fixtures of the application suite (`make apps-test`; skipped elsewhere unless
DB_DEPLOY_APPS_TESTS=1): the contrib-enabled cluster, the action's checkout, one RUNNER_TEMP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.harness import debian_cluster
from tests.helpers import REPO
from tests.helpers.pgcluster import PgCluster
from tests.test_python_action import ACTION_FILES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "apps: real applications from PyPI (make apps-test, DB_DEPLOY_APPS_TESTS=1)"
    )


@pytest.fixture(scope="session")
def contrib_cluster() -> Iterator[PgCluster]:
    """Debian's PostgreSQL with contrib (pg_trgm & co.), password authentication, one session."""
    cluster = debian_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def action_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`uses: <owner>/db-deploy-action/python@v1` as the runner checks it out: a snapshot of the
    files the composite needs, apart from the workspace. Returns its python/action.yml.
    DB_DEPLOY_APPS_ACTION_ROOT: another checkout to take them from (say, `git archive HEAD`)."""
    origin = Path(os.environ.get("DB_DEPLOY_APPS_ACTION_ROOT") or REPO)
    root = tmp_path_factory.mktemp("_actions") / "acme" / "db-deploy-action" / "v1"
    for name in ACTION_FILES:
        source = origin / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root / "python" / "action.yml"


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TEMP of one job: the steps of the suite share the deployer's environment."""
    return tmp_path_factory.mktemp("runner_temp")
