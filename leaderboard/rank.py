"""Rank runs by test quality per dollar above a quality floor; Pareto front, intervals, and the best run
(chosen on validation) with the runs a paired test cannot tell from it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from leaderboard import choose, paired
from leaderboard.load import normalise_dtypes
from leaderboard.stats import quality_interval

DEFAULT_FLOOR_FRACTION = 0.9  # default floor: 90% of the best test quality
DEFAULT_MARGIN = 0.02  # full fine-tuning must beat the best adapter run by more than this (2 points)

# Leaderboard columns, in display order. "position" is the place on the board; "rank" is the LoRA rank r.
COLUMNS = (
    "position", "run_name", "run_id", "sweep", "method", "rank", "alpha", "target_modules", "learning_rate",
    "test_quality", "test_quality_ci_low", "test_quality_ci_high", "ci_method", "val_quality", "metric",
    "n_test", "cost_usd", "device_hours", "quality_per_dollar", "lift_over_baseline", "pareto", "best",
    "tied_with_best", "p_vs_best", "tie_test", "below_floor", "status", "peak_memory_mb", "adapter_mb",
    "trainable_params", "git_commit", "test_set_sha256", "role", "trial_id", "lora_dropout", "steps",
    "batch_size", "model", "precision", "tokens_per_second", "truncated_train", "truncated_val",
    "truncated_test", "error", "val_curve",
)
TIE_OVERLAP = "interval-overlap"  # tie_test when the pair has no per-example scores to pair


def rank_runs(
    df: pd.DataFrame, min_quality: float | None = None, margin: float = DEFAULT_MARGIN
) -> pd.DataFrame:
    """The leaderboard: one row per run of `df` (as from load_runs), ordered, with the derived columns.

    Order: runs at or above the quality floor by test quality per dollar (best first); then runs below the
    floor by test quality; then runs without a test quality (failed, still running) by cost. The floor is
    `min_quality`, or 90% of the best test quality when None.

    `best` marks the run with the highest validation quality (the split the search used; see choose.py);
    `tied_with_best` marks it and every run a paired test on the per-example test scores cannot tell from it
    (p >= 0.05, in `p_vs_best`), or, for a pair without per-example scores, whose 95% test interval overlaps
    its interval (`tie_test` says which). `ranked.attrs` keeps the floors (test and validation), the margin,
    the best run's id, the per-example scores (for the decision's paired test) and warnings.
    """
    if min_quality is not None and not 0.0 <= min_quality <= 1.0:
        raise ValueError(f"min_quality must be a quality between 0 and 1, got {min_quality}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (in quality units, 0.02 = 2 points), got {margin}")
    out = normalise_dtypes(df.copy().reset_index(drop=True))
    if "scores" not in out:
        out["scores"] = None

    intervals = [
        quality_interval(_num(r.test_quality), r.metric, _int(r.n_test), r.scores)
        for r in out.itertuples(index=False)
    ]
    out["test_quality_ci_low"] = [i[0] for i in intervals]
    out["test_quality_ci_high"] = [i[1] for i in intervals]
    out["ci_method"] = [i[2] for i in intervals]

    cost = out["cost_usd"]
    out["quality_per_dollar"] = np.where(cost > 0, out["test_quality"] / cost.where(cost > 0), np.nan)
    out["lift_over_baseline"] = _lift(out)
    out["pareto"] = pareto_flags(out["test_quality"], out["cost_usd"])
    scores = choose.scores_by_run(out)
    best_row = choose.best_by_validation(out)
    out["best"] = out["run_id"] == best_row["run_id"] if best_row is not None else False
    out["tied_with_best"], out["p_vs_best"], out["tie_test"] = _ties(out, best_row, scores)
    warnings = _selection_warnings(out)

    has_quality = out["test_quality"].notna()
    best = float(out["test_quality"].max()) if has_quality.any() else None
    floor = min_quality if min_quality is not None else (
        DEFAULT_FLOOR_FRACTION * best if best is not None else None
    )
    out["below_floor"] = ~has_quality | (out["test_quality"] < floor if floor is not None else True)
    chosen = choose.eligible(out)
    # The same floor on the split that chooses: the user's, else 90% of the best validation quality.
    val_floor = min_quality if min_quality is not None else (
        DEFAULT_FLOOR_FRACTION * float(chosen["val_quality"].max()) if not chosen.empty else None
    )

    out = _order(out)
    out.insert(0, "position", range(1, len(out) + 1))
    for column in COLUMNS:
        if column not in out:
            out[column] = None
    ranked = out[list(COLUMNS)].copy()
    ranked.attrs.update({
        "sweeps": list(df.attrs.get("sweeps", [])), "min_quality": floor, "margin": margin,
        "best_quality": best, "floor_is_default": min_quality is None, "val_floor": val_floor,
        "selected_on": choose.SELECTED_ON,
        "best_run_id": None if best_row is None else str(best_row["run_id"]),
        "scores": scores, "warnings": warnings,
    })
    return ranked


def pareto_flags(quality: pd.Series, cost: pd.Series) -> list[bool]:
    """True where no other run is at least as good and as cheap, and strictly better on one of the two.

    Runs without a quality or a cost are never on the front.
    """
    q = pd.to_numeric(quality, errors="coerce").to_numpy(dtype=float)
    c = pd.to_numeric(cost, errors="coerce").to_numpy(dtype=float)
    valid = ~(np.isnan(q) | np.isnan(c))
    flags = []
    for i in range(len(q)):
        if not valid[i]:
            flags.append(False)
            continue
        others = valid & (q >= q[i]) & (c <= c[i]) & ((q > q[i]) | (c < c[i]))
        flags.append(not bool(others.any()))
    return flags


def baseline_quality(df: pd.DataFrame, sweep: str | None = None, metric: str | None = None) -> float | None:
    """Test quality of the base model without fine-tuning: the best baseline run of `sweep`, else of any
    sweep measured with the same metric (a token F1 baseline says nothing about exact match)."""
    base = df[_is_baseline(df) & df["test_quality"].notna()]
    if sweep is not None and (base["sweep"] == sweep).any():
        base = base[base["sweep"] == sweep]
    elif metric is not None:
        base = base[base["metric"] == metric]
    return float(base["test_quality"].max()) if not base.empty else None


def _is_baseline(df: pd.DataFrame) -> pd.Series:
    return (df["role"] == "baseline") | (df["method"] == "none")


def _lift(df: pd.DataFrame) -> list[float | None]:
    # Each sweep is compared with its own baseline (sweeps may use different base models).
    lifts: list[float | None] = []
    for row in df.itertuples(index=False):
        base = baseline_quality(df, row.sweep, row.metric)
        quality = _num(row.test_quality)
        lifts.append(None if base is None or quality is None else quality - base)
    return lifts


def _ties(df: pd.DataFrame, best: pd.Series | None, scores: dict[str, np.ndarray]
          ) -> tuple[list[bool], list[float | None], list[str | None]]:
    """Per row: tied with the best run, the paired p-value against it, and the test that decided."""
    results = [_tie(row, best, scores) for _, row in df.iterrows()]
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def _tie(row: pd.Series, best: pd.Series | None, scores: dict[str, np.ndarray]
         ) -> tuple[bool, float | None, str | None]:
    if best is None or _num(row["test_quality"]) is None:
        return False, None, None
    if row["run_id"] == best["run_id"]:
        return True, None, None
    result = choose.pair(row, best, scores)
    if result is None:
        return _overlap(row, best), None, TIE_OVERLAP
    return result.p_value >= paired.ALPHA, result.p_value, result.test


def _overlap(row: pd.Series, best: pd.Series) -> bool:
    """Today's fallback without per-example scores: the two 95% test intervals overlap."""
    low, high = _num(row["test_quality_ci_low"]), _num(row["test_quality_ci_high"])
    b_low, b_high = _num(best["test_quality_ci_low"]), _num(best["test_quality_ci_high"])
    if low is None or high is None or b_low is None or b_high is None:
        return _num(row["test_quality"]) == _num(best["test_quality"])
    return bool(low <= b_high and high >= b_low)


