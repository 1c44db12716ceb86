"""What the search runs before TPE decides alone: the learning rate of each method group, then capacity.

The rule (search_spaces/rates.py holds the knowledge and the bracket test; this module turns it into the
next trial to run, from the Optuna study's trials, so a resumed sweep continues where it stood):

1. the production default (the sweep's first point, enqueued by Ray's OptunaSearch);
2. the adapter group's prior rate on the default's adapter settings (its "family": method, rank, alpha,
   targets, dropout), then full fine-tuning's prior rate;
3. the next rung of each group's ladder (about 3x apart) until its best rate is bracketed: a worse
   neighbour one rung away on each side, or the edge of the space's range;
4. one capacity increase for the adapters at their bracketed rate: all linear layers, or a higher rank;
5. then TPE over every other setting, the learning rate held at each group's bracketed best.

Rates are compared at the deepest validation report every compared trial reached, so ASHA may stop the
ladder's poor rungs at the first rung; the group's leader is kept to the end (sweeps/pruning.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search_spaces import rates as r
from search_spaces.params import is_searched
from search_spaces.space import METHOD_PARAM, param_name, to_config

DIVERGED = "diverged"  # the Optuna user attribute of a trial that diverged (sweeps/search.py sets it)


@dataclass(frozen=True)
class Priors:
    """Where each group's ladder starts (search_spaces.rates.prior_rate of the sweep's model and steps)."""

    adapter: float
    full: float

    @classmethod
    def of(cls, hidden_size: int | None, steps: int | None) -> Priors:
        return cls(r.prior_rate("adapter", hidden_size, steps), r.prior_rate("full", hidden_size, steps))

    def of_group(self, group: str) -> float:
        return self.adapter if group == "adapter" else self.full


def tried(trials: Sequence[FrozenTrial], space: Any) -> list[r.Tried]:
    """The study's trials that carry evidence: scored (intermediate values or a final value) or diverged."""
    out = []
    for t in trials:
        config = config_of(t.params, space)
        if config is None:
            continue
        diverged = bool(t.user_attrs.get(DIVERGED))
        # Only finite scores: a trial that failed without diverging (out of memory, a crash) says nothing
        # about its rate.
        curve = {int(k): float(v) for k, v in t.intermediate_values.items() if math.isfinite(v)}
        if not curve and t.state == TrialState.COMPLETE and t.value is not None:
            curve[1] = float(t.value)  # told its final score only (no reports reached the study)
        if curve or diverged:
            out.append(r.Tried(config, curve, diverged, str(t.number)))
    return out


def taken(trials: Sequence[FrozenTrial], space: Any) -> list[dict[str, Any]]:
    """Every configuration the study has run, is running or holds in its queue."""
    out = []
    for t in trials:
        params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})
        config = config_of(params, space)
        if config is not None:
            out.append(config)
    return out


def config_of(params: Mapping[str, Any], space: Any) -> dict[str, Any] | None:
    """The trial config (method, rank, ...) an Optuna parameter set stands for; None for a partial one."""
    method = params.get(METHOD_PARAM, space.method_names[0] if len(space.method_names) == 1 else None)
    if method not in space.method_names:
        return None
    values = {}
    for name, spec in space.methods[method].params.items():
        key = param_name(method, name)
        if key in params:
            values[name] = params[key]
        elif not is_searched(spec):
            values[name] = spec.value
        else:
            return None
    return to_config(method, values)


def reference_family(space: Any, group: str) -> dict[str, Any] | None:
    """The settings a group's ladder holds fixed: the production default's for adapters (its method when
    it is an adapter, else the space's first adapter method with its first choices), none for full."""
    methods = [m for m in space.method_names if r.group_of(m) == group]
    if not methods:
        return None
    if group == "full":
        return {"method": "full", "rank": None, "alpha": None, "target_modules": None, "lora_dropout": None}
    default = dict(space.default or {})
    if default.get("method") in methods:
        return {k: default.get(k) for k in r.FAMILY_KEYS}
    method = methods[0]
    values = {name: (spec.choices[0] if hasattr(spec, "choices") else getattr(spec, "value", getattr(spec, "low", None)))
              for name, spec in space.methods[method].params.items()}  # fmt: skip
    values.setdefault("learning_rate", 0.0)
    return {k: to_config(method, values).get(k) for k in r.FAMILY_KEYS}


