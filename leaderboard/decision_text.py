"""The words of the decision: how runs, scores, the escalation conditions and the next step are said."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from leaderboard import fmt, paired
from leaderboard.evidence import Evidence
from search_spaces.rates import Bracket, Capacity, Side

CONDITIONS = ("margin", "significance", "adapter_rate_bracketed", "full_rate_bracketed",
              "adapter_capacity")  # checked in this order
GROUP_NAMES = {"adapter": "LoRA", "full": "full fine-tuning"}
# How to run named trials: a sweep only finishes the trials it has, so new points need a new sweep on the
# same data (hence the same locked test set), compared with this one on one board.
HOW_TO_RUN = ("Run them in a new sweep on the same data whose search space fixes those settings (`make "
              "resume` only finishes the trials a sweep already has), then compare both with `sweepboard "
              "leaderboard <this sweep> <new name>`.")


def conditions_line(conditions: dict[str, bool | None], gain: float, margin: float, test: str | None,
                    p_value: float | None, result: paired.Paired | None) -> str:
    mark = {True: "met", False: "not met", None: "unknown"}
    margin_text = f"gain {fmt.signed(gain)} > margin {margin:.3g}: {mark[conditions['margin']]}"
    if p_value is not None and result is not None:
        sig_text = (f"paired {test} test on {result.n} test examples, p = {_p(p_value)} (needs < 0.05): "
                    f"{mark[conditions['significance']]}")
    else:
        sig_text = ("no per-example scores to pair, so non-overlapping 95% intervals stand in for a paired "
                    f"test: {mark[conditions['significance']]}")
    evidence_text = (f"LoRA's learning rate bracketed: {mark[conditions['adapter_rate_bracketed']]}; "
                     f"full fine-tuning's learning rate bracketed: {mark[conditions['full_rate_bracketed']]}; "
                     f"more adapter capacity tried at LoRA's best rate: {mark[conditions['adapter_capacity']]}")
    if all(conditions.values()):
        verdict = "All five are met: escalating to full fine-tuning is justified by the measurement"
    else:
        failed = [name for name in CONDITIONS if conditions.get(name) is False]
        verdict = f"Escalation is blocked by {', '.join(failed)}: full fine-tuning is not recommended"
    return (f"Escalation to full fine-tuning needs all of: {margin_text}; {sig_text}; {evidence_text}. "
            f"{verdict}.")


def rate_line(found: Bracket) -> str:
    """Where a group's best rate stands: its score, and what closes (or leaves open) each side of it."""
    state = "bracketed" if found.bracketed else "not bracketed"
    if found.best_score == -math.inf:  # nothing to stand on but divergence: lower rates come next
        return f"{_capital(GROUP_NAMES[found.group])}'s learning rate is {state}: every rate tried diverged."
    at = "" if found.step is None else f" at step {found.step}"
    beaten, other = [], []
    alone = all(side.rate is None and not side.edge for side in (found.below, found.above))
    if alone:  # one rate tried: said once for both sides
        other.append("no rate tried below or above it")
    for side, where in () if alone else ((found.below, "below"), (found.above, "above")):
        if side.edge:
            # The range's own end, or the last rung of the ~3x ladder inside it (1.98e-3 in a range to 3e-3).
            other.append(f"{rate(found.best_rate)} is at the {'lower' if where == 'below' else 'upper'} edge of "
                         "the search range (no rung of the ~3x ladder lies beyond it inside the range)")
        elif side.rate is None:
            other.append(f"no rate tried {where} it")
        elif side.closed:
            beaten.append(_neighbour(side))
        elif side.score is not None and side.score < found.best_score:
            other.append(f"{_neighbour(side)} {where} it is more than one ladder step (3x) away")
        else:
            other.append(f"{_neighbour(side)} {where} it scored as high")
    text = (f"{_capital(GROUP_NAMES[found.group])}'s learning rate is {state}: {rate(found.best_rate)} scored "
            f"{_score(found.best_score)} on validation{at}")
    if beaten:
        text += f", above {' and '.join(beaten)}"
    return text + "".join(f"; {o}" for o in other) + "."


def capacity_line(found: Bracket, capacity: list[Capacity]) -> str:
    """What more adapter capacity at the bracketed rate gained on validation (or that none was tried)."""
    if not capacity:
        return (f"No capacity increase (a higher rank or broader target modules) was tried at LoRA's best "
                f"rate {rate(found.best_rate)}.")
    tried = "; ".join(f"{_more(c.config, found.family)} at {rate(found.best_rate)}: {fmt.signed(c.gain)}"
                      + ("" if c.step is None else f" at step {c.step}") for c in capacity)
    return f"More adapter capacity, on validation against the bracket's best: {tried}."


def next_step(blocked: str | None, evidence: Evidence, full: pd.Series | None,
              adapter: pd.Series | None) -> str | None:
    if full is not None and adapter is None:
        return ("tune LoRA/QLoRA before deciding on full fine-tuning: no adapter run has a validation and a test "
                "score to compare it with; run adapters at learning rates about 3x apart. " + HOW_TO_RUN)
    if blocked == "significance":
        return ("the gain may be noise on this test set: keep the adapter run, or measure on a larger locked "
                "test set (a new data.lock_dir with a larger test_size) before paying for full fine-tuning.")
    if blocked not in CONDITIONS[2:]:
        return None
    trials = next_trials(evidence)
    return f"to decide on full fine-tuning, run {'; '.join(trials)}. {HOW_TO_RUN}" if trials else None


def next_trials(evidence: Evidence) -> list[str]:
    """The trials that would complete the evidence: each open bracket's next rates in its family, then the
    capacity point at the adapter's bracketed rate."""
    out = []
    for group, found in (("adapter", evidence.adapter), ("full", evidence.full)):
        if found is None:
            what = "LoRA/QLoRA" if group == "adapter" else "full fine-tuning"
            out.append(f"{what} at learning rates about 3x apart (none has a learning rate and a validation "
                       "score yet)")
        elif not found.bracketed:
            rates = " and ".join(rate(r) for r in found.next_rates) or "a rate past the nearest one tried"
            out.append(f"{family(found.family)} at learning_rate {rates} to bracket {GROUP_NAMES[group]}'s rate")
    adapter = evidence.adapter
    if adapter is not None and adapter.bracketed and not evidence.capacity:
        out.append(f"{family(adapter.family)} with a higher rank or all-linear targets at learning_rate "
                   f"{rate(adapter.best_rate)}, LoRA's bracketed best rate")
    return out


def family(settings: dict[str, Any]) -> str:
    """A bracket's fixed settings as a trial's config keys: what to put in a search space to run it."""
    shown = [f"{key} {value}" for key, value in settings.items() if key != "method" and value is not None]
    return str(settings.get("method")) + (f" ({', '.join(shown)})" if shown else "")


def rate(value: float) -> str:
    """A learning rate exactly enough to run it again: 2e-4, 6.67e-5."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _neighbour(side: Side) -> str:
    return f"{rate(side.rate or 0.0)} ({'diverged' if side.score == -math.inf else _score(side.score)})"


def _score(value: float | None) -> str:
    return "diverged" if value == -math.inf else fmt.quality(value)


def _more(config: dict[str, Any], base: dict[str, Any]) -> str:
    """What a capacity trial changed: "all-linear", "r=32", or both."""
    changed = []
    if config.get("rank") != base.get("rank"):
        changed.append(f"r={config.get('rank')}")
    if config.get("target_modules") != base.get("target_modules"):
        changed.append(str(config.get("target_modules")))
    return " ".join(changed) or "the same settings"


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
