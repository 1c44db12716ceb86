"""The learning rate first (search_spaces/rates.py): where each group's ladder starts, the ladder itself, and
the bracket rule on synthetic score-versus-rate curves; then the capacity increase at the bracketed rate."""

from __future__ import annotations

import math
from typing import Any

import pytest

from search_spaces import rates as r
from search_spaces.loader import load_space
from search_spaces.params import Categorical, Fixed, FloatRange

ADAPTERS = r.RateRange(1e-5, 3e-3)  # the default space's adapter range
WIDE = r.RateRange(1e-6, 1e-2)
PRIOR = r.prior_rate("adapter", 576, 60)  # SmolLM2-135M at 60 steps: 1.98e-3
LORA = {"method": "lora", "rank": 16, "alpha": 32, "target_modules": "attention", "lora_dropout": 0.05}
FULL = {"method": "full", "rank": None, "alpha": None, "target_modules": None, "lora_dropout": None}


def tried(rate: float, score: float | None = None, *, curve: dict[int, float] | None = None,
          diverged: bool = False, **changes: Any) -> r.Tried:  # fmt: skip
    """One trial of the LoRA reference family (or `changes` to it) at `rate`, scored at report 1."""
    if curve is None:
        curve = {} if score is None else {1: score}
    return r.Tried({**LORA, **changes, "learning_rate": rate}, curve, diverged, label=f"{rate:.3g}")


def unimodal(rate: float, peak: float) -> float:
    """A score that falls off on both sides of `peak`, quadratically in log10(rate)."""
    return 0.8 - 0.1 * math.log10(rate / peak) ** 2


# --- priors and the ladder ----------------------------------------------------------------------------


def test_the_prior_of_a_576_wide_model_at_60_and_1000_steps() -> None:
    full = r.prior_rate("full", 576, 60)
    assert full == pytest.approx(1.32e-4, rel=0.01)  # 5e-5 x (2000 / 576) ** 0.781
    assert r.prior_rate("full", 576, 1000) == full  # full fine-tuning's rate does not depend on the steps
    assert r.prior_rate("adapter", 576, 60) == pytest.approx(15 * full)  # a run under 100 steps
    assert r.prior_rate("adapter", 576, 60) == pytest.approx(1.98e-3, rel=0.01)
    assert r.prior_rate("adapter", 576, 1000) == pytest.approx(10 * full)
    assert r.prior_rate("adapter", 576, 99) == pytest.approx(15 * full)
    assert r.prior_rate("adapter", 576, 100) == pytest.approx(10 * full)  # "under 100": 100 is not
    assert r.prior_rate("adapter", 576, None) == pytest.approx(10 * full)
    # A wider model takes a lower rate; an unknown width is read as a 4096-wide 7-8B model.
    assert r.prior_rate("full", 4096, 60) < r.prior_rate("full", 2048, 60) < full
    assert (
        r.prior_rate("full", None, 60) == r.prior_rate("full", 4096, 60) == pytest.approx(2.86e-5, rel=0.01)
    )


@pytest.mark.parametrize("span", [ADAPTERS, r.RateRange(1e-6, 3e-4), WIDE, r.RateRange(2e-4, 5e-4)])
@pytest.mark.parametrize("prior", [1.98e-3, 1.32e-4, 1e-9, 1.0])
def test_the_ladder_stays_inside_the_range_about_3x_apart(span: r.RateRange, prior: float) -> None:
    ladder = span.ladder(prior)
    assert ladder, (span, prior)
    assert list(ladder) == sorted(ladder)
    assert all(span.low <= rate <= span.high for rate in ladder), ladder
    for lower, upper in zip(ladder, ladder[1:], strict=False):
        assert upper / lower == pytest.approx(3, rel=0.01)
    # The range holds no further rung on either end, and the (clamped) prior is a rung.
    assert ladder[0] / 3 < span.low * 0.99 and ladder[-1] * 3 > span.high * 1.01
    start = min(max(prior, span.low), span.high)
    assert any(r.same_rate(rate, start) and rate == pytest.approx(start, rel=0.005) for rate in ladder)


