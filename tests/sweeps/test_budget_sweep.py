"""The budget's admission, stop signal and backstop, and its ledger across a restore, against real Ray Tune
runs of priced toy trials (budget_trials.py: a simulated clock, so costs are exact)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from budget_trials import STEPS, priced_trial, space, step_cost
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from sweeps import budget
from sweeps.budget import (
    BudgetLedger,
    BudgetSearcher,
    BudgetStopper,
    BudgetSync,
    open_budget_signal,
    trial_should_stop,
)

CONCURRENT = 2


def run_sweep(
    ledger: BudgetLedger, usd_per_hour: float, max_trials: int, tmp_path: Path, obey: bool = True,
    callbacks: list[Any] | None = None,
) -> tuple[tune.ResultGrid, BudgetSearcher, str]:
    sweep = f"t-{uuid.uuid4().hex[:8]}"
    optuna = OptunaSearch(space, metric="val_quality", mode="max", seed=0)
    searcher = BudgetSearcher(ConcurrencyLimiter(optuna, max_concurrent=CONCURRENT), ledger, max_trials)
    tuner = tune.Tuner(
        tune.with_parameters(priced_trial, usd_per_hour=usd_per_hour, sweep=sweep, obey=obey),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=max_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=sweep, storage_path=str(tmp_path), verbose=0,
            stop=BudgetStopper(ledger, sweep), callbacks=[BudgetSync(ledger, sweep), *(callbacks or [])],
        ),
    )
    return tuner.fit(), searcher, sweep


def rows(results: tune.ResultGrid) -> list[dict[str, Any]]:
    """Each trial's last reported metrics."""
    return [results[i].metrics or {} for i in range(len(results))]


def last_costs(results: tune.ResultGrid) -> list[float]:
    return [r["cost_usd"] for r in rows(results)]


@pytest.mark.slow  # a real Ray Tune run
@pytest.mark.parametrize(
    ("usd_per_hour", "estimate_steps"),
    [(3.6, STEPS + 1), (9.0, STEPS + 1), (20.0, STEPS + 1), (20.0, 2)],
    ids=["cheap", "mid", "dear", "underestimated"],  # 9 (max 6), 3 and 1 trials' worth; a low estimate
)
def test_budget_never_exceeded(
    ray_session: Any, tmp_path: Path, usd_per_hour: float, estimate_steps: int
) -> None:
    c = step_cost(usd_per_hour)
    ledger = BudgetLedger(1.0, estimate_usd=estimate_steps * c, reserve_usd=c)
    results, _, _ = run_sweep(ledger, usd_per_hour, max_trials=6, tmp_path=tmp_path)
    assert not results.errors
    assert ledger.spent() <= 1.0 + CONCURRENT * c  # tolerance: one report interval per running trial
    assert ledger.spent() == pytest.approx(sum(last_costs(results)), abs=1e-12)
    assert all(r["phase"] == "final" for r in rows(results))  # stopped trials still evaluated
    assert not ledger.running(), (ledger.to_dict(), [(r["trial_id"], r["phase"]) for r in rows(results)])


@pytest.mark.slow  # a real Ray Tune run
def test_underestimate_stops_training_and_trials_still_evaluate(ray_session: Any, tmp_path: Path) -> None:
    c = step_cost(9.0)
    # Both first trials are admitted on a 3-step estimate; together they would cost 0.55.
    ledger = BudgetLedger(0.4, estimate_usd=3 * c, reserve_usd=c)
    results, _, _ = run_sweep(ledger, 9.0, max_trials=6, tmp_path=tmp_path)
    assert ledger.stop_requested and len(results) == 2
    assert ledger.spent() <= 0.4 + CONCURRENT * c
    stopped = [r for r in rows(results) if r["step"] < STEPS]
    assert stopped, "the signal should have cut some trial's training short"
    assert all(r["phase"] == "final" for r in stopped)


@pytest.mark.slow  # a real Ray Tune run
def test_admission_stops_new_trials(ray_session: Any, tmp_path: Path) -> None:
    c = step_cost(9.0)
    trial = (STEPS + 1) * c
    ledger = BudgetLedger(3.5 * trial, estimate_usd=trial, reserve_usd=c)
    results, searcher, _ = run_sweep(ledger, 9.0, max_trials=10, tmp_path=tmp_path)
    assert len(results) == 3  # 3.5 trials' worth of money, each projected at its exact cost
    assert not ledger.stop_requested  # admission alone kept it in budget
    assert ledger.spent() == pytest.approx(3 * trial)
    assert "exceeds what remains" in searcher.why_waiting


