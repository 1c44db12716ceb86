"""What a trial costs: wall time x the price per hour of the resources it holds.

Wall time covers model load, training and evaluation; failed and pruned trials are charged the same
way (they held the machine too).
"""

from __future__ import annotations

import math

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


def affordable_seconds(budget_usd: float, quote: PriceQuote) -> float:
    """How long the quoted resources can run on `budget_usd` (never negative)."""
    if not math.isfinite(budget_usd):
        raise ValueError(f"budget_usd: {budget_usd!r}: give a finite amount in US dollars")
    return max(0.0, budget_usd) / quote.usd_per_hour * SECONDS_PER_HOUR


def _hours(seconds: float, name: str) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name}: {seconds!r}: must be a finite, non-negative number of seconds")
    return seconds / SECONDS_PER_HOUR
