"""`make bench-record` on the tiny model: one real grid trial, its curve and CPU cost, and a resumed trial
charged for the process that trained up to its checkpoint too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import record

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"method": "lora", "rank": 4, "alpha": 8, "target_modules": "attention", "learning_rate": 1e-3}


@pytest.fixture
def tiny_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recorder's trial settings from the smoke config (the tiny model), its work folder in tmp_path."""
    trial = yaml.safe_load((REPO / "sweeps" / "configs" / "smoke.yaml").read_text())["trial"]
    monkeypatch.setattr(record, "trial_settings", lambda: {**trial, "cache_dir": str(REPO / ".cache" / "models")})
    monkeypatch.setattr(record, "WORK", tmp_path / "bench-record")
    monkeypatch.setenv("SWEEPBOARD_CACHE", str(REPO / ".cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_a_resumed_trial_is_charged_for_the_cpu_time_before_its_checkpoint(
    tiny_trial: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each trial runs in a process of its own, whose CPU clock starts at zero; here both run in this one, so
    # each gets a clock of its own: the first starts at 1000 s (a long trial), the resumed one at 0.
    real = record._cpu_seconds
    offset = {"value": 0.0}
    monkeypatch.setattr(record, "_cpu_seconds", lambda: real() + offset["value"])

    result = tiny_trial / "record.json"
    offset["value"] = 1000.0 - real()
    record.run_one(CONFIG, result)
    first = json.loads(result.read_text())
    assert [p["step"] for p in first["curve"]] == [2, 4, 6]
    seconds = [p["cpu_seconds"] for p in first["curve"]]
    assert 1000 < seconds[0] <= seconds[1] <= seconds[2] < first["final"]["cpu_seconds"]
    assert 0 <= first["final"]["test_quality"] <= 1

    # Run again: it resumes from the step-6 checkpoint, trains nothing and evaluates; its cost must still
    # include the first process's training, as a trial killed and resumed from its checkpoint is.
    result.unlink()
    offset["value"] = -real()
    record.run_one(CONFIG, result)
    own = real() + offset["value"]  # this process's CPU time
    again = json.loads(result.read_text())
    assert [p["step"] for p in again["curve"]] == [2, 4, 6]
    assert again["final"]["cpu_seconds"] == pytest.approx(seconds[-1] + own, abs=0.5)
    assert again["final"]["cpu_cost_usd"] == pytest.approx(
        again["final"]["cpu_seconds"] * again["final"]["usd_per_hour"] / 3600)
