from __future__ import annotations

import math

import pandas as pd
import pytest

from leaderboard.rank import COLUMNS, pareto_flags, rank_runs
from leaderboard.stats import wilson_interval


@pytest.fixture
def board(frame, make_row) -> pd.DataFrame:
    return frame(
        make_row("base", "none", 0.40, 0.05),
        make_row("lora_a", "lora", 0.80, 1.0),
        make_row("lora_b", "lora", 0.78, 0.5),
        make_row("qlora_c", "qlora", 0.75, 0.6),
        make_row("full_d", "full", 0.82, 4.0),
        make_row("lora_low", "lora", 0.60, 0.2),
        make_row("failed_e", "lora", None, 0.3, status="failed"),
        make_row("pruned_f", "qlora", 0.70, 0.1, status="pruned"),
    )


def by_name(ranked: pd.DataFrame) -> dict[str, dict]:
    return {r["run_name"]: r for r in ranked.to_dict(orient="records")}


def test_every_run_is_a_row_with_the_promised_columns(board) -> None:
    ranked = rank_runs(board)
    assert list(ranked.columns) == list(COLUMNS)
    assert sorted(ranked["run_name"]) == sorted(board["run_name"])
    assert list(ranked["position"]) == list(range(1, 9))


def test_order_quality_per_dollar_above_floor_then_below_then_unmeasured(board) -> None:
    ranked = rank_runs(board)
    # Floor = 0.9 x 0.82 = 0.738: lora_low (0.6 at $0.2, 3.0 per dollar) would lead without it.
    assert ranked.attrs["min_quality"] == pytest.approx(0.738)
    assert list(ranked["run_name"]) == [
        "lora_b", "qlora_c", "lora_a", "full_d",  # 1.56, 1.25, 0.80, 0.205 quality per dollar
        "pruned_f", "lora_low", "base",  # below the floor, by quality
        "failed_e",  # no test quality: last, still listed with its cost
    ]
    assert list(ranked["below_floor"]) == [False] * 4 + [True] * 4
    failed = by_name(ranked)["failed_e"]
    assert failed["cost_usd"] == 0.3 and failed["status"] == "failed"
    assert not failed["pareto"]
    assert math.isnan(failed["quality_per_dollar"])


def test_explicit_floor_changes_the_order(board) -> None:
    ranked = rank_runs(board, min_quality=0.5)
    assert list(ranked["run_name"][:3]) == ["pruned_f", "lora_low", "lora_b"]  # 7.0, 3.0, 1.56 per dollar
    assert by_name(ranked)["base"]["below_floor"]
    assert ranked.attrs["min_quality"] == 0.5


def test_quality_per_dollar_and_lift(board) -> None:
    rows = by_name(rank_runs(board))
    assert rows["lora_b"]["quality_per_dollar"] == pytest.approx(0.78 / 0.5)
    assert rows["lora_a"]["lift_over_baseline"] == pytest.approx(0.40)
    assert rows["base"]["lift_over_baseline"] == pytest.approx(0.0)


def test_pareto_front(board) -> None:
    rows = by_name(rank_runs(board))
    front = {name for name, r in rows.items() if r["pareto"]}
    # qlora_c is beaten by lora_b (better and cheaper); lora_low by pruned_f; failed runs are never on it.
    assert front == {"base", "pruned_f", "lora_b", "lora_a", "full_d"}


def test_pareto_needs_strictly_better_on_one_axis() -> None:
    quality = pd.Series([0.8, 0.8, 0.8, 0.7, None])
    cost = pd.Series([1.0, 1.0, 2.0, 1.0, 0.1])
    # Two identical runs do not dominate each other; equal quality at a higher cost, or lower quality
    # at equal cost, is dominated; a run without quality is never on the front.
    assert pareto_flags(quality, cost) == [True, True, False, False, False]


def test_ties_follow_interval_overlap(frame, make_row) -> None:
    df = frame(
        make_row("best", quality=0.90, cost=2.0, n_test=1000),
        make_row("close", quality=0.88, cost=1.0, n_test=1000),
        make_row("far", quality=0.80, cost=0.5, n_test=1000),
    )
    rows = by_name(rank_runs(df))
    assert wilson_interval(0.88, 1000)[1] >= wilson_interval(0.90, 1000)[0]  # the premise of the test
    assert wilson_interval(0.80, 1000)[1] < wilson_interval(0.90, 1000)[0]
    assert rows["best"]["tied_with_best"] and rows["close"]["tied_with_best"]
    assert not rows["far"]["tied_with_best"]
    # No per-example scores: the fallback is said per row (and in the warnings).
    assert rows["close"]["tie_test"] == rows["far"]["tie_test"] == "interval-overlap"
    assert pd.isna(rows["close"]["p_vs_best"])
    assert any("could not be paired example by example" in w for w in rank_runs(df).attrs["warnings"])


