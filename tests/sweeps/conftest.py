"""Fixtures shared by the sweep tests: a tracking server, and a Ray for the tests that run Ray itself."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

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
