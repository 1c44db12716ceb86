"""95% confidence intervals for a test-set quality.

Proportions (exact match, accuracy) get a Wilson interval: unlike the normal approximation it stays
inside [0, 1] and behaves at 0% and 100%, which small locked test sets hit. Token F1 is not a proportion, so
it gets a percentile bootstrap over the per-example scores; without those scores we fall back to a normal
approximation whose variance p(1-p)/n is the largest any [0, 1]-valued score with mean p can have (so it
errs wide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed so the same runs always give the same leaderboard

CI_WILSON = "wilson"
CI_BOOTSTRAP = "bootstrap"
CI_NORMAL = "normal-approx"
CI_NONE = "none"

PROPORTION_METRICS = ("exact_match", "accuracy")


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion p observed on n trials."""
    if n <= 0:
        raise ValueError(f"n must be positive to compute an interval, got n={n}")
    p = min(max(p, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example scores."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap needs at least one per-example score")
    rng = np.random.default_rng(seed)
    # Resample in chunks so a large test set does not allocate resamples x n at once.
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def normal_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Normal approximation with the worst-case variance p(1-p)/n, clipped to [0, 1]."""
    if n <= 0:
        raise ValueError(f"n must be positive to compute an interval, got n={n}")
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n)
    return max(0.0, p - half), min(1.0, p + half)


def quality_interval(
    quality: float | None, metric: str | None, n_test: int | None, scores: Sequence[float] | None
) -> tuple[float | None, float | None, str]:
    """The interval and the method used, chosen by the metric; (None, None, "none") when it cannot be had."""
    if quality is None or (isinstance(quality, float) and math.isnan(quality)):
        return None, None, CI_NONE
    n = int(n_test) if n_test else (len(scores) if scores else 0)
    if metric in PROPORTION_METRICS:
        if n > 0:
            low, high = wilson_interval(quality, n)
            return low, high, CI_WILSON
        return None, None, CI_NONE
    if scores:
        low, high = bootstrap_interval(scores)
        return low, high, CI_BOOTSTRAP
    if n > 0:
        low, high = normal_interval(quality, n)
        return low, high, CI_NORMAL
    return None, None, CI_NONE
