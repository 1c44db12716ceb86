"""The method decision, after the practice in DESIGN.md.

Baseline the base model first; then LoRA/QLoRA; escalate to full fine-tuning only when the measurement shows
it beating the best adapter run by more than a stated margin. The recommendation is otherwise the adapter run
with the most quality per dollar among those that reach the quality floor (the top adapter row of the board).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from leaderboard import fmt
from leaderboard.rank import DEFAULT_FLOOR_FRACTION, DEFAULT_MARGIN

ADAPTER_METHODS = ("lora", "qlora")
_EPS = 1e-9  # 0.83 - 0.81 is 0.0200000000000000018 in floats: exactly the margin must not count as beating it
SUMMARY_FIELDS = (
    "position", "run_id", "run_name", "sweep", "method", "rank", "alpha", "target_modules", "learning_rate",
    "test_quality", "test_quality_ci_low", "test_quality_ci_high", "cost_usd", "quality_per_dollar",
    "adapter_mb", "tied_with_best", "below_floor", "status",
)


@dataclass
class Decision:
    text: str
    recommended: dict[str, Any] | None
    reason: str
    baseline_quality: float | None
    best_adapter: dict[str, Any] | None
    best_full: dict[str, Any] | None
    full_gain: float | None  # best full quality - best adapter quality
    full_cost_multiple: float | None  # cost of that full run / cost of that adapter run
    escalate_to_full: bool | None  # None when there was nothing to compare
    margin: float
    min_quality: float | None
    metric: str | None
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(ranked: pd.DataFrame, margin: float | None = None) -> Decision:
    """The decision for a board from rank_runs (its floor and margin come from `ranked.attrs`)."""
    margin = ranked.attrs.get("margin", DEFAULT_MARGIN) if margin is None else margin
    measured = ranked[ranked["test_quality"].notna()]
    floor = ranked.attrs.get("min_quality")
    if floor is None and not measured.empty:
        floor = DEFAULT_FLOOR_FRACTION * float(measured["test_quality"].max())
    metrics = measured["metric"].dropna().unique()
    metric = str(metrics[0]) if len(metrics) == 1 else None
    unit = metric or "quality"

    base = measured[(measured["role"] == "baseline") | (measured["method"] == "none")]
    base_row = _best(base)
    adapter_row = _best(measured[measured["method"].isin(ADAPTER_METHODS)])
    full_row = _best(measured[measured["method"] == "full"])
    baseline_quality = None if base_row is None else float(base_row["test_quality"])

    lines = []
    if base_row is not None:
        lines.append(f"Baseline (base model, no fine-tuning): {fmt.quality(baseline_quality)} {unit} "
                     f"{fmt.interval(base_row['test_quality_ci_low'], base_row['test_quality_ci_high'])}.")
    else:
        lines.append("No baseline run: the lift over the base model is unknown (baseline it first).")
    if adapter_row is not None:
        lines.append(f"Best LoRA/QLoRA run: {_describe(adapter_row)}: {_score(adapter_row)} for "
                     f"{fmt.usd(adapter_row['cost_usd'])}.")
    else:
        lines.append("No LoRA/QLoRA run has a test quality.")

    gain = multiple = escalate = None
    if full_row is not None and adapter_row is not None:
        gain = float(full_row["test_quality"]) - float(adapter_row["test_quality"])
        multiple = _ratio(full_row["cost_usd"], adapter_row["cost_usd"])
        escalate = gain > margin + _EPS
        verdict = (f"more than the {margin:.3g} margin, so escalating to full fine-tuning is justified by "
                   "the measurement" if escalate else
                   f"within the {margin:.3g} margin, so full fine-tuning is not worth it here")
        lines.append(f"Full fine-tuning: best run {_describe(full_row)} at {_score(full_row)} for "
                     f"{fmt.usd(full_row['cost_usd'])}, {fmt.signed(gain)} over the best adapter run at "
                     f"{_times(multiple)} its cost: {verdict}.")
    elif full_row is not None:
        lines.append(f"Full fine-tuning: best run {_describe(full_row)} at {_score(full_row)}; "
                     "no adapter run to compare it with.")
    else:
        lines.append("No full fine-tuning run: escalation was not measured "
                     "(nor needed unless LoRA falls short).")

    recommended, reason = _recommend(ranked, base_row, adapter_row, full_row, escalate, margin)
    if recommended is not None:
        tie = " It is statistically tied with the best run." if bool(recommended["tied_with_best"]) else ""
        below = " It is below the quality floor." if bool(recommended["below_floor"]) else ""
        lines.append(
            f"Recommended: {_describe(recommended)}: quality {_score(recommended)}, cost "
            f"{fmt.usd(recommended['cost_usd'])}, adapter {_mb(recommended['adapter_mb'])}, "
            f"{fmt.number(recommended['quality_per_dollar'])} quality per dollar ({reason}).{tie}{below}"
        )
    else:
        lines.append(f"No recommendation: {reason}.")
    return Decision(
        text=" ".join(lines), recommended=_summary(recommended), reason=reason,
        baseline_quality=baseline_quality, best_adapter=_summary(adapter_row), best_full=_summary(full_row),
        full_gain=gain, full_cost_multiple=multiple, escalate_to_full=escalate, margin=float(margin),
        min_quality=None if floor is None else float(floor), metric=metric, lines=lines,
    )


def _recommend(
    ranked: pd.DataFrame, base: pd.Series | None, adapter: pd.Series | None, full: pd.Series | None,
    escalate: bool | None, margin: float,
) -> tuple[pd.Series | None, str]:
    tuned = [r for r in (adapter, full) if r is not None]
    if not tuned:
        if base is not None:
            return base, "no fine-tuned run has a test quality yet"
        return None, "no run has a test quality (all failed or are still running)"
    best_tuned = max(float(r["test_quality"]) for r in tuned)
    if base is not None and best_tuned - float(base["test_quality"]) <= margin + _EPS:
        return base, f"no fine-tuned run beats the base model by more than the {margin:.3g} margin"
    on_board = ranked[ranked["test_quality"].notna()]
    if escalate and adapter is not None:
        bar = float(adapter["test_quality"]) + margin + _EPS
        full_rows = on_board[(on_board["method"] == "full") & (on_board["test_quality"] > bar)]
        return full_rows.iloc[0], ("the full fine-tuning run with the most quality per dollar that beats "
                                   "the best adapter run by more than the margin")
    family = ADAPTER_METHODS if adapter is not None else ("full",)
    rows = on_board[on_board["method"].isin(family)]
    above = rows[~rows["below_floor"].astype(bool)]
    if not above.empty:
        return above.iloc[0], "most quality per dollar at or above the quality floor"
    return _best(rows), "highest quality, though no run of this method reaches the quality floor"


def _best(rows: pd.DataFrame) -> pd.Series | None:
    """Highest quality; the cheaper run on equal quality."""
    if rows.empty:
        return None
    return rows.sort_values(["test_quality", "cost_usd"], ascending=[False, True], kind="stable").iloc[0]


def _describe(row: pd.Series) -> str:
    parts = [str(row["method"])]
    if not fmt.is_missing(row["rank"]):
        parts.append(f"r={fmt.integer(row['rank'])}")
    if not fmt.is_missing(row["alpha"]):
        parts.append(f"alpha={fmt.integer(row['alpha'])}")
    if not fmt.is_missing(row["learning_rate"]):
        parts.append(f"lr={fmt.rate(row['learning_rate'])}")
    if not fmt.is_missing(row["target_modules"]):
        parts.append(f"targets {row['target_modules']}")
    return f"{row['run_name']} ({', '.join(parts)})"


def _score(row: pd.Series) -> str:
    return f"{fmt.quality(row['test_quality'])} " \
           f"{fmt.interval(row['test_quality_ci_low'], row['test_quality_ci_high'])}"


def _mb(value: object) -> str:
    return "n/a" if fmt.is_missing(value) else f"{fmt.number(value, 1)} MB"


def _ratio(numerator: object, denominator: object) -> float | None:
    if fmt.is_missing(numerator) or fmt.is_missing(denominator) or float(denominator) <= 0:  # type: ignore[arg-type]
        return None
    return float(numerator) / float(denominator)  # type: ignore[arg-type]


def _times(multiple: float | None) -> str:
    return "an unknown multiple of" if multiple is None else f"{multiple:.1f}x"


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
