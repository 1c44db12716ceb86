from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Creating a store runs MLflow's migrations (seconds); each test gets a copy of one migrated file.
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(tmp_path: Path, empty_db: Path) -> MlflowClient:
    """A real MLflow SQLite store (tracking and Model Registry) of this test's own."""
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