def test_the_default_spaces_ladders_start_at_the_priors() -> None:
    assert ADAPTERS.ladder(r.prior_rate("adapter", 576, 60)) == (2.45e-5, 7.34e-5, 2.2e-4, 6.61e-4, 1.98e-3)
    assert r.RateRange(1e-6, 3e-4).ladder(r.prior_rate("full", 576, 60)) == (
        1.63e-6, 4.9e-6, 1.47e-5, 4.41e-5, 1.32e-4)  # fmt: skip
    choices = r.RateRange.of(Categorical((1e-3, 1e-4, 3e-4)))
    assert choices.ladder(5.0) == (1e-4, 3e-4, 1e-3)  # the choices themselves, sorted, whatever the prior


def test_rate_ranges_come_from_the_space_per_group() -> None:
    ranges = r.rate_ranges(load_space("default"))
    assert ranges == {"adapter": ADAPTERS, "full": r.RateRange(1e-6, 3e-4)}
    assert r.RateRange.of(FloatRange(1e-5, 1e-3, log=True)) == r.RateRange(1e-5, 1e-3)
    assert r.RateRange.of(Fixed(2e-4)) == r.RateRange(2e-4, 2e-4, (2e-4,))


# --- the bracket rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("peak", [2.2e-4, 2.6e-4, 6.0e-4])
def test_a_unimodal_curve_sampled_on_the_ladder_is_bracketed_at_its_argmax(peak: float) -> None:
    ladder = ADAPTERS.ladder(PRIOR)
    trials = [tried(rate, unimodal(rate, peak)) for rate in ladder]
    best = min(ladder, key=lambda rate: abs(math.log(rate / peak)))  # the rung nearest the peak
    found = r.bracket(trials, "adapter", ADAPTERS, prior=PRIOR)
    assert found is not None
    assert found.bracketed and found.next_rates == ()
    assert found.best_rate == best and found.best_score == pytest.approx(unimodal(best, peak))
    i = ladder.index(best)
    assert (found.below.rate, found.above.rate) == (ladder[i - 1], ladder[i + 1])  # one rung away each side
    assert found.below.closed and found.above.closed and not found.below.edge and not found.above.edge
    assert found.below.score < found.best_score and found.above.score < found.best_score
    assert found.family == LORA and found.group == "adapter" and found.step == 1
    assert len(found.rates) == len(ladder)
    # The argmax with its two neighbours alone is enough.
    three = r.bracket([trials[i - 1], trials[i], trials[i + 1]], "adapter", ADAPTERS, prior=PRIOR)
    assert three is not None and three.bracketed and three.best_rate == best


def test_a_rising_curve_is_open_upward_until_the_top_rung_then_closed_by_the_edge() -> None:
    rising = [tried(rate, unimodal(rate, 1.0)) for rate in (2.2e-4, 6.61e-4)]
    found = r.bracket(rising, "adapter", ADAPTERS, prior=PRIOR)
    assert found is not None and not found.bracketed
    assert found.best_rate == 6.61e-4 and found.below.closed and not found.above.closed
    assert found.next_rates == (1.98e-3,)  # the next rung up
    top = r.bracket([*rising, tried(1.98e-3, unimodal(1.98e-3, 1.0))], "adapter", ADAPTERS, prior=PRIOR)
    # 1.98e-3 is the ladder's top rung (5.9e-3 lies past 3e-3): nothing is left to try above it.
    assert top is not None and top.bracketed and top.best_rate == 1.98e-3
    assert top.above.closed and top.above.edge and top.above.rate is None and top.next_rates == ()


@pytest.mark.parametrize("top", [1e-3, 8e-4])  # the range's high end, and a rate within 1.5x below it
def test_the_best_at_the_top_of_the_range_is_closed_by_the_edge(top: float) -> None:
    span = r.RateRange(1e-5, 1e-3)
    trials = [tried(rate, unimodal(rate, 1.0)) for rate in (1.1e-4, 3.3e-4)] + [tried(top, 0.9)]
    found = r.bracket(trials, "adapter", span, prior=1e-3)
    assert found is not None and found.bracketed and found.best_rate == top
    assert found.above == r.Side(None, None, closed=True, edge=True)
    assert found.below.rate == 3.3e-4 and found.below.closed and not found.below.edge


