"""Fixtures shared by the sweep tests that need a tracking server."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer


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
