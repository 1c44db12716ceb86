"""Every test gets its own planner calibration file: a sweep's finished trials append to it, and a test must
neither read what other tests' trials measured nor leave its trials in the checkout's .cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calibration.jsonl"
    monkeypatch.setenv("SWEEPBOARD_CALIBRATION", str(path))
    return path
