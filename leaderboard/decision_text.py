"""The words of the decision: how runs, scores, the escalation conditions and the next step are said."""

from __future__ import annotations

import pandas as pd

from leaderboard import fmt, paired

CONDITIONS = ("margin", "significance", "adapter_configs")  # checked in this order


def conditions_line(conditions: dict[str, bool | None], gain: float, margin: float, test: str | None,
                    p_value: float | None, result: paired.Paired | None, configs: int, needed: int) -> str:
    mark = {True: "met", False: "not met", None: "unknown"}
    margin_text = f"gain {fmt.signed(gain)} > margin {margin:.3g}: {mark[conditions['margin']]}"
    if p_value is not None and result is not None:
        sig_text = (f"paired {test} test on {result.n} test examples, p = {_p(p_value)} (needs < 0.05): "
                    f"{mark[conditions['significance']]}")
    else:
        sig_text = ("no per-example scores to pair, so non-overlapping 95% intervals stand in for a paired "
                    f"test: {mark[conditions['significance']]}")
    config_text = f"{configs} of at least {needed} adapter configurations completed: " \
                  f"{mark[conditions['adapter_configs']]}"
    if all(conditions.values()):
        verdict = "All three are met: escalating to full fine-tuning is justified by the measurement"
    else:
        failed = [name for name in CONDITIONS if conditions.get(name) is False]
        verdict = f"Escalation is blocked by {', '.join(failed)}: full fine-tuning is not recommended"
    return f"Escalation to full fine-tuning needs all of: {margin_text}; {sig_text}; {config_text}. {verdict}."


def next_step(blocked: str | None, configs: int, needed: int, full: pd.Series | None,
              adapter: pd.Series | None) -> str | None:
    more = max(needed - configs, 0)
    adapters_thin = more > 0 and (blocked == "adapter_configs" or (full is not None and adapter is None))
    if adapters_thin:
        plural = "s" if more != 1 else ""
        return (f"run {more} more LoRA/QLoRA configuration{plural} before deciding on full fine-tuning: "
                "`make resume` only finishes the trials a sweep already has, so start a new sweep with room for "
                "more trials (`make sweep BUDGET=... NAME=<new name> TRIALS=<more>`; a search space whose "
                "`method` choices are only lora and qlora spends them all on adapters) on the same data, hence "
                "the same locked test set, then compare both with `sweepboard leaderboard <this sweep> "
                "<new name>`.")
    if blocked == "significance":
        return ("the gain may be noise on this test set: keep the adapter run, or measure on a larger locked "
                "test set (a new data.lock_dir with a larger test_size) before paying for full fine-tuning.")
    return None


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def describe(row: pd.Series) -> str:
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


def score(row: pd.Series) -> str:
    """The reported test score with its interval, and the validation score that chose the run."""
    return f"test {fmt.quality(row['test_quality'])} " \
           f"{fmt.interval(row['test_quality_ci_low'], row['test_quality_ci_high'])} " \
           f"(val {fmt.quality(row['val_quality'])})"


def mb(value: object) -> str:
    return "n/a" if fmt.is_missing(value) else f"{fmt.number(value, 1)} MB"


def ratio(numerator: object, denominator: object) -> float | None:
    if fmt.is_missing(numerator) or fmt.is_missing(denominator) or float(denominator) <= 0:  # type: ignore[arg-type]
        return None
    return float(numerator) / float(denominator)  # type: ignore[arg-type]


def times(multiple: float | None) -> str:
    return "an unknown multiple of" if multiple is None else f"{multiple:.1f}x"