def test_the_best_at_the_bottom_of_the_range_is_closed_by_the_edge() -> None:
    span = r.RateRange(1e-5, 1e-3)
    found = r.bracket([tried(1e-5, 0.8), tried(3e-5, 0.7)], "adapter", span, prior=1e-5)
    assert found is not None and found.bracketed and found.below.edge and found.above.rate == 3e-5


def test_a_neighbour_10x_away_leaves_the_side_open_and_the_rung_between_is_proposed() -> None:
    trials = [tried(3e-5, 0.7), tried(1e-4, 0.8), tried(1e-3, 0.6)]
    found = r.bracket(trials, "adapter", WIDE, prior=1e-4)
    assert found is not None and not found.bracketed
    assert found.below.closed and found.below.rate == 3e-5  # 3.3x away: one ladder step
    assert found.above.rate == 1e-3 and found.above.score == 0.6 and not found.above.closed  # 10x: too far
    assert found.next_rates == (3e-4,)  # the rung in between, not one past the worse neighbour
    # Tried, and worse: now bracketed at 1e-4. Better: the best moves up, closed by 1e-3 one step above.
    worse = r.bracket([*trials, tried(3e-4, 0.75)], "adapter", WIDE, prior=1e-4)
    assert worse is not None and worse.bracketed and worse.best_rate == 1e-4 and worse.above.rate == 3e-4
    better = r.bracket([*trials, tried(3e-4, 0.85)], "adapter", WIDE, prior=1e-4)
    assert better is not None and better.bracketed and better.best_rate == 3e-4
    assert (better.below.rate, better.above.rate) == (1e-4, 1e-3)


def test_a_single_rung_asks_for_both_neighbours() -> None:
    found = r.bracket([tried(1e-4, 0.8)], "adapter", WIDE, prior=1e-4)
    assert found is not None and not found.bracketed
    assert sorted(found.next_rates) == [3.33e-5, 3e-4]
    assert r.bracket([], "adapter", WIDE) is None
    assert r.bracket([tried(1e-4, 0.8)], "full", WIDE) is None  # the group has no trial


def test_a_neighbour_that_tied_does_not_close_a_side() -> None:
    found = r.bracket([tried(1e-4, 0.5), tried(3e-4, 0.5), tried(3.3e-5, 0.4)], "adapter", WIDE, prior=1e-4)
    assert found is not None and not found.bracketed and found.best_rate == 1e-4
    assert found.below.closed and found.above.rate == 3e-4 and not found.above.closed
    assert found.next_rates == (9e-4,)  # past the tied rung


def test_a_diverged_neighbour_closes_a_side() -> None:
    trials = [tried(3e-5, 0.7), tried(1e-4, 0.8), tried(3e-4, diverged=True)]
    found = r.bracket(trials, "adapter", WIDE, prior=1e-4)
    assert found is not None and found.bracketed and found.best_rate == 1e-4
    assert found.above.rate == 3e-4 and found.above.score == -math.inf and found.above.closed
    # A diverged trial 10x away does not: the rung between is still wanted.
    far = r.bracket(
        [tried(3e-5, 0.7), tried(1e-4, 0.8), tried(1e-3, diverged=True)], "adapter", WIDE, prior=1e-4
    )
    assert far is not None and not far.bracketed and far.next_rates == (3e-4,)


