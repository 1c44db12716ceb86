"""How a sweep searches: the learning rate first per method group, then Optuna's TPE; Ray Tune's ASHA prunes.

Fine-tuning knowledge sits on top of the library parts, each wrapping what it changes:
- Proposals (`GuidedSearch`, around Ray's OptunaSearch with TPE): before each suggestion, the ladder
  (sweeps/ladder.py) says which trial the method decision still needs: each group's prior learning rate,
  the rungs that bracket it, one capacity increase at the adapters' bracketed rate. That configuration is
  enqueued in the Optuna study (as Ray enqueues `points_to_evaluate`), so the study holds every trial and a
  resumed sweep continues the plan. Once the evidence is in, TPE proposes every other setting, with each
  group's rate held at its bracketed best.
- Pruning (`sweeps.pruning.LeaderScheduler`, around ASHA): ASHA stops the ladder's poor rungs at the first
  rung; a trial that leads its method group at its rung is kept, so each group ends with a finished run
  (with a test score) for the decision to compare.
- What Optuna is told: a trial ASHA stopped as PRUNED (its last score as an intermediate value), one that
  failed as FAIL, and one that diverged as FAIL with the `diverged` attribute the bracket rule reads.
  Ray's OptunaSearch alone would tell a stopped trial COMPLETE, with its first-rung score as if final.

`rate_first: false` in the sweep config turns the ladder and the leader rule off (plain TPE and ASHA). The
search replay of `make bench` (bench/replay.py) uses these same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from search_spaces.rates import group_of
from sweeps import ladder

METRIC = "val_quality"
MIN_STARTUP_TRIALS = 3  # a few trials before TPE's first model


def first_points(space: Any) -> list[dict[str, Any]]:
    """The production default, the sweep's first trial and the adapters' reference row."""
    return list(space.points_to_evaluate())


def tpe_sampler(first_points: int, seed: int | None = None) -> optuna.samplers.TPESampler:
    """Optuna's TPE, modelling the results from the trial after the first points on.

    TPE's default is 10 random start-up trials: a short sweep would then never leave random sampling.
    """
    return optuna.samplers.TPESampler(n_startup_trials=max(MIN_STARTUP_TRIALS, first_points), seed=seed)


def searcher(space: Any, priors: ladder.Priors | None, seed: int | None = None) -> Searcher:
    """Ray's OptunaSearch over the space's define-by-run function, from the first points; with `priors`,
    the ladder decides the trials the evidence needs."""
    from ray.tune.search.optuna import OptunaSearch

    points = first_points(space)
    optuna_search = OptunaSearch(space=space.define_by_run, metric=METRIC, mode="max",
                                 points_to_evaluate=points, sampler=tpe_sampler(len(points), seed))  # fmt: skip
    return GuidedSearch(optuna_search, space, priors)


def plan_next(study: optuna.Study, space: Any, priors: ladder.Priors) -> None:
    """Enqueue what the ladder needs next (or TPE's next proposal with the bracketed rates held), unless
    the study's queue already holds a trial (the first points)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return
    point = ladder.next_point(trials, space, priors)
    if point is not None:
        study.enqueue_trial(space.search_params(point))
        return
    held = ladder.held_rates(trials, space, priors)
    if held:
        study.enqueue_trial(held)


# --- telling Optuna what happened ---------------------------------------------------------------------


def completed(result: Mapping[str, Any] | None) -> bool:
    """Ran to the end: the final report, with its test score (also when the budget cut training short)."""
    return bool(result) and result.get("phase") == "final"  # type: ignore[union-attr]


class GuidedSearch(Searcher):
    """Wraps Ray's OptunaSearch (Ray's wrapper pattern: the wrapped searcher is `.searcher`, so Tune saves
    and restores it as it does for ConcurrencyLimiter): the ladder's next trial is enqueued before each
    suggestion, and what Optuna is told at a trial's end is corrected."""

    def __init__(self, searcher: Searcher, space: Any = None, priors: ladder.Priors | None = None) -> None:
        self.searcher = searcher
        self.space = space
        self.priors = priors
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def metric(self) -> Any:
        return self.searcher.metric

    @property
    def mode(self) -> Any:
        return self.searcher.mode

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        # Ray's OptunaSearch keeps its study and its trials by Tune trial id here (a trial asked again, as on
        # a restore, already has its Optuna trial: nothing to plan for it).
        study = getattr(self.searcher, "_ot_study", None)
        if self.priors is not None and study is not None and trial_id not in self._ot_trials():
            plan_next(study, self.space, self.priors)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("phase") == "failed":
            return  # a failing trial's last report (val_quality NaN) is no score: its end tells Optuna FAIL
        self.searcher.on_trial_result(trial_id, result)

    def _ot_trials(self) -> dict[str, Any]:
        return dict(getattr(self.searcher, "_ot_trials", None) or {})

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result and result.get("phase") == "failed" and str(result.get("error", "")).startswith("Diverged"):
            ot_trial = self._ot_trials().get(trial_id)
            if ot_trial is not None:
                ot_trial.set_user_attr(ladder.DIVERGED, True)  # a rung the bracket rule counts as worst
        if error or not result or result.get("phase") == "failed":
            self.searcher.on_trial_complete(trial_id, result=None, error=True)
            return
        if not completed(result):
            score = result.get(METRIC)
            if isinstance(score, (int, float)) and math.isfinite(score) and "training_iteration" in result:
                self.searcher.on_trial_result(trial_id, result)  # its last score, as an intermediate value
            self.searcher.on_trial_complete(trial_id, result={k: v for k, v in result.items() if k != METRIC})
            return
        self.searcher.on_trial_complete(trial_id, result=result, error=False)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return _set_search_properties_backwards_compatible(
            self.searcher.set_search_properties, metric, mode, config, **spec
        )

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def get_state(self) -> dict[str, Any]:
        return {}  # nothing of its own: the counts live in the study, which the wrapped searcher saves

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def evidence_note(space: Any, max_trials: int, rate_first: bool, budget_usd: float | None = None,
                  estimates: Mapping[str, float] | None = None) -> str | None:
    """A line for the start of a sweep: what evidence the method decision needs, and whether max_trials and
    the budget can hold it (else the decision will name what is missing and recommend the adapter)."""
    if not rate_first:
        return None
    groups = {group_of(m) for m in space.method_names}
    if groups != {"adapter", "full"}:
        return None
    need = ladder.evidence_trials(space)
    note = (f"search: learning rate first: each method group's rate is bracketed on a ladder ~3x apart, then one "
            f"adapter capacity increase at it; escalating to full fine-tuning needs about {need} trials of that")
    short = []
    if max_trials < need:
        short.append(f"max_trials {max_trials} cannot hold them (raise TRIALS to {need} or more)")
    if budget_usd is not None and estimates:
        full = min(3, need - 1)
        adapter_method = (space.default or {}).get("method") or next(m for m in space.method_names if m != "full")
        cost = (need - full) * estimates.get(adapter_method, 0.0) + full * estimates.get("full", 0.0)
        if cost > budget_usd:
            short.append(f"the budget ${budget_usd:.4g} buys less than their projected ${cost:.4g} (raise BUDGET)")
    if short:
        note += ("; " + " and ".join(short) + ", so the decision can only recommend the adapter and name the "
                 "trials still missing")
    return note
