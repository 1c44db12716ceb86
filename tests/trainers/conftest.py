from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO / ".cache" / "models"  # shared with `make sweep`; built once, reused by every run


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict[str, Any]:
    """A trial on the 2-layer tiny Llama: real PEFT, real bitsandbytes, real steps, seconds each."""
    return {
        "model": "builtin:tiny",
        "cache_dir": str(MODEL_CACHE),
        "steps": 4,
        "eval_every": 2,
        "batch_size": 4,
        "max_new_tokens": 12,
        "learning_rate": 1e-3,
        "out": str(tmp_path / "out"),
        "data": {"n_examples": 260, "test_size": 40, "val_size": 20, "lock_dir": str(tmp_path / "lock")},
    }
