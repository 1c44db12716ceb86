"""The learning rate first: where each method group's search starts, and when its rate counts as bracketed.

What the literature measured, and this module encodes:
- The best LoRA rate is about 10x the best full fine-tuning rate, and about 15x for runs under 100 steps;
  with alpha held fixed (PEFT's usual alpha/r scaling) it hardly depends on the rank (Thinking Machines,
  "LoRA Without Regret", 2025; the factor 10 is tinker-cookbook's `get_lora_lr_over_full_finetune_lr`).
- The best full fine-tuning rate falls with the model's width. The prior here is tinker-cookbook's earlier
  formula for Llama-family models, 5e-5 x (2000 / hidden_size) ** 0.781 (`hyperparam_utils.get_lr`, before
  it became a table of swept rates: that table's Llama-3.2-1B/3B LoRA rate 1e-3 and Llama-3.1-8B 3e-4 sit
  within 1.5x of the formula x 10). For SmolLM2-135M (hidden 576) it gives 1.3e-4 for full fine-tuning and,
  at 60 steps, 2.0e-3 for adapters; the recorded table of the embedded default has its best full run at 1e-4
  and its best adapters at 1e-3 (bench/record/trials.jsonl).
- A fair LoRA-versus-full comparison needs a learning-rate sweep per method (Biderman et al., "LoRA Learns
  Less and Forgets Less", TMLR 2024); once the rate is tuned, LoRA variants land within 1-2% of each other
  ("Learning Rate Matters: Vanilla LoRA May Suffice", arXiv 2602.04998). Hence: bracket the rate first, then
  explore rank, targets and dropout at it.

A group's rate is **bracketed** when its best rate has a tried neighbour on each side that scored lower on
validation, one ladder step away (about 3x; the adjacent choice of a categorical range), or sits at the edge
of the search space's range on that side. Scores are compared at one fidelity: the deepest validation step
that every compared trial reached (a trial stopped at the first rung and one run to the end are compared at
the first rung). A trial that diverged scored lower than any.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ADAPTER_METHODS = ("lora", "qlora")
GROUPS = ("adapter", "full")
FULL_BASE_RATE = 5e-5  # tinker-cookbook's base rate at hidden size 2000
FULL_WIDTH_EXPONENT = 0.781  # its exponent for Llama-family models
LORA_OVER_FULL = 10.0
LORA_OVER_FULL_SHORT = 15.0  # "about 15x for runs under 100 steps"
SHORT_RUN_STEPS = 100
LADDER_FACTOR = 3.0  # rates about 3x apart: most diverged runs in published sweeps sit at 10x the best
SAME_RATE = 1.5  # two rates within this factor are one rung of the ladder (2e-4 and 2.2e-4)
FAMILY_KEYS = ("method", "rank", "alpha", "target_modules", "lora_dropout")  # all but the rate


def group_of(method: Any) -> str:
    return "adapter" if method in ADAPTER_METHODS else str(method)


def prior_rate(group: str, hidden_size: int | None, steps: int | None) -> float:
    """Where a group's ladder starts: full fine-tuning's rate from the model's width, adapters' ~10x it
    (15x under 100 steps). Without a width (a model whose config cannot be read), a 4096-wide 7-8B model."""
    full = FULL_BASE_RATE * (2000 / (hidden_size or 4096)) ** FULL_WIDTH_EXPONENT
    if group == "full":
        return full
    short = steps is not None and steps < SHORT_RUN_STEPS
    return full * (LORA_OVER_FULL_SHORT if short else LORA_OVER_FULL)


@dataclass(frozen=True)
class RateRange:
    """A group's learning-rate range in the search space: a continuous [low, high], or its choices."""

    low: float
    high: float
    choices: tuple[float, ...] | None = None

    @classmethod
    def of(cls, spec: Any) -> RateRange:
        """From a search-space spec (search_spaces/params.py): FloatRange, Categorical or Fixed."""
        if hasattr(spec, "choices"):
            values = tuple(sorted(float(c) for c in spec.choices))
            return cls(values[0], values[-1], values)
        if hasattr(spec, "value"):
            return cls(float(spec.value), float(spec.value), (float(spec.value),))
        return cls(float(spec.low), float(spec.high))

    def ladder(self, prior: float) -> tuple[float, ...]:
        """The rates the search may propose: the choices, or prior x 3^k inside [low, high] (the prior
        clamped into the range when it lies outside)."""
        if self.choices is not None:
            return self.choices
        start = min(max(prior, self.low), self.high)
        k_low = math.ceil(math.log(self.low / start, LADDER_FACTOR) - 1e-9)
        k_high = math.floor(math.log(self.high / start, LADDER_FACTOR) + 1e-9)
        return tuple(_round(start * LADDER_FACTOR**k) for k in range(k_low, k_high + 1))

    def at_edge(self, rate: float, side: int) -> bool:
        """Whether no rate of the range lies beyond `rate` on `side` (-1 below, +1 above)."""
        if self.choices is not None:
            return not [c for c in self.choices if (c - rate) * side > 0 and not same_rate(c, rate)]
        edge = self.low if side < 0 else self.high
        return same_rate(rate, edge) or (edge - rate) * side <= 0

    def adjacent(self, a: float, b: float) -> bool:
        """Whether no rung of the range lies between two tried rates (they are one ladder step apart)."""
        lo, hi = sorted((a, b))
        if self.choices is not None:
            return not [c for c in self.choices if lo < c < hi and not same_rate(c, lo) and not same_rate(c, hi)]
        return hi / lo <= LADDER_FACTOR * 1.2


