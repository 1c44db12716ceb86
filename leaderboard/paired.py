"""Paired tests of two runs on the same locked test set, example by example.

Every run scores the same locked test rows in the same order (test_predictions.jsonl, one line a row), so two
runs can be compared on the examples where they differ instead of on two independent intervals: far more
power on the small test sets sweeps use, and the right test for "is this gain real?".

- 0/1 scores (exact match, accuracy): exact McNemar test, a two-sided binomial test on the discordant pairs
  (one run right, the other wrong); the pairs both get right or both get wrong say nothing about the gap.
- Other scores (token F1): paired bootstrap of the mean per-example difference, seeded so the same runs
  always give the same p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

ALPHA = 0.05  # p below this: the two runs differ; at or above: tied
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

Scores = Sequence[float] | np.ndarray  # one run's per-example scores, in locked test row order

TEST_MCNEMAR = "mcnemar-exact"
TEST_BOOTSTRAP = "paired-bootstrap"


@dataclass(frozen=True)
class Paired:
    p_value: float
    test: str  # TEST_MCNEMAR or TEST_BOOTSTRAP
    n: int  # paired examples
    mean_difference: float  # mean of a - b over the examples


def mcnemar_exact(a: Scores, b: Scores) -> float:
    """Two-sided exact McNemar p-value for two runs' 0/1 scores on the same examples."""
    x, y = _pair(a, b)
    a_only = int(np.sum((x == 1) & (y == 0)))
    b_only = int(np.sum((x == 0) & (y == 1)))
    if a_only + b_only == 0:
        return 1.0  # identical on every example: no evidence of any difference
    return float(binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(a: Scores, b: Scores, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value that the mean per-example difference a - b is zero.

    Resamples the examples (pairs kept together) and counts how often the resampled mean difference, shifted
    to have mean zero (the null), is at least as far from zero as the observed one.
    """
    x, y = _pair(a, b)
    diff = x - y
    observed = float(diff.mean())
    if np.allclose(diff, 0.0):
        return 1.0
    rng = np.random.default_rng(seed)
    centred = diff - observed
    extreme = 0
    chunk = max(1, 2_000_000 // diff.size)  # never allocate resamples x n at once
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means = centred[rng.integers(0, diff.size, size=(size, diff.size))].mean(axis=1)
        extreme += int(np.sum(np.abs(means) >= abs(observed) - 1e-12))
    return (extreme + 1) / (resamples + 1)  # never exactly 0: the observed sample is one of the draws


def compare(a: Scores, b: Scores) -> Paired:
    """The paired test that fits the scores: McNemar when both runs scored 0/1, else the paired bootstrap."""
    x, y = _pair(a, b)
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    if binary:
        return Paired(mcnemar_exact(x, y), TEST_MCNEMAR, int(x.size), float((x - y).mean()))
    return Paired(paired_bootstrap(x, y), TEST_BOOTSTRAP, int(x.size), float((x - y).mean()))


def _pair(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"a paired test needs two equally long, non-empty score lists, got {x.size} and "
                         f"{y.size}: both runs must be scored on the same locked test rows")
    return x, y
