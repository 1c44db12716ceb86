"""Priced toy trials for the budget tests: a simulated clock (STEP_S seconds per step at a given price),
so costs are exact and the checks do not depend on how fast this machine is; they only sleep briefly to
interleave like real ones. Ray's workers import this module by name to unpickle the trainable."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from sweeps.budget import trial_should_stop

STEPS = 10  # training steps of a trial that is not stopped
STEP_S = 10.0  # simulated seconds per step (and for the final evaluation)


def step_cost(usd_per_hour: float) -> float:
    return usd_per_hour * STEP_S / 3600


def space(trial: Any) -> None:
    """Define-by-run, like the project's search space."""
    trial.suggest_float("x", 0.0, 1.0)


def priced_trial(config: dict[str, Any], usd_per_hour: float, sweep: str, obey: bool = True) -> None:
    """Shaped like the real trial wrapper: report, poll the stop signal, evaluate, final report."""
    seconds = 0.0
    for step in range(1, STEPS + 1):
        time.sleep(0.02)
        seconds += STEP_S
        tune.report(metrics(step, seconds, usd_per_hour, config["x"], "train"))
        if obey and trial_should_stop(sweep):
            break
    seconds += STEP_S  # the final test evaluation
    tune.report(metrics(step, seconds, usd_per_hour, config["x"], "final"))


def metrics(step: int, seconds: float, usd_per_hour: float, x: float, phase: str) -> dict[str, Any]:
    return {
        "step": step, "train_loss": 1.0 / step, "val_quality": x * step / STEPS, "tokens_trained": 64 * step,
        "elapsed_seconds": seconds, "cost_usd": seconds * usd_per_hour / 3600, "phase": phase,
    }