def same_rate(a: float, b: float) -> bool:
    return max(a, b) / min(a, b) < SAME_RATE


@dataclass(frozen=True)
class Tried:
    """One trial as the rule sees it: its settings, its validation curve, whether it diverged."""

    config: Mapping[str, Any]  # method, rank, alpha, target_modules, lora_dropout, learning_rate
    curve: Mapping[int, float]  # validation score by step (or report index)
    diverged: bool = False
    label: str = ""  # run name or trial id, for the decision's text

    @property
    def rate(self) -> float:
        return float(self.config["learning_rate"])

    @property
    def family(self) -> tuple[Any, ...]:
        return tuple(_plain(self.config.get(k)) for k in FAMILY_KEYS)


@dataclass(frozen=True)
class Side:
    rate: float | None  # the neighbour's rate; None at the range's edge or when none was tried
    score: float | None  # its score at the bracket's step (-inf when it diverged)
    label: str = ""
    closed: bool = False  # scored lower one ladder step away, or the best sits at the range's edge
    edge: bool = False


@dataclass(frozen=True)
class Bracket:
    group: str
    family: dict[str, Any]  # the settings (all but the rate) the bracket holds fixed
    best_rate: float
    best_score: float
    best_label: str
    step: int | None  # the validation step every compared trial reached
    below: Side
    above: Side
    rates: dict[str, float] = field(default_factory=dict)  # every tried rate of the family -> its score
    next_rates: tuple[float, ...] = ()  # what to try to close an open side

    @property
    def bracketed(self) -> bool:
        return self.below.closed and self.above.closed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bracketed": self.bracketed}


