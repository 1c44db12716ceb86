"""The learning-rate evidence the method decision needs before it may escalate to full fine-tuning.

A LoRA-versus-full comparison is only fair once each method's learning rate is tuned (Biderman et al., 2024):
each group's rate must be bracketed, and the adapters must have tried more capacity (a higher rank or broader
targets) at their best rate, before the adapter's limit can be called LoRA's limit. The rule itself lives in
search_spaces/rates.py; this module turns a ranked board into its inputs (Tried) and its outputs into data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from leaderboard import fmt
from search_spaces.rates import (
    GROUPS,
    UNKNOWN_RANGE,
    Bracket,
    Capacity,
    RateRange,
    Tried,
    bracket,
    capacity_tried,
    group_of,
)

DIVERGED = "Diverged"  # how a diverged trial's error tag starts
EVIDENCE_CONDITIONS = ("adapter_rate_bracketed", "full_rate_bracketed", "adapter_capacity")


@dataclass(frozen=True)
class Evidence:
    adapter: Bracket | None  # None: no adapter trial with a learning rate and a validation score
    full: Bracket | None
    capacity: list[Capacity]  # tried at the adapter's bracketed best rate; empty while it is not bracketed
    ranges: dict[str, RateRange]

    def conditions(self) -> dict[str, bool | None]:
        return {
            "adapter_rate_bracketed": self.adapter is not None and self.adapter.bracketed,
            "full_rate_bracketed": self.full is not None and self.full.bracketed,
            "adapter_capacity": bool(self.capacity),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: brackets, capacity and the ranges they were judged in."""
        return {"brackets": {"adapter": bracket_data(self.adapter), "full": bracket_data(self.full)},
                "capacity": [c.to_dict() for c in self.capacity],
                "rate_ranges": {g: {**asdict(r), "choices": None if r.choices is None else list(r.choices)}
                                for g, r in self.ranges.items()}}  # fmt: skip


def gather(ranked: pd.DataFrame, ranges: dict[str, RateRange] | None = None) -> Evidence:
    """The brackets of both groups and the adapter capacity tried, over every trial of the board."""
    known = {group: (ranges or {}).get(group, UNKNOWN_RANGE) for group in GROUPS}
    tried = tried_runs(ranked)
    adapter = bracket(tried, "adapter", known["adapter"])
    full = bracket(tried, "full", known["full"])
    # Capacity only counts at a bracketed rate: at an untuned one a higher rank may just compensate the rate.
    capacity = capacity_tried(tried, adapter) if adapter is not None and adapter.bracketed else []
    return Evidence(adapter, full, capacity, known)


def tried_runs(ranked: pd.DataFrame) -> list[Tried]:
    """Every trial that says something about a learning rate: its validation curve, or that it diverged.

    Other failed trials (out of memory, a crash) say nothing about the rate and are left out. A frame without
    curves (older callers) and a run without one stand on a one-point curve: val_quality at its steps."""
    out = []
    for row in ranked.to_dict(orient="records"):
        method = row.get("method")
        if row.get("role") == "baseline" or group_of(method) not in GROUPS:
            continue
        rate = _number(row.get("learning_rate"))
        if rate is None or rate <= 0:
            continue
        # Diverged is read off the error tag whatever the status: the sweep ends such a trial as failed, but
        # a diverged trial is evidence however its run ended.
        diverged = str(row.get("error") or "").startswith(DIVERGED)
        if row.get("status") == "failed" and not diverged:
            continue
        curve = {} if diverged else _curve(row)
        if not diverged and not curve:
            continue  # still running, or logged no validation: nothing to compare yet
        out.append(Tried(_config(row, rate), curve, diverged, str(row.get("run_name") or row.get("run_id"))))
    return out


def bracket_data(found: Bracket | None) -> dict[str, Any] | None:
    """Bracket.to_dict without -inf (JSON has none): a diverged score is None, and the rate is listed in
    "diverged" (each side says so in its own "diverged")."""
    if found is None:
        return None
    data = found.to_dict()
    data["best_score"] = _finite(found.best_score)
    data["rates"] = {key: _finite(score) for key, score in found.rates.items()}
    data["diverged"] = [key for key, score in found.rates.items() if score == -math.inf]
    for name, side in (("below", found.below), ("above", found.above)):
        data[name]["diverged"] = side.score == -math.inf
        data[name]["score"] = _finite(side.score)
    data["next_rates"] = list(found.next_rates)
    return data


def _config(row: dict[str, Any], rate: float) -> dict[str, Any]:
    adapter = group_of(row.get("method")) == "adapter"
    return {
        "method": row.get("method"),
        "rank": _integer(row.get("rank")) if adapter else None,
        "alpha": _integer(row.get("alpha")) if adapter else None,
        "target_modules": _targets(row.get("target_modules")) if adapter else None,
        "lora_dropout": _number(row.get("lora_dropout")) if adapter else None,
        "learning_rate": rate,
    }


def _curve(row: dict[str, Any]) -> dict[int, float]:
    curve = row.get("val_curve")
    if isinstance(curve, dict):
        points = {int(step): float(v) for step, v in curve.items() if _number(v) is not None}
        if points:
            return points
    value = _number(row.get("val_quality"))
    if value is None:
        return {}
    return {_integer(row.get("steps")) or 0: value}


def _targets(value: object) -> str | None:
    """As logged (a preset such as "attention", or module names), so the next step can repeat it verbatim."""
    if fmt.is_missing(value) or not str(value).strip():
        return None
    return ",".join(m.strip() for m in str(value).split(",") if m.strip())


def _number(value: object) -> float | None:
    if fmt.is_missing(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(round(number))


def _finite(score: float | None) -> float | None:
    return score if score is not None and math.isfinite(score) else None