def test_a_diverged_rate_is_worse_than_any_score_and_the_ladder_steps_down_from_it() -> None:
    # The adapters' prior diverged before any other rung ran: step down, nothing is left above.
    found = r.bracket([tried(1.98e-3, diverged=True)], "adapter", ADAPTERS, prior=PRIOR)
    assert found is not None and found.best_score == -math.inf and not found.bracketed
    assert found.next_rates == (6.61e-4,)
    # A scored rung beats it even at a score of 0; a NaN score counts as low as a divergence.
    low = r.bracket([tried(1.98e-3, diverged=True), tried(6.61e-4, 0.0)], "adapter", ADAPTERS, prior=PRIOR)
    assert low is not None and low.best_rate == 6.61e-4 and low.above.closed and low.next_rates == (2.2e-4,)
    nan = r.bracket([tried(1.98e-3, math.nan), tried(6.61e-4, 0.0)], "adapter", ADAPTERS, prior=PRIOR)
    assert nan is not None and nan.best_rate == 6.61e-4 and nan.rates["0.00198"] == -math.inf


def test_scores_are_compared_at_the_step_every_trial_reached() -> None:
    finished = tried(1e-4, curve={1: 0.5, 2: 0.7, 3: 0.9})  # ran to the end: the best final score
    stopped = tried(3e-4, curve={1: 0.6})  # ASHA stopped it at the first rung, ahead there
    found = r.bracket([finished, stopped], "adapter", WIDE, prior=1e-4)
    assert found is not None and found.step == 1
    assert found.best_rate == 3e-4 and found.best_score == 0.6 and found.rates["0.0001"] == 0.5
    assert found.below.rate == 1e-4 and found.below.closed  # lower at the common step, one rung away
    # Two finished trials are compared at their last common report.
    both = r.bracket([finished, tried(3e-4, curve={1: 0.6, 2: 0.65, 3: 0.7})], "adapter", WIDE, prior=1e-4)
    assert both is not None and both.step == 3 and both.best_rate == 1e-4
    # A diverged trial has no curve and does not pull the common step down to nothing.
    also = r.bracket([finished, stopped, tried(1e-3, diverged=True)], "adapter", WIDE, prior=1e-4)
    assert also is not None and also.step == 1 and also.bracketed


def test_the_same_rate_twice_keeps_its_better_score() -> None:
    found = r.bracket([tried(1e-4, 0.5), tried(1.1e-4, 0.8), tried(3e-4, 0.6)], "adapter", WIDE, prior=1e-4)
    assert found is not None and len(found.rates) == 2 and found.best_score == 0.8


def test_categorical_ranges_use_the_adjacency_of_their_choices() -> None:
    span = r.RateRange.of(Categorical((1e-4, 3e-4, 1e-3, 1e-2)))
    assert span.choices == (1e-4, 3e-4, 1e-3, 1e-2)
    assert span.adjacent(1e-3, 1e-2) and not span.adjacent(1e-4, 1e-3)
    assert span.at_edge(1e-2, +1) and span.at_edge(1e-4, -1) and not span.at_edge(1e-3, +1)
    # 1e-2 is 10x away, but the next choice: it closes the side.
    found = r.bracket([tried(3e-4, 0.7), tried(1e-3, 0.8), tried(1e-2, 0.1)], "adapter", span)
    assert found is not None and found.bracketed and found.best_rate == 1e-3
    # 1e-4 is only 3x from 1e-3 in rate terms but two choices away: open, and 3e-4 is proposed.
    gap = r.bracket([tried(1e-4, 0.7), tried(1e-3, 0.8), tried(1e-2, 0.1)], "adapter", span)
    assert gap is not None and not gap.bracketed and gap.next_rates == (3e-4,)
    top = r.bracket([tried(1e-3, 0.7), tried(1e-2, 0.8)], "adapter", span)
    assert top is not None and top.bracketed and top.above.edge


def test_the_bracket_holds_one_family_fixed() -> None:
    # The widest family (most rates tried) is the one bracketed; other families' scores do not count.
    trials = [tried(1e-4, 0.8), tried(3e-4, 0.7), tried(3e-5, 0.6),
              tried(1e-3, 0.99, target_modules="all-linear")]  # fmt: skip
    found = r.bracket(trials, "adapter", WIDE, prior=1e-4)
    assert found is not None and found.best_rate == 1e-4 and found.family["target_modules"] == "attention"
    other = r.bracket(
        trials, "adapter", WIDE, family=tuple({**LORA, "target_modules": "all-linear"}.values())
    )
    assert other is not None and other.best_rate == 1e-3 and other.rates == {"0.001": 0.99}
    # Full fine-tuning is its own group, whatever the adapters scored.
    full = r.bracket([*trials, r.Tried({**FULL, "learning_rate": 1e-5}, {1: 0.5})], "full", WIDE, prior=1e-5)
    assert full is not None and full.best_rate == 1e-5 and full.family == FULL
    assert r.group_of("qlora") == r.group_of("lora") == "adapter" and r.group_of("full") == "full"


