"""The method floors in a whole sweep through the CLI: real Ray Tune, real MLflow (SQLite), the tiny model.

The space makes ASHA want to prune every adapter trial: full fine-tuning (the space's first point) learns,
the adapters train at learning rates too small to move the model, so at the first rung each one scores
below the cutoff. The sweep must still end with min_adapter_configs completed adapter configurations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweep_e2e import children, runs_of, smoke_config, sweepboard

from tracking import names

pytestmark = pytest.mark.slow

ADAPTER = """
    rank: {type: categorical, choices: [4, 8]}
    alpha_ratio: {type: fixed, value: 2}
    target_modules: {type: fixed, value: attention}
    lora_dropout: {type: fixed, value: 0.05}
    learning_rate: {type: float, low: 1.0e-7, high: 1.0e-6, log: true}
"""
SPACE = f"""
description: Full fine-tuning that learns and adapters that cannot (learning rates of 1e-7 to 1e-6).
method: {{type: categorical, choices: [lora, qlora, full]}}
methods:
  lora:{ADAPTER}
  qlora:{ADAPTER}
  full:
    learning_rate: {{type: float, low: 2.0e-3, high: 4.0e-3, log: true}}
default: {{method: full, learning_rate: 3.0e-3}}
"""


def test_a_sweep_keeps_the_adapter_trials_asha_would_stop(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    data = {"source": "builtin:dates", "n_examples": 300, "test_size": 40, "val_size": 20, "metric": "token_f1"}
    # ASHA at reduction factor 4: a trial below the top quarter at the first report (step 2) is stopped.
    cfg = smoke_config(tmp_path, "floors", space=str(space), max_trials=4, concurrency=1, baseline=False,
                       grace_period=1, reduction_factor=4, min_adapter_configs=3,
                       trial={"steps": 4, "eval_every": 2, "data": data})  # fmt: skip
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join(done.stdout.split())  # the console wraps long lines
    assert "at least 3 adapter (lora/qlora), 1 full completed configuration(s)" in text
    kept = [line for line in done.stdout.splitlines() if line.startswith("search: kept trial")]
    assert kept, "ASHA stopped no adapter trial: the space no longer tests the floor\n" + done.stdout[-3000:]
    assert all("(lora)" in line or "(qlora)" in line for line in kept)

    trials = [r for r in children(runs_of(tmp_path, "floors")) if r.data.tags[names.TAG_ROLE] == "trial"]
    assert len(trials) == 4
    finished = [r for r in trials if r.data.tags[names.TAG_STATUS] == "finished" and "test_quality" in r.data.metrics]
    methods = [r.data.tags[names.TAG_METHOD] for r in finished]
    assert sum(m in ("lora", "qlora") for m in methods) >= 3, methods
    assert "full" in methods
    configs = {(r.data.params["method"], r.data.params.get("rank"), r.data.params["learning_rate"]) for r in finished}
    assert len(configs) == len(finished)  # distinct configurations, not one trained again