def _selection_warnings(df: pd.DataFrame) -> list[str]:
    warnings = []
    no_val = df[df["test_quality"].notna() & df["val_quality"].isna()]
    if not no_val.empty:
        warnings.append(
            f"{len(no_val)} run(s) have a test quality but no val_quality ({_names(no_val)}): they are shown "
            "and ranked by test quality per dollar, but cannot be chosen as the best or recommended run "
            "(the choice is made on validation)"
        )
    fallback = df[df["tie_test"] == TIE_OVERLAP]
    if not fallback.empty:
        warnings.append(
            f"{len(fallback)} run(s) could not be paired example by example with the best run ({_names(fallback)}; "
            "no per-example test scores, or another test set or metric): their tie with it is 95% interval "
            "overlap, which misses real differences a paired test would find"
        )
    return warnings


def _names(rows: pd.DataFrame, limit: int = 5) -> str:
    names = [str(n) for n in rows["run_name"]]
    return ", ".join(names[:limit]) + (f", and {len(names) - limit} more" if len(names) > limit else "")


def _order(df: pd.DataFrame) -> pd.DataFrame:
    has_quality = df["test_quality"].notna()
    keys = pd.DataFrame({
        "group": np.where(~has_quality, 2, np.where(df["below_floor"], 1, 0)),
        # Within the floor group: quality per dollar; below it: quality; without quality: the costliest first.
        "k1": np.where(has_quality & ~df["below_floor"], -df["quality_per_dollar"],
                       np.where(has_quality, -df["test_quality"], -df["cost_usd"].fillna(0.0))),
        "k2": -df["test_quality"].fillna(-1.0),
        "k3": df["cost_usd"],
    }, index=df.index)
    order = keys.sort_values(["group", "k1", "k2", "k3"], na_position="last", kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _num(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _int(value: object) -> int | None:
    number = _num(value)
    return None if number is None else int(number)