# --- capacity at the bracketed rate -------------------------------------------------------------------


def bracketed_at(rate: float, **family: Any) -> r.Bracket:
    trials = [tried(rate / 3, 0.6, **family), tried(rate, 0.7, **family), tried(rate * 3, 0.5, **family)]
    found = r.bracket(trials, "adapter", WIDE, prior=rate)
    assert found is not None and found.bracketed
    return found


RANKS = [4, 8, 16, 32, 64]
TARGETS = ["attention", "attention+mlp", "all-linear"]


def test_the_capacity_point_prefers_all_linear_then_a_higher_rank() -> None:
    point = r.capacity_point(bracketed_at(1e-4), RANKS, TARGETS)
    assert point == {**LORA, "target_modules": "all-linear", "learning_rate": 1e-4}
    point = r.capacity_point(bracketed_at(1e-4, target_modules="all-linear"), RANKS, TARGETS)
    assert point == {
        **LORA,
        "target_modules": "all-linear",
        "rank": 32,
        "learning_rate": 1e-4,
    }  # the next one
    # A space without broader targets: the next higher rank; nothing more to offer: none.
    assert r.capacity_point(bracketed_at(1e-4), RANKS, ["attention"]) == {
        **LORA,
        "rank": 32,
        "learning_rate": 1e-4,
    }
    assert r.capacity_point(bracketed_at(1e-4, target_modules="all-linear", rank=64), RANKS, TARGETS) is None
    assert r.capacity_point(bracketed_at(1e-4, rank=64), RANKS, ["attention"]) is None


def test_capacity_tried_finds_a_higher_rank_or_broader_trial_at_the_best_rate() -> None:
    reference = tried(1e-4, curve={1: 0.6, 2: 0.7})
    found = r.bracket([tried(3.3e-5, 0.5), reference, tried(3e-4, 0.55)], "adapter", WIDE, prior=1e-4)
    assert found is not None and found.bracketed and found.best_rate == 1e-4
    broader = tried(1.1e-4, curve={1: 0.65}, target_modules="all-linear")  # the same rung, stopped at 1
    higher = tried(1e-4, curve={1: 0.62, 2: 0.78}, rank=32)
    others = [
        tried(3e-4, curve={1: 0.9, 2: 0.95}, target_modules="all-linear"),  # another rate
        tried(1e-4, curve={1: 0.9, 2: 0.95}, rank=8),  # less capacity
        tried(1e-4, curve={1: 0.9, 2: 0.95}, rank=32, target_modules="attention+mlp", lora_dropout=0.1),
        tried(1e-4, curve={1: 0.9, 2: 0.95}, method="qlora", target_modules="all-linear"),  # another method
        tried(1e-4, diverged=True, target_modules="all-linear"),
        tried(1e-4, curve={1: 0.9, 2: 0.95}),  # the reference family itself
    ]
    assert r.capacity_tried([reference, *others], found) == []
    gains = r.capacity_tried([reference, broader, higher, *others], found)
    assert [c.label for c in gains] == ["0.0001", "0.00011"]  # best gain first: rank 32, then all-linear
    assert gains[0].config["rank"] == 32 and gains[0].step == 2
    assert gains[0].gain == pytest.approx(0.78 - 0.7)
    assert gains[1].config["target_modules"] == "all-linear" and gains[1].step == 1  # at its deepest report
    assert gains[1].gain == pytest.approx(0.65 - 0.6)
    assert gains[1].to_dict()["gain"] == pytest.approx(0.05)
