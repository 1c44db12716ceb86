"""The start banner and the live status line, the line fed by a real Ray Tune run."""

from __future__ import annotations

import io
import pickle
import re
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from rich.console import Console

from sweeps.budget import BudgetLedger, BudgetStopper, BudgetSync
from sweeps.progress import SweepProgress, print_start_banner, render_line, snapshot
from tracking.prices import PriceQuote

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_session() -> Any:
    path = f"{REPO}:{Path(__file__).parent}"  # workers import this module to unpickle the trainable
    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def scripted_trial(config: dict[str, Any]) -> None:
    """One trial of each outcome: evaluated to the end, stopped before its final report, crashed."""
    kind = config["kind"]
    for step in range(1, 6):
        time.sleep(0.05)
        cost = 0.01 * step
        tune.report({"step": step, "val_quality": {"final": 0.8, "pruned": 0.5, "fail": 0.1}[kind] * step / 5,
                     "cost_usd": cost, "phase": "train"})  # fmt: skip
        if kind == "fail" and step == 2:
            raise RuntimeError("boom")
        if kind == "pruned" and step == 3:
            return
    tune.report({"step": 5, "val_quality": 0.8, "cost_usd": 0.06, "phase": "final"})


def console_to(buffer: io.StringIO, terminal: bool) -> Console:
    return Console(file=buffer, force_terminal=terminal, width=160, color_system=None)


@pytest.mark.slow  # a real Ray Tune run
def test_status_line_follows_a_real_tune_run(ray_session: Any, tmp_path: Path) -> None:
    plain, live = io.StringIO(), io.StringIO()
    ledger = BudgetLedger(1.0, estimate_usd=0.06)
    callbacks = [
        BudgetSync(ledger, "progress-test"),
        SweepProgress(console_to(plain, terminal=False), ledger),
        SweepProgress(console_to(live, terminal=True), ledger, baseline_cost=0.25),
    ]
    tuner = tune.Tuner(
        scripted_trial,
        param_space={"kind": tune.grid_search(["final", "pruned", "fail"])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="progress", storage_path=str(tmp_path), verbose=0,
            stop=BudgetStopper(ledger, "progress-test"), callbacks=callbacks,
        ),
    )
    tuner.fit()
    assert ledger.spent() == pytest.approx(0.06 + 0.03 + 0.02)  # pruned and failed trials cost too

    lines = plain.getvalue().splitlines()
    assert lines[-2] == (
        "spent $0.11 / $1.00 (11%) | trials: 1 done, 0 running, 1 pruned, 1 failed | best val_quality 0.8000"
    )
    assert lines[-1] == "no more trials: all 3 trial(s) ran"  # no searcher: neither budget nor max_trials
    assert len(lines) < 3 * 5  # a line per change of counts/best/tenth of budget, not one per result
    assert len(lines) == len(set(lines))
    final_frame = live.getvalue().split("\x1b")[-3:]  # the Live redraws in place; its last frame
    assert any("spent $0.36 / $1.25 (29%)" in part for part in final_frame), live.getvalue()[-500:]


def test_banner_shows_budget_price_source_and_what_it_affords() -> None:
    buffer = io.StringIO()
    quote = PriceQuote(3.0, "Lambda on-demand list price", "h100-sxm", "2026-05", gpus=1, cpus=0)
    print_start_banner(console_to(buffer, terminal=False), 30.0, quote, 0.75, max_trials=20)
    text = re.sub(r"\s+", " ", buffer.getvalue())
    assert "budget $30.00 (US dollars)" in text
    assert "price $3.00/h (Lambda on-demand list price, prices as of 2026-05)" in text
    assert "about 40 trial(s) at $0.75 projected each; max_trials 20, so up to 20; 10.0 GPU-hours" in text

    buffer = io.StringIO()
    cpu = PriceQuote(0.09, "catalog cpu", "cpu", "2026-05", gpus=0, cpus=2)
    print_start_banner(console_to(buffer, terminal=False), 1.0, cpu, 0.0075, max_trials=None)
    text = re.sub(r"\s+", " ", buffer.getvalue())
    assert "about 133 trial(s) at $0.0075 projected each; 22.2 vCPU-hours" in text


def test_banner_lists_the_price_of_each_method() -> None:
    buffer = io.StringIO()
    lora = PriceQuote(1.48, "specialty", "a100-80gb", "2026-05", gpus=1, cpus=4)
    full = PriceQuote(5.56, "specialty", "a100-80gb", "2026-05", gpus=4, cpus=8)
    print_start_banner(console_to(buffer, terminal=False), 30.0, full, 5.56, max_trials=None,
                       per_method={"lora": lora, "full": full})  # fmt: skip
    text = re.sub(r"\s+", " ", buffer.getvalue())
    assert "price lora $1.48/h for 1 GPU (a100-80gb) + 4 vCPU (specialty, prices as of 2026-05)" in text
    assert "price full $5.56/h for 4 GPU (a100-80gb) + 8 vCPU (specialty, prices as of 2026-05)" in text
    assert "about 5 trial(s) at $5.56 projected each" in text  # at the dearest method's projection


class FakeTrial:
    def __init__(self, status: str, last: dict[str, Any], best: float | None = None) -> None:
        self.trial_id, self.status, self.last_result = f"t{id(self)}", status, last
        self.metric_analysis = {} if best is None else {"val_quality": {"max": best, "min": 0.0}}


def test_snapshot_counts_and_the_callback_pickles() -> None:
    trials = [
        FakeTrial("TERMINATED", {"phase": "final", "cost_usd": 0.5}, best=0.7),
        FakeTrial("TERMINATED", {"phase": "train", "cost_usd": 0.2}, best=0.9),
        FakeTrial("RUNNING", {"phase": "train", "cost_usd": 0.1}, best=0.3),
        FakeTrial("PENDING", {}),
        FakeTrial("ERROR", {"cost_usd": 0.05}),
    ]
    s = snapshot(trials, budget_usd=2.0)
    assert (s.done, s.pruned, s.running, s.pending, s.failed, s.best) == (1, 1, 1, 1, 1, 0.9)
    assert render_line(s) == (
        "spent $0.85 / $2.00 (42%) | trials: 1 done, 1 running, 1 waiting, 1 pruned, 1 failed "
        "| best val_quality 0.9000"
    )
    progress = SweepProgress(console_to(io.StringIO(), terminal=True), budget_usd=2.0)
    progress.setup()
    clone = pickle.loads(pickle.dumps(progress))  # Tune writes callbacks into tuner.pkl
    assert clone.budget_usd == 2.0 and clone._live is None
    progress.on_experiment_end(trials)
    with pytest.raises(ValueError, match="budget"):
        SweepProgress()
