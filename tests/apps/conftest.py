"""Fixtures of the application suite (`make apps-test`; skipped elsewhere unless
DB_DEPLOY_APPS_TESTS=1): the contrib-enabled cluster, the action's checkout, one RUNNER_TEMP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.harness import debian_cluster
from tests.helpers import REPO
from tests.helpers.action import checkout_composite
from tests.helpers.pgcluster import PgCluster


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
    return checkout_composite(tmp_path_factory.mktemp("_actions"), origin)


@pytest.fixture(scope="session")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TEMP of one job: the steps of the suite share the deployer's environment."""
    return tmp_path_factory.mktemp("runner_temp")
