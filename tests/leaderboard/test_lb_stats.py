from __future__ import annotations

import numpy as np
import pytest

from leaderboard.stats import (
    CI_BOOTSTRAP,
    CI_NONE,
    CI_NORMAL,
    CI_WILSON,
    bootstrap_interval,
    normal_interval,
    quality_interval,
    wilson_interval,
)


def test_wilson_matches_textbook_values() -> None:
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4)
    assert high == pytest.approx(0.5962, abs=1e-4)


def test_wilson_stays_inside_zero_one_at_the_edges() -> None:
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)  # the normal approximation would give [0, 0]
    low, high = wilson_interval(1.0, 10)
    assert low == pytest.approx(1 - 0.2775, abs=1e-4)
    assert high == pytest.approx(1.0)


def test_wilson_narrows_with_more_examples() -> None:
    small = wilson_interval(0.7, 50)
    large = wilson_interval(0.7, 5000)
    assert small[1] - small[0] > 5 * (large[1] - large[0])


def test_wilson_refuses_empty_test_set() -> None:
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0.5, 0)


def test_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    scores = np.random.default_rng(1).uniform(0.2, 1.0, size=300).tolist()
    first = bootstrap_interval(scores)
    assert first == bootstrap_interval(scores)
    mean = float(np.mean(scores))
    assert first[0] < mean < first[1]
    # Standard error of the mean ~ 0.23/sqrt(300) ~ 0.013: a 95% interval is about 0.05 wide.
    assert 0.03 < first[1] - first[0] < 0.08


def test_bootstrap_of_constant_scores_is_a_point() -> None:
    assert bootstrap_interval([0.6] * 50) == pytest.approx((0.6, 0.6))


def test_normal_interval_is_symmetric_and_clipped() -> None:
    low, high = normal_interval(0.5, 100)
    assert 0.5 - low == pytest.approx(high - 0.5)
    assert high - low == pytest.approx(2 * 1.96 * 0.05, abs=1e-3)
    assert normal_interval(0.99, 10)[1] == 1.0


@pytest.mark.parametrize(
    ("metric", "n", "scores", "method"),
    [
        ("exact_match", 200, None, CI_WILSON),
        ("accuracy", 200, [1.0, 0.0], CI_WILSON),
        ("token_f1", 200, [0.5, 0.7, 0.9], CI_BOOTSTRAP),
        ("token_f1", 200, None, CI_NORMAL),
        ("exact_match", None, None, CI_NONE),
        (None, None, None, CI_NONE),
    ],
)
def test_interval_method_follows_the_metric(metric, n, scores, method) -> None:
    low, high, used = quality_interval(0.7, metric, n, scores)
    assert used == method
    if method == CI_NONE:
        assert (low, high) == (None, None)
    else:
        assert low is not None and high is not None
        assert low < 0.7 < high


def test_no_quality_no_interval() -> None:
    assert quality_interval(None, "exact_match", 100, None) == (None, None, CI_NONE)
    assert quality_interval(float("nan"), "exact_match", 100, None) == (None, None, CI_NONE)


def test_modules_are_shortened_only_when_all_end_in_proj() -> None:
    from leaderboard import fmt

    assert fmt.modules("q_proj,k_proj,v_proj,o_proj") == "q,k,v,o"
    assert fmt.modules("q_proj,lm_head") == "q_proj,lm_head"
    assert fmt.modules(None) == "-"
