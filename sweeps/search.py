"""How a sweep searches: Optuna's TPE proposes, Ray Tune's ASHA prunes, and a per-method floor keeps the
method decision possible.

The decision (escalate to full fine-tuning or stay with an adapter) compares the best full fine-tuning run
with the best adapter run, and is only fair when the adapters were tuned with at least
`min_adapter_configs` completed configurations (run to the end, with a test score). Left alone, a short
sweep can end with one: TPE follows the method that leads (full fine-tuning often does early on), and ASHA
stops the adapter trials that trail it at the first rung. Two rules, each wrapping the library part it
changes, hold a floor per method group instead: adapters (LoRA and QLoRA together) need
`min_adapter_configs`, full fine-tuning needs 1 (the decision compares against it).

- Proposals (`FloorSampler`, around Optuna's TPE): while a group has fewer completed or running
  configurations than its floor, the method of the next proposal is that group's (for adapters, the
  adapter method with the best validation score so far); TPE still chooses every other parameter. The
  sweep's first points (the production-default LoRA, the same as QLoRA, full fine-tuning at 1e-5) come
  first, unchanged. The counts are read from the Optuna study itself, so they survive a resume.
- Pruning (`sweeps.pruning.FloorScheduler`, around ASHA): a stop is turned into "continue" when the
  trial is a new configuration its group needs to reach its floor (completed + running, itself included,
  <= floor). The counts are read from Ray's trials. Every such override is printed, so a weak trial that
  was kept says why.
- `TellPruned` tells Optuna a trial ASHA stopped as PRUNED (its last score as an intermediate value) and a
  failed one as FAIL. Ray's OptunaSearch would tell a stopped trial COMPLETE, with its step-40 score as if
  it were final, and a failed one's NaN leaves the Optuna trial RUNNING; the proposal rule could then not
  tell completed from stopped.

`min_adapter_configs: 0` turns both floors off (plain TPE and ASHA). The search replay of `make bench`
(bench/replay.py) uses these same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

METRIC = "val_quality"
ADAPTER_METHODS = ("lora", "qlora")
CONFIG_KEYS = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
MIN_STARTUP_TRIALS = 3  # without first points, a few random trials before TPE's first model


def group_of(method: Any) -> str:
    return "adapter" if method in ADAPTER_METHODS else str(method)


def method_floors(methods: Iterable[str], min_adapter_configs: int) -> dict[str, int]:
    """Completed configurations each method group needs before ASHA may stop its trials (adapters first:
    that is the order the proposal rule fills them in)."""
    if min_adapter_configs <= 0:
        return {}
    groups = {group_of(m) for m in methods}
    floors = {"adapter": min_adapter_configs} if "adapter" in groups else {}
    if "full" in groups:
        floors["full"] = 1
    return floors


def first_points(space: Any) -> list[dict[str, Any]]:
    """The production default first, then the same settings under each other method (full fine-tuning at
    1e-5, the guides' usual rate), so a short sweep measures every method before TPE takes over."""
    points = list(space.points_to_evaluate())
    default = dict(space.default or {})
    for method in space.method_names:
        if not default or method == default.get("method"):
            continue
        if method == "full":
            candidate = {"method": "full", "learning_rate": 1e-5}
        else:
            candidate = {**default, "method": method}
        if not space.check_point(candidate):
            points.append(space.search_params(candidate))
    return points


def tpe_sampler(first_points: int, seed: int | None = None) -> optuna.samplers.TPESampler:
    """Optuna's TPE, modelling the results from the trial after the first points on.

    TPE's default is 10 random start-up trials on top of them: a short sweep would then never leave random
    sampling. Replayed on the recorded grid, starting after the 3 first points needed 0.72x the dollars of
    the default to reach 95% of the best test quality (bench/REPORT.md).
    """
    return optuna.samplers.TPESampler(n_startup_trials=max(MIN_STARTUP_TRIALS, first_points), seed=seed)


def sampler(
    first_points: int, floors: Mapping[str, int], seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The sweep's sampler: TPE, with the method floors when there are any."""
    tpe = tpe_sampler(first_points, seed)
    return FloorSampler(tpe, floors) if floors else tpe


def searcher(space: Any, min_adapter_configs: int) -> Searcher:
    """Ray's OptunaSearch over the space's define-by-run function, from the first points, floors applied."""
    from ray.tune.search.optuna import OptunaSearch

    points = first_points(space)
    floors = method_floors(space.method_names, min_adapter_configs)
    optuna_search = OptunaSearch(space=space.define_by_run, metric=METRIC, mode="max",
                                 points_to_evaluate=points, sampler=sampler(len(points), floors))  # fmt: skip
    return TellPruned(optuna_search)


# --- the proposal rule ------------------------------------------------------------------------------


def config_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What makes two trials the same configuration (a repeat adds no evidence for the floor)."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def forced_method(trials: Sequence[FrozenTrial], choices: Sequence[Any], floors: Mapping[str, int],
                  current: int | None = None) -> Any | None:  # fmt: skip
    """The method the next proposal must take, or None when every floor is met.

    Counts distinct configurations per group: COMPLETE trials (run to the end) and RUNNING ones (other than
    `current`, the trial being proposed). For adapters, the method with the best completed validation score
    wins (the first in `choices` before any has completed).
    """
    for group, floor in floors.items():
        methods = [m for m in choices if group_of(m) == group]
        if not methods:
            continue
        done = {config_key(t.params) for t in trials
                if t.state == TrialState.COMPLETE and t.params.get("method") in methods}  # fmt: skip
        live = {config_key(t.params) for t in trials
                if t.state == TrialState.RUNNING and t.number != current and t.params.get("method") in methods}  # fmt: skip
        if len(done | live) < floor:
            return max(methods, key=lambda m: (_best(trials, m), -methods.index(m)))
    return None


def _best(trials: Sequence[FrozenTrial], method: Any) -> float:
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.params.get("method") == method
              and t.value is not None and math.isfinite(t.value)]  # fmt: skip
    return max(values, default=-math.inf)