def test_ties_with_per_example_scores_use_the_paired_test(frame, make_row) -> None:
    n = 1000
    best = [1.0] * 900 + [0.0] * 100

    def shifted(lost: int, gained: int) -> list[float]:
        # best's scores with `lost` of its right answers wrong and `gained` of its wrong answers right
        return [0.0] * lost + [1.0] * (900 - lost) + [1.0] * gained + [0.0] * (100 - gained)

    df = frame(
        make_row("best", quality=0.90, cost=2.0, n_test=n, scores=best),
        # 0.88: intervals overlap, but 20 lost against 0 gained is no accident (p = 2 x 0.5^20).
        make_row("close_but_worse", quality=0.88, cost=1.0, n_test=n, scores=shifted(20, 0)),
        # 0.89: 15 lost, 5 gained: p = 2 x P(X <= 5), X ~ Bin(20, 1/2) = 2 x 21700 / 2^20 = 0.041: not tied.
        make_row("mixed", quality=0.89, cost=1.0, n_test=n, scores=shifted(15, 5)),
        # 0.895: 10 lost, 5 gained: p = 2 x P(X <= 5), X ~ Bin(15, 1/2) = 2 x 4944 / 2^15 = 0.30: tied.
        make_row("noise", quality=0.895, cost=1.0, n_test=n, scores=shifted(10, 5)),
    )
    rows = by_name(rank_runs(df))
    assert rows["best"]["best"] and rows["best"]["tied_with_best"]
    assert rows["close_but_worse"]["p_vs_best"] == pytest.approx(2 * 0.5**20)
    assert not rows["close_but_worse"]["tied_with_best"]
    assert rows["mixed"]["p_vs_best"] == pytest.approx(0.04138946533203125)
    assert not rows["mixed"]["tied_with_best"]
    assert rows["noise"]["p_vs_best"] == pytest.approx(0.3017578125)
    assert rows["noise"]["tied_with_best"] and rows["noise"]["tie_test"] == "mcnemar-exact"


def test_the_best_run_is_chosen_on_validation(frame, make_row) -> None:
    df = frame(
        make_row("top_on_test", quality=0.90, val_quality=0.70, n_test=1000),
        make_row("top_on_val", quality=0.80, val_quality=0.85, n_test=1000),
        make_row("same_val_dearer", quality=0.95, val_quality=0.85, cost=3.0, n_test=1000),
    )
    ranked = rank_runs(df)
    rows = by_name(ranked)
    # Equal validation quality: the cheaper run, never the better test score.
    assert [name for name, r in rows.items() if r["best"]] == ["top_on_val"]
    assert ranked.attrs["best_run_id"] == "id-top_on_val" and ranked.attrs["selected_on"] == "validation"
    assert not rows["top_on_test"]["tied_with_best"]  # 0.90 vs 0.80 on 1000: the intervals are apart
    assert ranked.attrs["val_floor"] == pytest.approx(0.9 * 0.85)


def test_small_test_sets_tie_more(frame, make_row) -> None:
    df = frame(make_row("best", quality=0.90, n_test=30), make_row("far", quality=0.80, n_test=30))
    assert rank_runs(df)["tied_with_best"].all()


def test_intervals_are_wilson_for_exact_match(board) -> None:
    rows = by_name(rank_runs(board))
    low, high = wilson_interval(0.78, 400)
    assert rows["lora_b"]["test_quality_ci_low"] == pytest.approx(low)
    assert rows["lora_b"]["test_quality_ci_high"] == pytest.approx(high)
    assert rows["lora_b"]["ci_method"] == "wilson"
    assert rows["failed_e"]["ci_method"] == "none"