def brackets(trials: Sequence[FrozenTrial], space: Any, priors: Priors) -> dict[str, r.Bracket | None]:
    """Each group's bracket over its reference family, from the study."""
    evidence = tried(trials, space)
    ranges = r.rate_ranges(space)
    out: dict[str, r.Bracket | None] = {}
    for group in r.GROUPS:
        family = reference_family(space, group)
        if family is None or group not in ranges:
            continue
        out[group] = r.bracket(evidence, group, ranges[group], priors.of_group(group), tuple(family.values()))
    return out


def next_point(trials: Sequence[FrozenTrial], space: Any, priors: Priors) -> dict[str, Any] | None:
    """The next configuration the evidence needs (a trial config), or None when TPE may decide."""
    ranges = r.rate_ranges(space)
    found = brackets(trials, space, priors)
    busy = taken(trials, space)
    wanted: list[dict[str, Any]] = []
    for group in found:  # 2. each group's prior rung
        family = reference_family(space, group)
        ladder = ranges[group].ladder(priors.of_group(group))
        prior = min(ladder, key=lambda rate: abs(_log(rate) - _log(priors.of_group(group))))
        wanted.append({**(family or {}), "learning_rate": prior})
    for bracket in found.values():  # 3. the rungs that close an open side
        if bracket is not None and not bracket.bracketed:
            wanted += [{**bracket.family, "learning_rate": rate} for rate in bracket.next_rates]
    adapter = found.get("adapter")
    if adapter is not None and adapter.bracketed:  # 4. capacity at the bracketed rate
        evidence = tried(trials, space)
        if not r.capacity_tried(evidence, adapter):
            point = r.capacity_point(adapter, *_choices(space, adapter.family["method"]))
            if point is not None:
                wanted.append(point)
    for point in wanted:
        if not any(_same(point, other) for other in busy) and not space.check_point(point):
            return point
    return None


def held_rates(trials: Sequence[FrozenTrial], space: Any, priors: Priors) -> dict[str, Any]:
    """Optuna parameters that hold each bracketed group's rate at its best once the evidence is in: what
    TPE's free proposals are enqueued with (it chooses everything else)."""
    held: dict[str, Any] = {}
    for group, bracket in brackets(trials, space, priors).items():
        if bracket is None or not bracket.bracketed:
            continue
        for method in space.method_names:
            spec = space.methods[method].params.get("learning_rate")
            if r.group_of(method) == group and spec is not None and is_searched(spec):
                # The group's rate, inside this method's own range (QLoRA's may end below LoRA's).
                rungs = r.RateRange.of(spec).ladder(bracket.best_rate)
                held[param_name(method, "learning_rate")] = min(rungs, key=lambda x: abs(_log(x / bracket.best_rate)))
    return held


def evidence_trials(space: Any) -> int:
    """How many trials the evidence takes at the least (the production default, each group's ladder of
    three rungs or two where the prior sits at an edge of a range, one capacity increase): what a sweep's
    max_trials must hold for the method decision to be able to escalate."""
    ranges = r.rate_ranges(space)
    need = 1 if space.default else 0
    for span in ranges.values():
        rungs = len(span.choices) if span.choices is not None else 3
        need += min(3, rungs)
    if "adapter" in ranges:
        need += 1
    return need


def _choices(space: Any, method: str) -> tuple[list[int], list[str]]:
    params = space.methods[method].params

    def values(name: str) -> list[Any]:
        spec = params.get(name)
        if spec is None:
            return []
        return list(getattr(spec, "choices", None) or [getattr(spec, "value", None)])

    return [int(v) for v in values("rank") if v is not None], [str(v) for v in values("target_modules") if v]


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if any(a.get(k) != b.get(k) for k in r.FAMILY_KEYS if k not in ("rank", "alpha")):
        return False
    if any((a.get(k) or 0) != (b.get(k) or 0) for k in ("rank", "alpha")):
        return False
    return r.same_rate(float(a["learning_rate"]), float(b["learning_rate"]))


def _log(x: float) -> float:
    return math.log(x)
