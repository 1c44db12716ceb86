"""What a trial costs: wall time x the price per hour of the resources it holds.

Wall time covers model load, training and evaluation; failed and pruned trials are charged the same
way (they held the machine too). The budget ledger (sweeps/) builds on these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tracking.prices import PriceQuote

SECONDS_PER_HOUR = 3600.0


def trial_cost(wall_seconds: float, quote: PriceQuote) -> float:
    """US dollars for holding the quoted resources for `wall_seconds`."""
    return _hours(wall_seconds, "wall_seconds") * quote.usd_per_hour


def device_hours(wall_seconds: float, gpus: float, cpus: float) -> float:
    """GPU-hours when the trial holds GPUs, otherwise vCPU-hours.

    The count of the device that dominates the price, so runs of one sweep (one device kind)
    compare; CPU and GPU sweeps do not compare on this number, and need not: cost_usd does that.
    """
    if gpus < 0 or cpus < 0:
        raise ValueError(f"resources: gpus={gpus}, cpus={cpus}: counts cannot be negative")
    hours = _hours(wall_seconds, "wall_seconds")
    return hours * (gpus if gpus > 0 else cpus)


def projected_cost(expected_seconds: float, quote: PriceQuote) -> float:
    """Cost of a trial that has not run yet, for admitting it against what is left of the budget."""
    return _hours(expected_seconds, "expected_seconds") * quote.usd_per_hour


def projected_seconds(
    observed_seconds: Sequence[float], fallback_seconds: float, margin: float = 1.0
) -> float:
    """How long the next trial is expected to take: the longest one so far (the budget must not be
    overrun, so the estimate errs high), or `fallback_seconds` before any has finished; x `margin`."""
    if margin < 1:
        raise ValueError(f"margin: {margin}: must be >= 1 (an estimate below the worst case can overrun)")
    longest = max(observed_seconds, default=fallback_seconds)
    _hours(longest, "observed_seconds")  # rejects NaN and negative times
    return longest * margin


def affordable_seconds(budget_usd: float, quote: PriceQuote) -> float:
    """How long the quoted resources can run on `budget_usd` (never negative)."""
    if not math.isfinite(budget_usd):
        raise ValueError(f"budget_usd: {budget_usd!r}: give a finite amount in US dollars")
    return max(0.0, budget_usd) / quote.usd_per_hour * SECONDS_PER_HOUR


def _hours(seconds: float, name: str) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name}: {seconds!r}: must be a finite, non-negative number of seconds")
    return seconds / SECONDS_PER_HOUR
