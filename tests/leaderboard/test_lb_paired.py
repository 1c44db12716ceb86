from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_rel

from leaderboard.paired import TEST_BOOTSTRAP, TEST_MCNEMAR, compare, mcnemar_exact, paired_bootstrap


def discordant(a_only: int, b_only: int, both: int = 50, neither: int = 20) -> tuple[list[float], list[float]]:
    a = [1.0] * both + [1.0] * a_only + [0.0] * b_only + [0.0] * neither
    b = [1.0] * both + [0.0] * a_only + [1.0] * b_only + [0.0] * neither
    return a, b


@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (6, 0, 2 / 2**6),  # 2 x 0.5^6 = 0.03125
    (6, 1, 2 * (1 + 7) / 2**7),  # 2 x P(X <= 1), X ~ Bin(7, 1/2) = 16/128 = 0.125
    (8, 2, 2 * (1 + 10 + 45) / 2**10),  # 112/1024 = 0.109375
    (2, 8, 2 * (1 + 10 + 45) / 2**10),  # two-sided: the direction does not matter
    (5, 5, 1.0),
])
def test_mcnemar_matches_hand_computed_binomial_tails(a_only, b_only, expected) -> None:
    a, b = discordant(a_only, b_only)
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_ignores_concordant_pairs() -> None:
    # The same 6-vs-1 split among 10 or among 1000 agreeing examples gives the same evidence.
    small = mcnemar_exact(*discordant(6, 1, both=5, neither=5))
    large = mcnemar_exact(*discordant(6, 1, both=900, neither=100))
    assert small == pytest.approx(large) == pytest.approx(0.125)


def test_identical_runs_have_p_one() -> None:
    a = [1.0, 0.0, 1.0, 1.0]
    assert mcnemar_exact(a, a) == 1.0
    assert paired_bootstrap([0.3, 0.5, 0.9], [0.3, 0.5, 0.9]) == 1.0


def test_compare_picks_mcnemar_for_zero_one_and_bootstrap_otherwise() -> None:
    a, b = discordant(6, 0)
    result = compare(a, b)
    assert result.test == TEST_MCNEMAR and result.n == len(a)
    assert result.mean_difference == pytest.approx(6 / len(a))
    f1 = compare([0.5, 1.0, 0.25] * 10, [0.5, 0.5, 0.25] * 10)
    assert f1.test == TEST_BOOTSTRAP and f1.mean_difference == pytest.approx(0.5 / 3)


def test_paired_bootstrap_is_seeded_and_agrees_with_a_paired_t_test() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.9, size=300)
    better = np.clip(base + rng.normal(0.02, 0.15, size=300), 0.0, 1.0)
    first = paired_bootstrap(better, base)
    assert first == paired_bootstrap(better, base)  # deterministic
    # On 300 examples the bootstrap and the t-test of the mean difference should tell the same story.
    t_p = float(ttest_rel(better, base).pvalue)
    assert first == pytest.approx(t_p, abs=0.02)


def test_paired_bootstrap_separates_a_real_gain_from_noise() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(0.3, 0.8, size=200)
    assert paired_bootstrap(np.clip(base + 0.05, 0, 1), base) < 0.001  # every example a bit better
    noise = np.clip(base + rng.normal(0.0, 0.1, size=200), 0, 1)
    assert paired_bootstrap(noise, base) > 0.05


def test_unequal_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same locked test rows"):
        compare([1.0, 0.0], [1.0])
