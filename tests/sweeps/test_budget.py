"""The budget ledger, admission and stop signal, against a real Ray Tune run of priced toy trials.

Trials keep a simulated clock (STEP_S seconds per step at a given price) so costs are exact and the
checks do not depend on how fast this machine is; they only sleep briefly to interleave like real ones.
"""

from __future__ import annotations

import json
import math
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from sweeps import budget
from sweeps.budget import (
    BudgetError,
    BudgetLedger,
    BudgetSearcher,
    BudgetStopper,
    BudgetSync,
    open_budget_signal,
    trial_should_stop,
    usd,
    validate_budget,
)

REPO = Path(__file__).resolve().parents[2]
STEPS = 10  # training steps of a trial that is not stopped
STEP_S = 10.0  # simulated seconds per step (and for the final evaluation)
CONCURRENT = 2


@pytest.fixture(scope="module")
def ray_session() -> Any:
    # Workers import this module by name to unpickle the trainable, hence the test folder on their path.
    path = f"{REPO}:{Path(__file__).parent}"
    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


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


def test_ledger_round_trip_and_accounting(tmp_path: Path) -> None:
    ledger = BudgetLedger(10.0, estimate_usd=2.0, reserve_usd=0.5, path=tmp_path / "ledger.json")
    ledger.record("a", 1.0)
    ledger.record("a", 1.5, finished=True, final=True)
    ledger.record("a", 1.5, finished=True, final=True)  # seen again by another hook: no double count
    ledger.record("b", 0.7)
    ledger.record("b", 0.2)  # restarted from a checkpoint at 0.2 or less: the 0.7 stays spent
    assert ledger.spent() == pytest.approx(1.5 + 0.7)
    ledger.record("b", 0.4)
    assert ledger.spent() == pytest.approx(1.5 + 0.9)
    assert ledger.projected_trial_cost() == pytest.approx(1.5)  # the only complete trial
    assert ledger.running() == ["b"]
    # b holds what is left of a projected trial after its current attempt (0.4), not after its total
    assert ledger.remaining() == pytest.approx(10.0 - 2.4 - max(1.5 - 0.4, 0.5))
    ledger.save()
    loaded = BudgetLedger.load(tmp_path / "ledger.json")
    assert loaded.to_dict() == ledger.to_dict()
    assert not list(tmp_path.glob(".ledger.json.*"))  # no temp file left behind


def test_every_unpickled_copy_is_the_one_ledger() -> None:
    # Tune pickles the stopper into its experiment state on its own and, on restore, puts that copy
    # in place of the one that shares the searcher's ledger; the copies must still be one ledger.
    ledger = BudgetLedger(1.0, estimate_usd=0.1)
    stopper = BudgetStopper(ledger, "s")
    searcher = BudgetSearcher(OptunaSearch(space, metric="val_quality", mode="max"), ledger)
    assert ray.cloudpickle.loads(ray.cloudpickle.dumps(stopper)).ledger is ledger
    frozen = pickle.dumps((stopper, searcher))
    ledger.record("a", 0.3)
    budget._LEDGERS.clear()  # a new process: the first unpickled copy becomes the instance
    stopper2, searcher2 = pickle.loads(frozen)
    assert stopper2.ledger is searcher2.ledger is pickle.loads(pickle.dumps(stopper)).ledger
    assert stopper2.ledger is not ledger and stopper2.ledger.spent() == 0.0


def test_admits_and_stop_thresholds() -> None:
    ledger = BudgetLedger(1.0, estimate_usd=0.4, reserve_usd=0.1)
    ledger.open("a")
    ledger.open("b")
    fits, why = ledger.admits()  # 1.0 - 2 x 0.4 held for the running = 0.2 < 0.4
    assert not fits and "exceeds what remains $0.20" in why
    for cost in (0.1, 0.2, 0.3):
        ledger.record("a", cost)
    ledger.record("b", 0.1)
    ledger.record("b", 0.2)
    # spent 0.5 + per running trial one report interval (0.1) and one evaluation (0.1) = 0.9
    assert not ledger.training_must_stop()
    ledger.record("a", 0.4)
    assert ledger.training_must_stop() and not ledger.exhausted()  # 0.6 + 0.4 = 1.0
    ledger.record("a", 0.8)
    assert ledger.exhausted()


