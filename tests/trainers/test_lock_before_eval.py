"""The locked test set is checked right before the final evaluation, not only when the trial prepares its
data: a test file changed while the trial trains (after `prepare` read and verified it) stops the trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainers import run_trial
from trainers.data import LockMismatchError


def test_lock_changed_during_training_stops_the_final_evaluation(tiny_config: dict[str, Any]) -> None:
    test_file = Path(tiny_config["data"]["lock_dir"]) / "test.jsonl"
    seen: list[int] = []

    def tamper_once(metrics: dict[str, Any], _ckpt: str | None) -> None:
        if not seen:  # the first validation report: data prepared and verified, training under way
            first, rest = test_file.read_text().split("\n", 1)
            row = json.loads(first)
            row["completion"] = "1999-01-01"  # someone "fixes" an answer in the locked set mid-sweep
            test_file.write_text(json.dumps(row) + "\n" + rest)
        seen.append(metrics["step"])

    with pytest.raises(LockMismatchError, match="changed: sha256 is [0-9a-f]{64}, the lock says [0-9a-f]{64}"):
        run_trial({**tiny_config, "method": "lora"}, report=tamper_once)
    assert seen == [2, 4]  # training ran to its end: the check before evaluation refused, not data preparation
    out = Path(tiny_config["out"])
    assert not (out / "test_predictions.jsonl").exists() and not (out / "metrics.json").exists()