@pytest.mark.slow  # a real Ray Tune run
def test_backstop_stops_trials_that_ignore_the_signal(ray_session: Any, tmp_path: Path) -> None:
    c = step_cost(9.0)
    ledger = BudgetLedger(0.5, estimate_usd=2 * c, reserve_usd=c)
    results, _, _ = run_sweep(ledger, 9.0, max_trials=6, tmp_path=tmp_path, obey=False)
    assert ledger.exhausted()
    assert ledger.spent() <= 0.5 + CONCURRENT * c
    assert any(r["phase"] == "train" for r in rows(results))  # cut off by stop_all, not finished
    assert not ledger.running()  # although Tune's stop-all does not tell the searcher


class FailOnce(tune.Callback):
    """Interrupts the driver once after the first trial completes, while the flag file exists."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self.completed = 0

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed += 1

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.completed and self.flag.exists():
            self.flag.unlink()
            raise RuntimeError("injected driver failure")


def interrupted_sweep(tmp_path: Path, ledger_file: Path | None) -> tuple[Path, float, float]:
    """A sweep worth 3.5 trials, interrupted after its first trial: (experiment folder, trial cost, c)."""
    c = step_cost(9.0)
    trial = (STEPS + 1) * c
    flag = tmp_path / "armed"
    flag.touch()
    ledger = BudgetLedger(3.5 * trial, estimate_usd=trial, reserve_usd=c, path=ledger_file)
    with pytest.raises(Exception, match="injected driver failure"):
        run_sweep(ledger, 9.0, max_trials=10, tmp_path=tmp_path, callbacks=[FailOnce(flag)])
    (experiment,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return experiment, trial, c


def resume(experiment: Path) -> tune.ResultGrid:
    assert tune.Tuner.can_restore(str(experiment))
    trainable = tune.with_parameters(priced_trial, usd_per_hour=9.0, sweep=experiment.name)
    return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True).fit()


@pytest.mark.slow  # a real Ray Tune run
def test_tuner_restore_brings_the_ledger_back_in_the_searcher_state(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # Tune saves its state every step: no lag
    experiment, trial, c = interrupted_sweep(tmp_path, ledger_file=None)

    # Ray's own restore path (SearchGenerator -> wrapper.set_state) hands a fresh searcher the ledger.
    fresh = BudgetLedger(99.0, estimate_usd=1.0)
    generator = SearchGenerator(BudgetSearcher(OptunaSearch(metric="val_quality", mode="max"), fresh))
    generator.restore_from_dir(str(experiment))
    assert fresh.budget_usd == pytest.approx(3.5 * trial) and fresh.spent() >= trial

    results = resume(experiment)
    # A lost ledger would admit 3 more trials after the restore; the restored one keeps the sweep at 3,
    # or 2 when the trial cut off by the failure had spent much before Tune ran it again from zero.
    assert len(results) in (2, 3) and not results.errors
    assert sum(last_costs(results)) <= 3.5 * trial + CONCURRENT * c


@pytest.mark.slow  # a real Ray Tune run
def test_ledger_file_covers_what_tunes_lagging_checkpoint_missed(ray_session: Any, tmp_path: Path) -> None:
    # Tune's default checkpoint period lags the failure; the ledger file, saved on every finished
    # trial, still knows the money spent, including by trials Tune's state does not know about.
    experiment, trial, c = interrupted_sweep(tmp_path, ledger_file=tmp_path / "budget.json")
    before = BudgetLedger.load(tmp_path / "budget.json")
    assert before.spent() >= trial
    budget._LEDGERS.clear()  # as in a new driver process: the ledger comes back only from Tune's files
    results = resume(experiment)
    after = BudgetLedger.load(tmp_path / "budget.json")
    assert not after.running() and len(after.trials) <= 3
    # Trials Tune re-ran from its stale state paid twice; the ledger kept the lost attempts (`carried`)
    # and admitted fewer new trials for it.
    assert after.spent() >= sum(last_costs(results)) - 1e-12
    assert after.spent() <= after.budget_usd + CONCURRENT * c


def test_trial_should_stop_follows_the_signal(ray_session: Any) -> None:
    sweep = f"t-{uuid.uuid4().hex[:8]}"
    assert trial_should_stop(sweep) is False  # no actor: keep training
    signal = open_budget_signal(sweep)
    assert trial_should_stop(sweep) is False
    ray.get(signal.request_stop.remote())
    assert trial_should_stop(sweep) is True
    assert trial_should_stop(f"{sweep}-other") is False

    @ray.remote
    def from_a_worker(name: str) -> bool:  # how trials see it: another process, a fresh lookup
        return trial_should_stop(name)

    assert ray.get(from_a_worker.remote(sweep)) is True