def test_restore_merges_the_newer_file(tmp_path: Path) -> None:
    ledger = BudgetLedger(5.0, estimate_usd=1.0, path=tmp_path / "b.json")
    ledger.record("a", 1.0, finished=True, final=True)
    ledger.record("b", 0.5)
    older = ledger.to_dict()
    ledger.record("b", 0.9, finished=True, final=True)
    ledger.record("c", 0.3)
    ledger.save()
    restored = BudgetLedger(5.0, estimate_usd=1.0, path=tmp_path / "b.json")
    restored.restore(older)
    assert restored.spent() == pytest.approx(2.2) and set(restored.trials) == {"a", "b", "c"}

    class Trial:  # what Ray's restored Trial objects offer to the ledger
        def __init__(self, trial_id: str, status: str, last_result: dict[str, Any]) -> None:
            self.trial_id, self.status, self.last_result = trial_id, status, last_result

    restored.rebuild_from_trials([Trial("a", "TERMINATED", {"cost_usd": 1.0, "phase": "final"}),
                                  Trial("b", "PENDING", {"cost_usd": 0.5})])  # fmt: skip
    assert restored.spent() == pytest.approx(2.2)  # Tune's older costs do not lower the ledger
    assert restored.running() == ["b"]  # Tune runs b again; c (unknown to Tune) never will
    assert restored.held_for_running() == pytest.approx(1.0)  # b may start from zero: a whole trial
    restored.record("b", 0.2)  # its first report after the restart
    assert restored.spent() == pytest.approx(2.2) and restored.held_for_running() == pytest.approx(0.8)


def test_budget_searcher_finishes_when_nothing_fits_and_nothing_runs() -> None:
    ledger = BudgetLedger(1.0, estimate_usd=0.6)
    searcher = BudgetSearcher(OptunaSearch(space, metric="val_quality", mode="max"), ledger)
    assert isinstance(searcher.suggest("t1"), dict)
    assert searcher.suggest("t2") is None  # t1 holds 0.6 of 1.0: wait for it
    searcher.on_trial_complete("t1", {"cost_usd": 0.6, "val_quality": 0.5, "phase": "final"})
    assert searcher.suggest("t3") == Searcher.FINISHED
    assert BudgetSearcher(searcher.searcher, BudgetLedger(9.0, 0.1), max_trials=1).suggest("t4") is not None


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


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "required"), ("", "required"), ("-3", "'-3'"), (0, "'0'"), ("abc", "'abc'"),
     (math.nan, "'nan'"), (math.inf, "'inf'"), (True, "'True'"), ([30], "'[30]'")],
)
def test_bad_budgets_are_named_with_the_fix(value: object, shown: str) -> None:
    with pytest.raises(BudgetError, match="--budget") as err:
        validate_budget(value)
    assert shown in str(err.value) and "--budget 30" in str(err.value)


def test_good_budgets() -> None:
    assert validate_budget("30") == 30.0 and validate_budget(2) == 2.0
    assert validate_budget(" $1,200.5 ") == 1200.5
    assert usd(0.0075) == "$0.0075" and usd(30) == "$30.00" and usd(0) == "$0.00"


