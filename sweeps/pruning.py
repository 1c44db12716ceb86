"""The pruning side of the search (sweeps/search.py explains it): Ray Tune's ASHA, wrapped so that the trial
that leads its method group at a rung is never stopped there.

ASHA compares every trial with every other: when full fine-tuning leads early, it stops the adapters' best
trial at the first rung, and the method decision is left without a finished adapter run to compare (or the
other way round). Keeping each group's leader (the best score of its group at that report so far, itself
included; the first of its group to reach a rung leads it) gives each group a finished run, with a test
score, while ASHA still stops the ladder's poor rungs early.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search_spaces.rates import group_of, raises_capacity
from sweeps.search import completed


def asha(steps: int, eval_every: int, grace_period: int, reduction_factor: float) -> ASHAScheduler:
    """ASHA with rungs counted in validation reports; the final report (the test score) comes one past the
    last validation, and max_t lies past both: ASHA stops a trial that reaches max_t. A grace_period past
    the trial's reports means no pruning; Ray would refuse it (grace_period <= max_t), so it is capped."""
    max_t = reports(steps, eval_every) + 2
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(grace_period, max_t),
                         reduction_factor=reduction_factor)  # fmt: skip


def scheduler(steps: int, eval_every: int, grace_period: int, reduction_factor: float,
              rate_first: bool) -> TrialScheduler:  # fmt: skip
    base = asha(steps, eval_every, grace_period, reduction_factor)
    return LeaderScheduler(base) if rate_first else base


def reports(steps: int, eval_every: int) -> int:
    return max(1, math.ceil(steps / eval_every))


class LeaderScheduler(TrialScheduler):
    """Wraps a scheduler (ASHA) and overrides its stop for the trial that leads its method group."""

    def __init__(self, base: TrialScheduler, announce: bool = True) -> None:
        self.base = base
        self.announce = announce  # print each override (the sweep does; the replay does not)
        self.kept: list[str] = []  # trial ids a stop was overridden for, in order
        # trial id -> (group, {report: score}): the scores a leader is judged against. After a resume it
        # starts empty, so a trial may be kept that would not have been: one more finished run, not one less.
        self.scores: dict[str, tuple[str, dict[int, float]]] = {}
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
        score, at = result.get("val_quality"), result.get("training_iteration")
        if completed(result) or not isinstance(score, (int, float)) or not math.isfinite(score) or at is None:
            return decision
        config = getattr(trial, "config", {}) or {}
        group = group_of(config.get("method"))
        self.scores.setdefault(trial.trial_id, (group, {}))[1][int(at)] = float(score)
        if decision != TrialScheduler.STOP:
            return decision
        leader = self.leader(group, int(at))
        if leader == trial.trial_id:
            why = f"it leads the {group} methods there, and the method decision compares each group's best run"
        elif leader is not None and group == "adapter" and raises_capacity(config, self._config(tune_controller,
                                                                                                   leader)):
            # More rank or broader targets often learn slower at first (all linear layers on the embedded
            # default: behind at step 20, ahead at step 60): the decision needs it at full length.
            why = "it raises the leading adapter's capacity at its learning rate, which the decision weighs"
        else:
            return decision
        self.kept.append(trial.trial_id)
        if self.announce:
            print(f"search: kept trial {trial.trial_id} ({config.get('method')}), which ASHA would have stopped "
                  f"at report {at}: {why}", flush=True)  # fmt: skip
        return TrialScheduler.CONTINUE

    def leader(self, group: str, at: int) -> str | None:
        """The trial with the best score of `group` at report `at` (the earliest on a tie)."""
        scored = [(s[at], other) for other, (g, s) in self.scores.items() if g == group and at in s]
        return max(scored, key=lambda x: x[0])[1] if scored else None

    @staticmethod
    def _config(tune_controller: Any, trial_id: str) -> dict[str, Any]:
        found = next((t for t in tune_controller.get_trials() if t.trial_id == trial_id), None)
        return dict(getattr(found, "config", {}) or {})

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.base.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.base.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.base.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"{self.base.debug_string()}\ngroup leaders kept {len(self.kept)}"

    def save(self, checkpoint_path: str) -> None:
        self.base.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.base.restore(checkpoint_path)