def bracket(tried: Sequence[Tried], group: str, rates: RateRange, prior: float | None = None,
            family: tuple[Any, ...] | None = None) -> Bracket | None:  # fmt: skip
    """The bracket of `group`'s rate over the trials of one family (`family`, else the group's family with
    the most distinct rates tried, ties to the best score); None when the group has no scored trial."""
    mine = [t for t in tried if group_of(t.config.get("method")) == group]
    if family is None:
        family = _widest_family(mine)
    members = [t for t in mine if t.family == family]
    step = _common_step(members)
    points = _points(members, step)
    if not points or family is None:
        return None
    # A tie at the top goes to the rate nearest the prior (else the lower rate): flat scores carry no
    # evidence either way, and the ladder then keeps probing around where the literature puts the rate.
    anchor = prior if prior is not None else min(points)
    best_rate = max(points, key=lambda r: (points[r][0], -abs(math.log(r / anchor)), -r))
    best_score, best_label = points[best_rate]
    below = _side(points, best_rate, -1, rates)
    above = _side(points, best_rate, +1, rates)
    ladder = rates.ladder(prior if prior is not None else best_rate)
    below_next, above_next = (_next(points, best_rate, s, side, ladder) for s, side in ((-1, below), (+1, above)))
    # An open side with no tried rate and no untried rung beyond the best: the ladder ends there, as at the
    # range's edge. (A side whose neighbour tied stays open: flat scores bracket nothing.)
    if not below.closed and below_next is None and below.rate is None:
        below = replace(below, closed=True, edge=True)
    if not above.closed and above_next is None and above.rate is None:
        above = replace(above, closed=True, edge=True)
    wanted = tuple(r for r in (below_next, above_next) if r is not None)
    return Bracket(group, dict(zip(FAMILY_KEYS, family, strict=True)), best_rate, best_score, best_label, step,
                   below, above, {f"{r:.3g}": s for r, (s, _) in sorted(points.items())}, wanted)  # fmt: skip


def _widest_family(trials: Sequence[Tried]) -> tuple[Any, ...] | None:
    families: dict[tuple[Any, ...], list[Tried]] = {}
    for t in trials:
        families.setdefault(t.family, []).append(t)
    if not families:
        return None

    def weight(item: tuple[tuple[Any, ...], list[Tried]]) -> tuple[int, float]:
        rates = {round(math.log(t.rate, SAME_RATE)) for t in item[1]}
        best = max((max(t.curve.values()) for t in item[1] if t.curve), default=-math.inf)
        return len(rates), best

    return max(families.items(), key=weight)[0]


def _common_step(members: Sequence[Tried]) -> int | None:
    reached = [max(t.curve) for t in members if t.curve and not t.diverged]
    return min(reached) if reached else None


def _points(members: Sequence[Tried], step: int | None) -> dict[float, tuple[float, str]]:
    """rate -> (score at `step`, label); a rate tried twice keeps its better score."""
    points: dict[float, tuple[float, str]] = {}
    for t in members:
        if t.diverged:
            score = -math.inf
        elif step is not None and t.curve:
            below = [s for s in t.curve if s <= step]
            if not below:
                continue
            score = float(t.curve[max(below)])
        else:
            continue
        if not math.isfinite(score) and not t.diverged:
            score = -math.inf
        known = next((r for r in points if same_rate(r, t.rate)), t.rate)
        if known not in points or score > points[known][0]:
            points[known] = (score, t.label)
    return points


def _side(points: Mapping[float, tuple[float, str]], best: float, side: int, rates: RateRange) -> Side:
    if rates.at_edge(best, side):
        return Side(None, None, closed=True, edge=True)
    beyond = sorted((r for r in points if (r - best) * side > 0), key=lambda r: abs(math.log(r / best)))
    if not beyond:
        return Side(None, None)
    near = beyond[0]
    score, label = points[near]
    return Side(near, score, label, closed=score < points[best][0] and rates.adjacent(best, near))


def _next(points: Mapping[float, tuple[float, str]], best: float, side: int, side_state: Side,
          ladder: Sequence[float]) -> float | None:
    """The rung to try on an open side: the nearest untried rung beyond `best` (before a lower-scoring
    neighbour that is too far away, or past one that tied)."""
    if side_state.closed:
        return None
    rungs = sorted((r for r in ladder if (r - best) * side > 0 and not any(same_rate(r, p) for p in points)),
                   key=lambda r: abs(math.log(r / best)))  # fmt: skip
    if side_state.rate is not None and side_state.score is not None and side_state.score < points[best][0]:
        rungs = [r for r in rungs if abs(math.log(r / best)) < abs(math.log(side_state.rate / best))]
    return rungs[0] if rungs else None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _round(rate: float) -> float:
    return float(f"{rate:.3g}")


TARGET_BREADTH = {"attention": 0, "attention+mlp": 1, "all-linear": 2}  # the presets, narrow to broad