def test_the_ledger_counts_the_baseline_and_ends_with_the_figure_of_rays_storage(tmp_path: Path) -> None:
    from sweeps.ledger import close_books, stored_trials, sweep_spent

    ledger = BudgetLedger(1.0, estimate_usd=0.3, path=tmp_path / "budget.json", baseline_usd=0.1)
    ledger.record("a", 0.2)
    assert ledger.spent() == pytest.approx(0.3) and ledger.remaining() == pytest.approx(1.0 - 0.3 - 0.1)
    ledger.save()
    assert json.loads((tmp_path / "budget.json").read_text())["spent_usd"] == pytest.approx(0.3)
    # Ray's storage as a sweep leaves it: a trial whose second attempt restarted below its first (a lost
    # attempt's work stays spent), a trial that reported more than the ledger saw, a torn last line.
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "metrics.json").write_text(json.dumps({"cost_usd": 0.1, "test_quality": 0.5}))
    for trial_id, costs in {"a": [0.1, 0.25, 0.05, 0.3], "b": [0.2, 0.4]}.items():
        (tmp_path / f"trial_{trial_id}").mkdir()
        lines = [json.dumps({"trial_id": trial_id, "cost_usd": c, "step": i}) for i, c in enumerate(costs)]
        (tmp_path / f"trial_{trial_id}" / "result.json").write_text("\n".join(lines) + '\n{"trial_id": "')
    stored = stored_trials(tmp_path)
    assert stored["a"]["cost"] == pytest.approx(0.3) and stored["a"]["carried"] == pytest.approx(0.2)
    assert sweep_spent(tmp_path) == pytest.approx(0.1 + 0.5 + 0.4)
    assert close_books(tmp_path, ledger) == pytest.approx(sweep_spent(tmp_path))
    saved = BudgetLedger.load(tmp_path / "budget.json")
    assert saved.spent() == pytest.approx(1.0) and set(saved.trials) == {"a", "b"}


def test_each_method_is_projected_from_its_own_trials() -> None:
    """A full fine-tuning trial is never admitted at a LoRA trial's price: before any of its trials has
    finished a method is projected at its own estimate, then at its own dearest completed trial."""
    ledger = BudgetLedger(1.0, estimate_usd=0.5, reserve_usd=0.01, estimates={"lora": 0.1, "full": 0.5})
    assert ledger.projected_trial_cost("lora") == 0.1 and ledger.projected_trial_cost("full") == 0.5
    for trial_id in ("l1", "l2"):
        ledger.open(trial_id, "lora")
        ledger.record(trial_id, 0.04, finished=True, final=True)
    assert ledger.projected_trial_cost("lora") == pytest.approx(0.04)  # measured, below its estimate
    assert ledger.projected_trial_cost("full") == 0.5  # no full trial yet: LoRA's cost says nothing of it
    assert ledger.projected_trial_cost() == 0.5  # not knowing the method: the dearest
    ledger.open("f1", "full")  # a running full trial holds full's projection, not LoRA's
    assert ledger.held_for_running() == pytest.approx(0.5)
    assert ledger.admits("lora")[0] and not ledger.admits("full")[0]  # 1.0 - 0.08 - 0.5 = 0.42 left
    assert "next full trial's projected cost $0.50" in ledger.admits("full")[1]
    ledger.record("f1", 0.3, finished=True, final=True)
    assert ledger.projected_trial_cost("full") == pytest.approx(0.3)
    again = BudgetLedger.from_dict(ledger.to_dict())  # the projections survive a restore
    assert again.estimates == {"lora": 0.1, "full": 0.5} and again.trials["f1"]["method"] == "full"
    assert again.projected_trial_cost("lora") == pytest.approx(0.04)


def test_budget_searcher_holds_the_proposed_methods_projection() -> None:
    def full_space(trial: Any) -> None:
        trial.suggest_categorical("method", ["full"])
        trial.suggest_float("x", 0.0, 1.0)

    ledger = BudgetLedger(1.0, estimate_usd=0.4, estimates={"lora": 0.1, "full": 0.4})
    searcher = BudgetSearcher(OptunaSearch(full_space, metric="val_quality", mode="max"), ledger)
    assert searcher.suggest("t1")["method"] == "full"
    assert ledger.trials["t1"]["method"] == "full" and ledger.held_for_running() == pytest.approx(0.4)
    assert isinstance(searcher.suggest("t2"), dict)  # 1.0 - 0.4 left 0.6: one more at the dearest, 0.4
    assert searcher.suggest("t3") is None  # 0.2 left, below the dearest method's 0.4: nothing is admitted
    assert "projected cost $0.40" in searcher.why_waiting
