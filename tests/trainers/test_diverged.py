"""A trial whose training loss runs away stops at its first report (trainers.train.Diverged), on the tiny
model for real, and the rule itself on numbers."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trainers import run_trial
from trainers.train import Diverged, check_divergence

CFG = SimpleNamespace(learning_rate=0.5, method="full")


def test_the_tiny_model_diverges_at_a_huge_rate_and_stops_at_its_first_report(
    tiny_config: dict[str, Any],
) -> None:
    # No warm-up, so the rate is huge from step 2 on; the first report comes at step 4 (the loss averaged
    # over steps 1-4 was 27 against 10.8 at step 1 on CPU: the threshold is 1.5x, 16.2).
    reports: list[dict[str, Any]] = []
    config = {**tiny_config, "method": "full", "learning_rate": 0.99, "warmup_steps": 0, "steps": 8,
              "eval_every": 4}  # fmt: skip
    with pytest.raises(Diverged) as err:
        run_trial(config, report=lambda point, ckpt: reports.append(point))
    assert isinstance(err.value, RuntimeError)
    message = str(err.value)
    assert "over steps to 4" in message and "learning rate 0.99" in message and "method full" in message
    loss, first = (float(x) for x in (message.split("training loss ")[1].split()[0],
                                      message.split("against ")[1].split()[0]))  # fmt: skip
    assert loss > max(1.5 * first, first + 0.5)
    assert reports == []  # stopped before its first validation: nothing was reported
    assert not (Path(tiny_config["out"]) / "metrics.json").exists()


def test_the_same_trial_at_a_sane_rate_does_not_diverge(tiny_config: dict[str, Any]) -> None:
    reports: list[dict[str, Any]] = []
    config = {**tiny_config, "method": "full", "learning_rate": 1e-3, "warmup_steps": 0, "steps": 8,
              "eval_every": 4}  # fmt: skip
    metrics = run_trial(config, report=lambda point, ckpt: reports.append(point))
    assert [r["step"] for r in reports] == [4, 8] and metrics["status"] == "finished"
    assert all(math.isfinite(r["train_loss"]) for r in reports)


@pytest.mark.parametrize(("loss", "first", "diverged"), [
    (10.0, 10.0, False),
    (14.9, 10.0, False),  # within 1.5x of the starting loss
    (15.1, 10.0, True),
    (0.6, 0.2, False),  # a small starting loss: +0.5 nats is the allowance, not 1.5x (0.3)
    (0.71, 0.2, True),
    (math.nan, 10.0, True),
    (math.inf, 10.0, True),
    (2.0, 10.0, False),  # learning is no divergence
])  # fmt: skip
def test_the_divergence_rule(loss: float, first: float, diverged: bool) -> None:
    if diverged:
        with pytest.raises(Diverged, match="lower the learning rate"):
            check_divergence(loss, first, 4, CFG)  # type: ignore[arg-type]
    else:
        check_divergence(loss, first, 4, CFG)  # type: ignore[arg-type]