class FloorSampler(optuna.samplers.BaseSampler):
    """Optuna sampler that holds TPE and decides only the "method" parameter while a floor is unmet.

    Enqueued first points carry their method as a fixed parameter, so they never reach this sampler.
    The method is sampled independently (TPE's default, multivariate off), which is where this steps in.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, floors: Mapping[str, int]) -> None:
        self.base = base
        self.floors = dict(floors)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k != "method"}  # the method is always sampled here

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:  # fmt: skip
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:  # fmt: skip
        if param_name == "method" and isinstance(param_distribution, CategoricalDistribution):
            trials = study.get_trials(deepcopy=False)
            method = forced_method(trials, param_distribution.choices, self.floors, trial.number)
            if method is not None:
                return method
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:  # fmt: skip
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


# --- telling Optuna what happened ---------------------------------------------------------------------


def completed(result: Mapping[str, Any] | None) -> bool:
    """Ran to the end: the final report, with its test score (also when the budget cut training short)."""
    return bool(result) and result.get("phase") == "final"  # type: ignore[union-attr]


class TellPruned(Searcher):
    """Wraps Ray's OptunaSearch (Ray's wrapper pattern: the wrapped searcher is `.searcher`, so Tune saves
    and restores it as it does for ConcurrencyLimiter) and corrects what it tells Optuna at a trial's end."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def metric(self) -> Any:
        return self.searcher.metric

    @property
    def mode(self) -> Any:
        return self.searcher.mode

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error or not result:
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


def floor_note(floors: Mapping[str, int], max_trials: int) -> str | None:
    """A line for the start of a sweep: what the floors ask for, and whether max_trials can hold them."""
    if not floors:
        return None
    need = sum(floors.values())
    parts = ", ".join(f"{n} {'adapter (lora/qlora)' if g == 'adapter' else g}" for g, n in floors.items())
    note = (
        f"search: ASHA prunes no trial the method decision needs: at least {parts} completed configuration(s)"
    )
    if max_trials < need:
        note += (f"; max_trials {max_trials} is below the {need} trials that takes, so the decision will say the "
                 f"adapters were tuned with too few configurations (raise TRIALS)")  # fmt: skip
    return note