@dataclass(frozen=True)
class Capacity:
    """An adapter trial with more capacity than the bracket's family (a higher rank, or broader targets)
    at the bracketed rate, and what it gained over the bracket's best at their common step."""

    label: str
    config: dict[str, Any]
    score: float
    best_score: float
    step: int | None

    @property
    def gain(self) -> float:
        return self.score - self.best_score

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gain": self.gain}


def capacity_tried(tried: Sequence[Tried], found: Bracket) -> list[Capacity]:
    """The adapter trials that raised capacity over `found`'s family at its best rate, best gain first."""
    base = found.family
    out = []
    reference = next((t for t in tried if t.family == tuple(base.values()) and same_rate(t.rate, found.best_rate)
                      and not t.diverged and t.curve), None)  # fmt: skip
    for t in tried:
        if group_of(t.config.get("method")) != "adapter" or not same_rate(t.rate, found.best_rate) or not t.curve:
            continue
        if not _more_capacity(t.config, base) or t.diverged:
            continue
        step = min(max(t.curve), max(reference.curve)) if reference is not None else max(t.curve)
        mine = _at(t.curve, step)
        theirs = _at(reference.curve, step) if reference is not None else found.best_score
        if mine is None or theirs is None:
            continue
        out.append(Capacity(t.label, dict(t.config), mine, theirs, step))
    return sorted(out, key=lambda c: -c.gain)


def capacity_point(found: Bracket, ranks: Sequence[int], targets: Sequence[str]) -> dict[str, Any] | None:
    """The one capacity increase to try at the bracketed rate: all linear layers when the family targets
    fewer and the space offers them (LoRA on all linear layers beats attention-only at equal parameters,
    "LoRA Without Regret"), else the next higher rank the space offers; None when neither exists."""
    family = dict(found.family)
    now = TARGET_BREADTH.get(str(family.get("target_modules")), 2)
    broader = [t for t in targets if TARGET_BREADTH.get(str(t), -1) > now]
    if broader:
        family["target_modules"] = max(broader, key=lambda t: TARGET_BREADTH[str(t)])
    else:
        higher = sorted(r for r in ranks if r > int(family.get("rank") or 0))
        if not higher:
            return None
        family["rank"] = higher[0]
    return {**family, "learning_rate": found.best_rate}


def raises_capacity(config: Mapping[str, Any], leader: Mapping[str, Any]) -> bool:
    """Whether `config` is `leader`'s adapter settings with more capacity, at the same learning rate."""
    rates = [config.get("learning_rate"), leader.get("learning_rate")]
    if not all(isinstance(x, (int, float)) and x > 0 for x in rates):
        return False
    return same_rate(float(rates[0]), float(rates[1])) and _more_capacity(config, leader)  # type: ignore[arg-type]


def _more_capacity(config: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    if config.get("method") != base.get("method") or config.get("lora_dropout") != base.get("lora_dropout"):
        return False
    rank, base_rank = int(config.get("rank") or 0), int(base.get("rank") or 0)
    breadth = TARGET_BREADTH.get(str(config.get("target_modules")), -1)
    base_breadth = TARGET_BREADTH.get(str(base.get("target_modules")), -1)
    return (rank, breadth) != (base_rank, base_breadth) and rank >= base_rank and breadth >= base_breadth


def _at(curve: Mapping[int, float], step: int | None) -> float | None:
    below = [s for s in curve if step is None or s <= step]
    return float(curve[max(below)]) if below else None


def rate_ranges(space: Any) -> dict[str, RateRange]:
    """Each group's learning-rate range in a search space (search_spaces/space.py), from its first method
    that searches one (the adapter group's from its default method when the default is an adapter)."""
    default_method = (space.default or {}).get("method")
    out: dict[str, RateRange] = {}
    order = sorted(space.method_names, key=lambda m: m != default_method)
    for method in order:
        spec = space.methods[method].params.get("learning_rate")
        if spec is not None:
            out.setdefault(group_of(method), RateRange.of(spec))
    return out


UNKNOWN_RANGE = RateRange(1e-6, 1e-2)  # where the space is not known (a board of runs from elsewhere)
