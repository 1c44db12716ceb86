"""Fixtures shared by the sweep tests: a tracking server (on SQLite, or on PostgreSQL), and a Ray for the
tests that run Ray itself."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from pg_cluster import Postgres, running_postgres

HERE = Path(__file__).resolve().parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.kill(signal.SIGTERM)


@pytest.fixture
def mlflow_server(server: MlflowServer) -> str:
    return server.uri


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster for one test module (skipped where there is none, failed so in CI)."""
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres,
                    request: pytest.FixtureRequest) -> Iterator[MlflowServer]:  # fmt: skip
    """`mlflow server` on a database and user of this module's own, the artifacts proxied by the server; two
    worker processes, so requests really overlap in the database. One per module: a start takes 20-30 s."""
    name = re.sub(r"[^a-z0-9_]", "_", f"mlflow_{request.module.__name__}".lower())[:60]  # a plain SQL name
    backend_uri = postgres.create_database(name, user=name, password=f"pw-{name}")
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-postgres"), backend_uri, workers=2)
    running.start()
    try:
        yield running
    finally:
        running.kill()  # SIGKILL: the database keeps what was committed, and it is thrown away next


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A Ray of 2 CPUs for one test module. Workers import the test helpers by module name to unpickle a
    trainable, and this checkout's packages, hence the repo and this folder on their path."""
    import ray

    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    path = f"{HERE.parents[1]}:{HERE}"
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
