"""The budget ledger (accounting, thresholds, restore, the baseline, per-method projections), the searcher's
admission, and the --budget value, without a Tune run."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import ray
from budget_trials import space
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps import budget
from sweeps.budget import BudgetError, BudgetLedger, BudgetSearcher, BudgetStopper, usd, validate_budget


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
