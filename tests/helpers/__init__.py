"""Helpers shared by the tests (fixtures live in tests/conftest.py):

- `postgres`: the embedded server and throwaway databases;
- `projects`: Alembic projects written by tests, plain `alembic upgrade`;
- `runner`: the GitHub runner's environment and file commands, running `db-deploy`;
- `action`: the container action's harness (action.yml read and run as the runner runs it);
- `risk`: the risk review against a live database (`review_live`).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.postgres import Database, EmbeddedServer, create_database, drop_database
from tests.helpers.projects import (
    AlembicProject,
    alembic_upgrade,
    app_url_env,
    write_alembic_project,
)
from tests.helpers.runner import (
    FileCommandError,
    GitHubRunner,
    Run,
    clean_env,
    is_deployer_setting,
    new_runner,
    parse_env_file,
    run_cli,
    start_deploy,
    version_number,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "REPO",
    "AlembicProject",
    "Database",
    "EmbeddedServer",
    "FileCommandError",
    "GitHubRunner",
    "Run",
    "alembic_upgrade",
    "app_url_env",
    "clean_env",
    "create_database",
    "drop_database",
    "is_deployer_setting",
    "new_runner",
    "parse_env_file",
    "run_cli",
    "start_deploy",
    "version_number",
    "wait_for",
    "write_alembic_project",
]
