"""Fleets of real databases on the embedded server: one Alembic project, N databases."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import (
    AlembicProject,
    Database,
    EmbeddedServer,
    GitHubRunner,
    Run,
    create_database,
    drop_database,
    parse_env_file,
    write_alembic_project,
)


@dataclass
class FleetRun:
    run: Run
    outputs: dict[str, str]
    summary: str
    report: dict
    folder: Path

    def record(self, name: str) -> dict:
        return json.loads((self.folder / f"{name}.target.json").read_text())

    def status(self, name: str) -> str:
        return str(self.record(name)["status"])


@pytest.fixture
def databases(
    pg_server: EmbeddedServer, admin_engine: sa.Engine
) -> Iterator[Callable[[int], list[Database]]]:
    made: list[Database] = []

    def make(n: int) -> list[Database]:
        new = [create_database(pg_server, admin_engine) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for db in made:
        drop_database(admin_engine, db)


@pytest.fixture
def fleet_project(github: GitHubRunner) -> AlembicProject:
    project = write_alembic_project(github.workspace / "migrations")
    project.add("0001_t", "op.create_table('t', sa.Column('id', sa.Integer))")
    project.add("0002_u", "op.create_table('u', sa.Column('id', sa.Integer))")
    return project


@pytest.fixture
def run_fleet(github: GitHubRunner, run_cli: Callable[..., Run]) -> Callable[..., FleetRun]:
    def run(
        fleet: str, *args: str, command: str = "fleet", env: dict | None = None, **inputs: str
    ) -> FleetRun:
        path = github.workspace / "fleet.yml"
        if fleet:
            path.write_text(fleet)
            inputs.setdefault("fleet-file", "fleet.yml")
        github.output_file.write_text("")
        github.summary_file.write_text("")
        environ = github.with_inputs(command=command, **inputs)
        environ.update(env or {})
        result = run_cli(*args, env=environ, cwd=github.workspace, timeout=300)
        report_path = github.workspace / "db-deploy-report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        return FleetRun(
            run=result,
            outputs=parse_env_file(github.output_file.read_text()),
            summary=github.summary_file.read_text(),
            report=report,
            folder=github.workspace / "db-deploy-fleet",
        )

    return run
