"""The method decision, after the fine-tuning practice the product encodes.

Baseline the base model first; then LoRA/QLoRA; escalate to full fine-tuning only when the measurement shows
it is worth it. Every run compared here is chosen on validation (the split the search used): the best
adapter run and the best full run are the ones with the highest val_quality. Their locked test scores, the
reported ones, are then compared, example by example (choose.py, paired.py). Escalating needs all of:

1. margin: the full run's test quality beats the adapter run's by more than the margin;
2. significance: a paired test on the per-example test scores finds that gain significant (p < 0.05);
3. adapter_rate_bracketed: LoRA's learning rate is bracketed on validation (search_spaces/rates.py): its
   best rate has a lower-scoring neighbour one ladder step away on each side, or the search range's edge;
4. full_rate_bracketed: the same for full fine-tuning, so neither method loses on an untuned rate;
5. adapter_capacity: a higher rank or broader target modules was tried at LoRA's bracketed best rate.

Conditions 3-5 (evidence.py) make the adapter's limit a measured one, not a rate or a rank left untried.
Otherwise the adapter run is recommended, and the decision says which condition failed and what to run next.
The recommended run of a family is the one with the most validation quality per dollar among its runs at or
above the validation floor (the quality floor applied to val_quality).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from leaderboard import choose, evidence, fmt, paired
from leaderboard.decision_text import (
    CONDITIONS,
    capacity_line,
    conditions_line,
    describe,
    mb,
    next_step,
    rate_line,
    ratio,
    score,
    times,
)
from leaderboard.rank import DEFAULT_FLOOR_FRACTION, DEFAULT_MARGIN
from search_spaces.rates import RateRange

ADAPTER_METHODS = ("lora", "qlora")
# What makes two adapter runs the same configuration (the searched settings).
CONFIG_COLUMNS = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
_EPS = 1e-9  # 0.83 - 0.81 is 0.0200000000000000018 in floats: exactly the margin must not count as beating it
SUMMARY_FIELDS = (
    "position", "run_id", "run_name", "sweep", "method", "rank", "alpha", "target_modules", "learning_rate",
    "val_quality", "test_quality", "test_quality_ci_low", "test_quality_ci_high", "cost_usd",
    "quality_per_dollar", "adapter_mb", "best", "tied_with_best", "p_vs_best", "below_floor", "status",
)


@dataclass
class Decision:
    text: str
    recommended: dict[str, Any] | None
    reason: str
    baseline_quality: float | None
    best_adapter: dict[str, Any] | None
    best_full: dict[str, Any] | None
    full_gain: float | None  # test quality of the best full run - that of the best adapter run (both by val)
    full_cost_multiple: float | None  # cost of that full run / cost of that adapter run
    escalate_to_full: bool | None  # None when there was nothing to compare
    margin: float
    min_quality: float | None
    metric: str | None
    selected_on: str = choose.SELECTED_ON
    val_floor: float | None = None
    full_vs_adapter_p_value: float | None = None
    full_vs_adapter_test: str | None = None  # mcnemar-exact | paired-bootstrap | interval-overlap | None
    adapter_configs_completed: int = 0  # informative: distinct adapter configurations with a test score
    escalation_conditions: dict[str, bool | None] = field(default_factory=dict)
    escalation_blocked_by: str | None = None  # the first failed condition of CONDITIONS, or None
    next_step: str | None = None
    lines: list[str] = field(default_factory=list)
    # The learning-rate evidence as data (evidence.py): {"adapter": bracket | None, "full": bracket | None},
    # the adapter capacity tried at the bracketed rate, and the ranges the brackets were judged in.
    brackets: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    capacity: list[dict[str, Any]] = field(default_factory=list)
    rate_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(ranked: pd.DataFrame, margin: float | None = None,
           ranges: dict[str, RateRange] | None = None) -> Decision:
    """The decision for a board from rank_runs (its floors, margin and per-example scores come from
    `ranked.attrs`). `ranges`: the search space's learning-rate range per method group (rate_ranges of
    search_spaces/rates.py), where a bracket may close at the edge; None (or a group missing) assumes
    UNKNOWN_RANGE."""
    margin = ranked.attrs.get("margin", DEFAULT_MARGIN) if margin is None else margin
    scores = ranked.attrs.get("scores") or {}
    measured = ranked[ranked["test_quality"].notna()]
    floor = ranked.attrs.get("min_quality")
    if floor is None and not measured.empty:
        floor = DEFAULT_FLOOR_FRACTION * float(measured["test_quality"].max())
    val_floor = ranked.attrs.get("val_floor")
    metrics = measured["metric"].dropna().unique()
    metric = str(metrics[0]) if len(metrics) == 1 else None
    unit = metric or "quality"

    base_row = choose.best_by_validation(measured[_is_base(measured)])
    adapter_row = choose.best_by_validation(measured[measured["method"].isin(ADAPTER_METHODS)])
    full_row = choose.best_by_validation(measured[measured["method"] == "full"])
    baseline_quality = None if base_row is None else float(base_row["test_quality"])
    configs = adapter_configs(measured)
    found = evidence.gather(ranked, ranges)

    lines = [f"Chosen on validation ({choose.SELECTION_COLUMN}, the split the search used): the best baseline, "
             "adapter and full runs below have the highest validation quality of their kind, the recommended "
             "run the most validation quality per dollar; every score shown and compared is on the locked "
             "test set."]
    if base_row is not None:
        lines.append(f"Baseline (base model, no fine-tuning): {fmt.quality(baseline_quality)} {unit} "
                     f"{fmt.interval(base_row['test_quality_ci_low'], base_row['test_quality_ci_high'])}.")
    else:
        lines.append("No baseline run: the lift over the base model is unknown (baseline it first).")
    if adapter_row is not None:
        lines.append(f"Best LoRA/QLoRA run (of {configs} completed configuration(s)): {describe(adapter_row)}: "
                     f"{score(adapter_row)} for {fmt.usd(adapter_row['cost_usd'])}.")
    else:
        lines.append("No LoRA/QLoRA run has both a validation and a test quality.")
    if found.adapter is not None:  # what limit LoRA hit: its rate, bracketed or not, and its capacity
        lines.append(rate_line(found.adapter))
        if found.adapter.bracketed:
            lines.append(capacity_line(found.adapter, found.capacity))

    gain = multiple = escalate = None
    test = p_value = None
    conditions: dict[str, bool | None] = {}
    if full_row is not None and adapter_row is not None:
        gain = float(full_row["test_quality"]) - float(adapter_row["test_quality"])
        multiple = ratio(full_row["cost_usd"], adapter_row["cost_usd"])
        result = choose.pair(full_row, adapter_row, scores)
        if result is not None:
            test, p_value = result.test, result.p_value
            significant = p_value < paired.ALPHA and gain > 0
        else:  # no per-example scores to pair: non-overlapping 95% intervals stand in (said in the warnings)
            test = "interval-overlap"
            significant = gain > 0 and not _overlap(full_row, adapter_row)
        conditions = {"margin": gain > margin + _EPS, "significance": significant, **found.conditions()}
        escalate = all(conditions.values())
        lines.append(f"Full fine-tuning: best run {describe(full_row)} at {score(full_row)} for "
                     f"{fmt.usd(full_row['cost_usd'])}, {fmt.signed(gain)} test {unit} over the best adapter run "
                     f"at {times(multiple)} its cost.")
        if found.full is not None:
            lines.append(rate_line(found.full))
        lines.append(conditions_line(conditions, gain, margin, test, p_value, result))
    elif full_row is not None:
        lines.append(f"Full fine-tuning: best run {describe(full_row)} at {score(full_row)}; "
                     "no adapter run to compare it with.")
    else:
        lines.append("No full fine-tuning run: escalation was not measured "
                     "(nor needed unless LoRA falls short).")
    blocked = next((name for name in CONDITIONS if conditions.get(name) is False), None)
    advice = next_step(blocked, found, full_row, adapter_row)

    recommended, reason = _recommend(ranked, base_row, adapter_row, full_row, escalate, margin, val_floor)
    if recommended is not None:
        tie = " It is statistically tied with the best run." \
            if bool(recommended["tied_with_best"]) and not bool(recommended["best"]) else ""
        below = " Its test score is below the quality floor." if bool(recommended["below_floor"]) else ""
        lines.append(
            f"Recommended: {describe(recommended)}: {score(recommended)}, cost "
            f"{fmt.usd(recommended['cost_usd'])}, adapter {mb(recommended['adapter_mb'])}, "
            f"{fmt.number(recommended['quality_per_dollar'])} quality per dollar ({reason}).{tie}{below}"
        )
    else:
        lines.append(f"No recommendation: {reason}.")
    if advice:
        lines.append(f"Next: {advice}")
    return Decision(
        text=" ".join(lines), recommended=_summary(recommended), reason=reason,
        baseline_quality=baseline_quality, best_adapter=_summary(adapter_row), best_full=_summary(full_row),
        full_gain=gain, full_cost_multiple=multiple, escalate_to_full=escalate, margin=float(margin),
        min_quality=None if floor is None else float(floor), metric=metric,
        val_floor=None if val_floor is None else float(val_floor), full_vs_adapter_p_value=p_value,
        full_vs_adapter_test=test, adapter_configs_completed=configs, escalation_conditions=conditions,
        escalation_blocked_by=blocked, next_step=advice, lines=lines, **found.to_dict(),
    )


def adapter_configs(rows: pd.DataFrame) -> int:
    """Distinct LoRA/QLoRA configurations that reached a test score (two runs of one config count once)."""
    adapters = rows[rows["method"].isin(ADAPTER_METHODS) & rows["test_quality"].notna()]
    if adapters.empty:
        return 0
    keys = adapters[list(CONFIG_COLUMNS)].astype(object).where(adapters[list(CONFIG_COLUMNS)].notna(), None)
    return len({tuple(_key(v) for v in row) for row in keys.itertuples(index=False)})


def _key(value: object) -> object:
    if isinstance(value, float):
        return round(value, 12)  # 2e-4 read back from a string param must equal 2e-4
    if isinstance(value, str):
        return ",".join(sorted(m.strip() for m in value.split(","))) if "," in value else value.strip()
    return value


def _recommend(
    ranked: pd.DataFrame, base: pd.Series | None, adapter: pd.Series | None, full: pd.Series | None,
    escalate: bool | None, margin: float, val_floor: float | None,
) -> tuple[pd.Series | None, str]:
    tuned = [r for r in (adapter, full) if r is not None]
    if not tuned:
        if base is not None:
            return base, "no fine-tuned run has a validation and a test quality yet"
        return None, ("no run has both a validation and a test quality to choose by (all failed, are still "
                      "running, or logged no val_quality)")
    best_tuned = max(tuned, key=lambda r: float(r["val_quality"]))
    if base is not None and float(best_tuned["test_quality"]) - float(base["test_quality"]) <= margin + _EPS:
        return base, (f"the best fine-tuned run by validation does not beat the base model's test score by "
                      f"more than the {margin:.3g} margin")
    if escalate and full is not None:
        return full, ("the best full fine-tuning run by validation, which beats the best adapter run "
                      "significantly and by more than the margin, both learning rates bracketed")
    family = ADAPTER_METHODS if adapter is not None else ("full",)
    rows = choose.eligible(ranked[ranked["method"].isin(family)])
    above = rows if val_floor is None else rows[rows["val_quality"] >= val_floor - _EPS]
    priced = above[above["cost_usd"] > 0]
    if not priced.empty:
        per_dollar = priced["val_quality"] / priced["cost_usd"]
        order = priced.assign(_qpd=per_dollar).sort_values(
            ["_qpd", "val_quality", "run_id"], ascending=[False, False, True], kind="stable")
        return order.drop(columns="_qpd").iloc[0], ("most validation quality per dollar at or above the "
                                                    "validation floor")
    if above.empty:
        return choose.best_by_validation(rows), ("highest validation quality, though no run of this method "
                                                 "reaches the validation floor")
    return choose.best_by_validation(above), "highest validation quality; no run of it has a cost to divide by"


def _is_base(rows: pd.DataFrame) -> pd.Series:
    return (rows["role"] == "baseline") | (rows["method"] == "none")


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    values = [a["test_quality_ci_low"], a["test_quality_ci_high"], b["test_quality_ci_low"],
              b["test_quality_ci_high"]]
    if any(fmt.is_missing(v) for v in values):
        return True  # no interval either: nothing shows a difference
    a_low, a_high, b_low, b_high = (float(v) for v in values)
    return a_low <= b_high and a_high >= b_low


def _summary(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {name: _plain(row.get(name)) for name in SUMMARY_FIELDS}


def _plain(value: object) -> Any:
    """numpy/pandas scalars to JSON-friendly Python values; missing to None."""
    if fmt.is_missing(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
