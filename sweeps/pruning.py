"""The pruning side of the method floors (sweeps/search.py explains them): Ray Tune's ASHA, wrapped so that it
never stops a trial whose method group still needs it to reach its floor."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeps.search import CONFIG_KEYS, completed, config_key, group_of

LIVE = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)


def asha(steps: int, eval_every: int, grace_period: int, reduction_factor: float) -> ASHAScheduler:
    """ASHA with rungs counted in validation reports; the final report (the test score) comes one past the
    last validation, and max_t lies past both: ASHA stops a trial that reaches max_t. A grace_period past
    the trial's reports means no pruning; Ray would refuse it (grace_period <= max_t), so it is capped."""
    max_t = reports(steps, eval_every) + 2
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(grace_period, max_t),
                         reduction_factor=reduction_factor)  # fmt: skip


def scheduler(steps: int, eval_every: int, grace_period: int, reduction_factor: float,
              floors: Mapping[str, int]) -> TrialScheduler:  # fmt: skip
    base = asha(steps, eval_every, grace_period, reduction_factor)
    return FloorScheduler(base, floors) if floors else base


def reports(steps: int, eval_every: int) -> int:
    return max(1, math.ceil(steps / eval_every))


def trial_key(trial: Any) -> tuple[tuple[str, str], ...]:
    config = getattr(trial, "config", {}) or {}
    return config_key({k: config.get(k) for k in CONFIG_KEYS})


def keeps(trial: Any, trials: Iterable[Any], floors: Mapping[str, int]) -> bool:
    """Whether a stop of `trial` must be overridden: it is a new configuration its method group needs to
    reach its floor (completed + live configurations, itself included, <= the floor)."""
    group = group_of((getattr(trial, "config", {}) or {}).get("method"))
    floor = floors.get(group, 0)
    if not floor:
        return False
    done: set[Any] = set()
    live: set[Any] = set()
    for other in trials:
        if other is trial or group_of((getattr(other, "config", {}) or {}).get("method")) != group:
            continue
        if other.status == Trial.TERMINATED and completed(getattr(other, "last_result", None)):
            done.add(trial_key(other))
        elif other.status in LIVE:
            live.add(trial_key(other))
    key = trial_key(trial)
    return key not in done and len(done | live | {key}) <= floor


class FloorScheduler(TrialScheduler):
    """Wraps a scheduler (ASHA) and overrides its stop for a trial its method group still needs."""

    def __init__(self, base: TrialScheduler, floors: Mapping[str, int], announce: bool = True) -> None:
        self.base = base
        self.floors = dict(floors)
        self.announce = announce  # print each override (the sweep does; the replay does not)
        self.kept: list[str] = []  # trial ids a stop was overridden for, in order
        super().__init__()

    @property
    def metric(self) -> Any:
        return self.base.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.base.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.base.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.base.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.base.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = self.base.on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP or completed(result):
            return decision
        if not keeps(trial, tune_controller.get_trials(), self.floors):
            return decision
        self.kept.append(trial.trial_id)
        method = trial.config.get("method")
        floor = self.floors[group_of(method)]
        if self.announce:
            print(f"search: kept trial {trial.trial_id} ({method}), which ASHA would have stopped at report "
                  f"{result.get('training_iteration')}: the {group_of(method)} methods need {floor} completed "
                  "configuration(s) for the method decision (min_adapter_configs)", flush=True)  # fmt: skip
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.base.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.base.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.base.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"{self.base.debug_string()}\nfloors {self.floors}, kept {len(self.kept)}"

    def save(self, checkpoint_path: str) -> None:
        self.base.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.base.restore(checkpoint_path)
