"""The learning rate first in a whole sweep through the CLI: real Ray Tune, real MLflow (SQLite), the tiny
model. The sweep starts from the production default, runs each method group's prior rate (from the tiny
model's width and the trial's steps), then the adapters' next rung; ASHA may stop rungs, but each group's
leader is kept, so the method decision has a finished run of each group to compare."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_sweep_e2e import children, runs_of, smoke_config, sweepboard

from search_spaces.rates import RateRange, same_rate
from sweeps import config as sweep_config
from sweeps.tune_run import rate_priors
from tracking import names

pytestmark = pytest.mark.slow

SPACE = """
description: LoRA and full fine-tuning on the tiny model; the adapters' family fixed but for the rate.
method: {type: categorical, choices: [lora, full]}
methods:
  lora:
    rank: {type: fixed, value: 8}
    alpha: {type: fixed, value: 16}
    target_modules: {type: fixed, value: attention}
    lora_dropout: {type: fixed, value: 0.05}
    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  full:
    learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
default: {method: lora, rank: 8, alpha: 16, target_modules: attention, lora_dropout: 0.05, learning_rate: 1.0e-3}
"""
STEPS = 4


def test_a_sweep_runs_the_ladder_and_ends_with_a_finished_run_of_each_group(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    data = {
        "source": "builtin:dates",
        "n_examples": 300,
        "test_size": 40,
        "val_size": 20,
        "metric": "token_f1",
    }
    # ASHA at reduction factor 2 from the first report (step 2): half the rungs may be stopped there.
    cfg = smoke_config(
        tmp_path,
        "ladder",
        space=str(space),
        max_trials=4,
        concurrency=1,
        baseline=False,
        grace_period=1,
        reduction_factor=2,
        trial={"steps": STEPS, "eval_every": 2, "data": data},
    )
    priors = rate_priors(sweep_config.load(str(cfg)), STEPS)  # the tiny model's width, 4 steps
    adapter_prior = min(
        RateRange(1e-4, 1e-2).ladder(priors.adapter), key=lambda r: abs(math.log(r / priors.adapter))
    )
    full_prior = min(RateRange(1e-4, 3e-3).ladder(priors.full), key=lambda r: abs(math.log(r / priors.full)))
    assert adapter_prior == 1e-2 and 1e-4 < full_prior < 3e-3  # the adapters' prior clamps to the range's top

    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join(done.stdout.split())  # the console wraps long lines
    assert f"learning-rate priors for builtin:tiny at {STEPS} steps" in text
    assert "max_trials 4 cannot hold them" in text and "raise TRIALS to 8" in text  # the evidence note
    kept = [line for line in done.stdout.splitlines() if line.startswith("search: kept trial")]

    trials = sorted(
        (r for r in children(runs_of(tmp_path, "ladder")) if r.data.tags[names.TAG_ROLE] == "trial"),
        key=lambda r: r.info.start_time,
    )
    order = [(r.data.tags[names.TAG_METHOD], float(r.data.params["learning_rate"])) for r in trials]
    assert len(order) == 4, order
    # The production default, the adapters' prior on its family, full fine-tuning's prior ...
    assert order[0] == ("lora", 1e-3) and order[1] == ("lora", adapter_prior), order
    assert order[2][0] == "full" and same_rate(order[2][1], full_prior), order
    # ... then a rung of the adapters' ladder between or beside them (1e-3 and 1e-2 are 10x apart).
    assert order[3][0] == "lora" and any(same_rate(order[3][1], r) for r in (3.7e-4, 3.33e-3)), order
    adapter_rates = {rate for method, rate in order if method == "lora"}
    assert len(adapter_rates) == 3  # distinct rungs, none trained twice
    assert all(r.data.params.get("rank") == "8" for r in trials if r.data.tags[names.TAG_METHOD] == "lora")

    finished = [
        r for r in trials if r.data.tags[names.TAG_STATUS] == "finished" and "test_quality" in r.data.metrics
    ]
    methods = {r.data.tags[names.TAG_METHOD] for r in finished}
    assert methods == {"lora", "full"}, ([r.data.tags for r in trials], kept)
    assert all("(lora)" in line or "(full)" in line for line in kept)
