"""ASHA as the sweep builds it: rungs in validation reports, a grace period past them means no pruning, and
the leader rule (LeaderScheduler) around Ray Tune's real ASHAScheduler."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeps import pruning
from sweeps.pruning import asha, reports


def test_a_grace_period_past_the_last_report_builds_a_scheduler_that_prunes_nothing() -> None:
    # 10 steps validated every 5: 2 reports. Ray refuses grace_period > max_t with a bare assertion at the
    # start of the sweep; a config asking for 9 reports of grace means "never prune", and gets that.
    assert reports(10, 5) == 2
    scheduler = asha(10, 5, 9, 2)
    # Ray's rungs (milestone, recorded): the only one at max_t, past the final report, so none prunes.
    assert scheduler._max_t == 4 and [m for m, _ in scheduler._brackets[0]._rungs] == [4]
    assert [m for m, _ in asha(40, 2, 3, 2)._brackets[0]._rungs][-1] == 3  # within the reports: as given


# --- the leader rule around ASHA ----------------------------------------------------------------------


def ray_trial(trial_id: str, method: str, lr: float = 1e-4, rank: int = 8,
              targets: str = "attention") -> SimpleNamespace:  # fmt: skip
    if method == "full":
        config: dict[str, Any] = {"method": "full", "learning_rate": lr, "rank": None, "target_modules": None,
                                  "lora_dropout": None}  # fmt: skip
    else:
        config = {"method": method, "learning_rate": lr, "rank": rank, "target_modules": targets,
                  "lora_dropout": 0.05}  # fmt: skip
    return SimpleNamespace(trial_id=trial_id, config=config, status=Trial.RUNNING, last_result={})


class Played:
    """Trials played one report at a time past a scheduler, as bench/replay.py does."""

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler
        self.trials: list[Any] = []
        self.controller = SimpleNamespace(get_trials=lambda: self.trials)

    def add(self, trial: SimpleNamespace) -> SimpleNamespace:
        self.trials.append(trial)
        self.scheduler.on_trial_add(self.controller, trial)
        return trial

    def report(self, trial: SimpleNamespace, at: int, val: float, phase: str = "train") -> str:
        result = {"training_iteration": at, "val_quality": val, "phase": phase}
        decision = self.scheduler.on_trial_result(self.controller, trial, result)
        trial.last_result = result
        if decision == TrialScheduler.STOP:
            self.scheduler.on_trial_complete(self.controller, trial, result)
            trial.status = Trial.TERMINATED
        return str(decision)


def ray_asha(**kwargs: Any) -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", metric="val_quality", mode="max", max_t=4,
                         grace_period=1, reduction_factor=3, **kwargs)  # fmt: skip


@pytest.mark.parametrize("leaders", [True, False])
def test_the_leader_of_each_group_is_kept_where_asha_would_stop_it(leaders: bool) -> None:
    base = ray_asha()
    play = Played(pruning.LeaderScheduler(base, announce=False) if leaders else base)
    assert play.report(play.add(ray_trial("f1", "full")), 1, 0.9) == TrialScheduler.CONTINUE  # the first
    # ASHA's cutoff is now 0.9: the first adapter (the group's leader) would be stopped.
    a1 = play.add(ray_trial("a1", "lora", 2e-4))
    assert play.report(a1, 1, 0.2) == (TrialScheduler.CONTINUE if leaders else TrialScheduler.STOP)
    # Below the adapters' leader: ASHA decides.
    assert play.report(play.add(ray_trial("a2", "qlora", 6e-4)), 1, 0.1) == TrialScheduler.STOP
    # A full trial below full's leader: ASHA decides too, whatever the adapters scored.
    assert play.report(play.add(ray_trial("f2", "full", 4e-5)), 1, 0.3) == TrialScheduler.STOP
    # A new adapter leader (qlora and lora are one group) is kept again; a tie does not lead (the earlier
    # trial does).
    a3 = play.add(ray_trial("a3", "qlora", 7e-5))
    assert play.report(a3, 1, 0.25) == (TrialScheduler.CONTINUE if leaders else TrialScheduler.STOP)
    a4 = play.add(ray_trial("a4", "lora", 7e-5))
    assert play.report(a4, 1, 0.25) == TrialScheduler.STOP
    if leaders:
        assert play.scheduler.kept == ["a1", "a3"]
        assert "group leaders kept 2" in play.scheduler.debug_string()


def test_a_capacity_increase_over_the_leader_at_its_rate_is_kept_too() -> None:
    play = Played(pruning.LeaderScheduler(ray_asha(), announce=False))
    play.report(play.add(ray_trial("f1", "full")), 1, 0.9)
    play.report(play.add(ray_trial("a1", "qlora", 6.6e-4, rank=16)), 1, 0.3)  # the adapters' leader, kept
    # Broader targets at the leader's rate learn slower at first: behind the leader, kept for the decision.
    broader = play.add(ray_trial("wide", "qlora", 6.6e-4, rank=16, targets="all-linear"))
    assert play.report(broader, 1, 0.1) == TrialScheduler.CONTINUE
    higher = play.add(ray_trial("r32", "qlora", 6.2e-4, rank=32))  # a higher rank at the same rung
    assert play.report(higher, 1, 0.1) == TrialScheduler.CONTINUE
    # Not capacity over the leader: another rate, a lower rank, another method, another dropout.
    for other in (ray_trial("rate", "qlora", 2e-4, rank=32), ray_trial("low", "qlora", 6.6e-4, rank=8),
                  ray_trial("lora", "lora", 6.6e-4, rank=32)):  # fmt: skip
        assert play.report(play.add(other), 1, 0.05) == TrialScheduler.STOP, other.trial_id
    dropout = ray_trial("drop", "qlora", 6.6e-4, rank=32)
    dropout.config["lora_dropout"] = 0.1
    assert play.report(play.add(dropout), 1, 0.05) == TrialScheduler.STOP
    assert play.scheduler.kept == ["a1", "wide", "r32"]


def test_a_trial_is_judged_against_its_group_at_the_same_report() -> None:
    play = Played(pruning.LeaderScheduler(ray_asha(), announce=False))
    scheduler = play.scheduler
    play.report(play.add(ray_trial("f1", "full")), 1, 0.9)
    a1 = play.add(ray_trial("a1", "lora"))
    play.report(a1, 1, 0.2)
    # NaN (a failed trial's report) and the final report are not scores to lead with.
    a2 = play.add(ray_trial("a2", "lora", 3e-4))
    play.report(a2, 1, math.nan)
    play.report(a2, 2, 0.9, phase="final")
    assert scheduler.scores == {"f1": ("full", {1: 0.9}), "a1": ("adapter", {1: 0.2})}
    assert scheduler.leader("adapter", 1) == "a1" and scheduler.leader("full", 1) == "f1"
    assert scheduler.leader("adapter", 2) is None  # nobody of the group reached report 2 yet
    # At report 2 the adapters' first arrival leads, whatever full fine-tuning scored there.
    play.report(a1, 2, 0.3)
    assert scheduler.leader("adapter", 2) == "a1"


def test_the_sweep_builds_asha_with_or_without_the_leader_rule() -> None:
    wrapped = pruning.scheduler(60, 20, 1, 3, rate_first=True)
    assert isinstance(wrapped, pruning.LeaderScheduler) and isinstance(wrapped.base, ASHAScheduler)
    assert wrapped.base._max_t == 5  # 3 validation reports, the final one, and one past
    assert min(milestone for milestone, _ in wrapped.base._brackets[0]._rungs) == 1  # the grace period
    plain = pruning.scheduler(60, 20, 1, 3, rate_first=False)
    assert isinstance(plain, ASHAScheduler)
    again = pickle.loads(pickle.dumps(wrapped))  # Tune saves the scheduler with the experiment
    assert isinstance(again, pruning.LeaderScheduler) and again.kept == []