def test_token_f1_uses_bootstrap_or_says_it_fell_back(frame, make_row) -> None:
    scores = [0.5, 0.6, 0.7, 0.8, 0.9] * 20
    df = frame(
        make_row("with_scores", metric="token_f1", quality=0.7, n_test=100, scores=scores),
        make_row("without", metric="token_f1", quality=0.7, n_test=100),
    )
    rows = by_name(rank_runs(df))
    assert rows["with_scores"]["ci_method"] == "bootstrap"
    assert rows["without"]["ci_method"] == "normal-approx"
    # The bootstrap uses the real spread (sd ~0.14); the fallback assumes the worst case (sd ~0.46).
    width = {k: r["test_quality_ci_high"] - r["test_quality_ci_low"] for k, r in rows.items()}
    assert width["with_scores"] < width["without"] / 2


def test_zero_or_missing_cost_does_not_divide(frame, make_row) -> None:
    ranked = rank_runs(frame(make_row("free", cost=0.0), make_row("unknown", cost=None), make_row("paid")))
    rows = by_name(ranked)
    assert math.isnan(rows["free"]["quality_per_dollar"])
    assert math.isnan(rows["unknown"]["quality_per_dollar"])
    assert ranked["run_name"].iloc[0] == "paid"


def test_each_sweep_is_lifted_over_its_own_baseline(frame, make_row) -> None:
    df = frame(
        make_row("base1", "none", 0.3, sweep="s1"), make_row("t1", quality=0.7, sweep="s1"),
        make_row("base2", "none", 0.5, sweep="s2"), make_row("t2", quality=0.7, sweep="s2"),
    )
    rows = by_name(rank_runs(df))
    assert rows["t1"]["lift_over_baseline"] == pytest.approx(0.4)
    assert rows["t2"]["lift_over_baseline"] == pytest.approx(0.2)


def test_another_sweeps_baseline_counts_only_with_the_same_metric(frame, make_row) -> None:
    df = frame(
        make_row("base1", "none", 0.3, sweep="s1"),
        make_row("t2", quality=0.7, sweep="s2"),
        make_row("t3", quality=0.7, sweep="s3", metric="token_f1"),
    )
    rows = by_name(rank_runs(df))
    assert rows["t2"]["lift_over_baseline"] == pytest.approx(0.4)
    assert math.isnan(rows["t3"]["lift_over_baseline"])


def test_no_baseline_means_no_lift(frame, make_row) -> None:
    rows = by_name(rank_runs(frame(make_row("t", quality=0.7))))
    assert rows["t"]["lift_over_baseline"] is None


def test_empty_and_all_failed_boards(frame, make_row) -> None:
    assert rank_runs(frame()).empty
    ranked = rank_runs(frame(make_row("x", quality=None, status="failed", cost=0.2)))
    assert ranked.attrs["min_quality"] is None
    assert list(ranked["below_floor"]) == [True]
    assert list(ranked["pareto"]) == [False]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_floor_outside_zero_one_is_refused(board, bad) -> None:
    with pytest.raises(ValueError, match="min_quality"):
        rank_runs(board, min_quality=bad)


def test_runs_are_paired_only_on_the_same_test_set_length_and_metric(frame, make_row) -> None:
    n = 100
    best = [1.0] * 90 + [0.0] * 10
    worse = [0.0] * 20 + [1.0] * 70 + [0.0] * 10  # 20 lost, none gained: p = 2 x 0.5^20 when paired
    df = frame(
        make_row("best", quality=0.90, val_quality=0.9, n_test=n, scores=best),
        make_row("paired", quality=0.70, val_quality=0.7, n_test=n, scores=worse),
        make_row("other_set", quality=0.70, val_quality=0.7, n_test=n, scores=worse, test_set_sha256="b" * 64),
        make_row("no_hash", quality=0.70, val_quality=0.7, n_test=n, scores=worse, test_set_sha256=None),
        make_row("shorter", quality=0.70, val_quality=0.7, n_test=n - 10, scores=worse[:-10]),
        make_row("other_metric", quality=0.70, val_quality=0.7, n_test=n, scores=worse, metric="accuracy"),
    )
    rows = by_name(rank_runs(df))
    assert rows["paired"]["tie_test"] == "mcnemar-exact"
    assert rows["paired"]["p_vs_best"] == pytest.approx(2 * 0.5**20)
    for name in ("other_set", "no_hash", "shorter", "other_metric"):
        assert rows[name]["tie_test"] == "interval-overlap", name
        assert pd.isna(rows[name]["p_vs_best"])
