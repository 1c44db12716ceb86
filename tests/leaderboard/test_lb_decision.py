from __future__ import annotations

import json

import pytest

from leaderboard.decision import adapter_configs, decide
from leaderboard.rank import rank_runs


def hits(n: int, right: int, start: int = 0) -> list[float]:
    """n per-example 0/1 scores, right on examples start .. start+right-1 (wrapping)."""
    scores = [0.0] * n
    for i in range(right):
        scores[(start + i) % n] = 1.0
    return scores


@pytest.fixture
def sweep_rows(make_row):
    return [
        make_row("base", "none", 0.40, 0.05),
        make_row("lora_a", "lora", 0.80, 1.0),
        make_row("lora_b", "lora", 0.78, 0.5, adapter_mb=12.25, rank=32, alpha=64),
        make_row("failed", "qlora", None, 0.3, status="failed"),
    ]


def three_adapters(make_row, n: int = 400, right: int = 320) -> list[dict]:
    """Three distinct adapter configurations; lora_a is the best by validation, right on `right` of n."""
    return [
        make_row("base", "none", 0.40, 0.05, n_test=n, scores=hits(n, int(0.4 * n))),
        make_row("lora_a", "lora", right / n, 1.0, n_test=n, scores=hits(n, right)),
        make_row("lora_b", "lora", 0.78, 0.5, rank=32, alpha=64, n_test=n, scores=hits(n, int(0.78 * n))),
        make_row("qlora_c", "qlora", 0.75, 0.6, rank=8, alpha=16, n_test=n, scores=hits(n, int(0.75 * n))),
    ]


def test_full_within_margin_keeps_the_cheapest_good_adapter(frame, make_row, sweep_rows) -> None:
    ranked = rank_runs(frame(*sweep_rows, make_row("full", "full", 0.815, 4.0)))
    decision = decide(ranked, margin=0.02)
    assert decision.escalate_to_full is False
    assert decision.escalation_blocked_by == "margin"
    assert decision.full_gain == pytest.approx(0.015)
    assert decision.full_cost_multiple == pytest.approx(4.0)
    assert decision.baseline_quality == pytest.approx(0.40)
    assert decision.best_adapter is not None and decision.best_adapter["run_name"] == "lora_a"
    # Most validation quality per dollar above the validation floor (0.9 x 0.815): 0.78/$0.5 beats 0.80/$1.
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora_b"
    text = decision.text
    assert "Chosen on validation" in text
    assert "Baseline (base model, no fine-tuning): 0.400" in text
    assert "Best LoRA/QLoRA run (of 2 completed configuration(s)): lora_a" in text
    assert "+0.015 test exact_match over the best adapter run at 4.0x its cost" in text
    assert "gain +0.015 > margin 0.02: not met" in text
    assert "Escalation is blocked by margin, significance, adapter_configs: full fine-tuning is not" in text
    assert "Recommended: lora_b (lora, r=32, alpha=64, lr=2e-4" in text
    assert "test 0.780" in text and "(val 0.780)" in text and "cost $0.50" in text and "adapter 12.2 MB" in text


def test_all_three_conditions_met_escalates(frame, make_row) -> None:
    n = 400
    rows = [*three_adapters(make_row, n),
            make_row("full_big", "full", 0.90, 6.0, n_test=n, scores=hits(n, 360)),
            make_row("full_small", "full", 0.85, 3.0, n_test=n, scores=hits(n, 340), val_quality=0.84)]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalate_to_full is True
    assert decision.escalation_blocked_by is None
    assert decision.escalation_conditions == {"margin": True, "significance": True, "adapter_configs": True}
    assert decision.adapter_configs_completed == 3
    assert decision.best_full is not None and decision.best_full["run_name"] == "full_big"
    # full_big right on every example lora_a gets right and 40 more: McNemar p = 2 x 0.5^40.
    assert decision.full_vs_adapter_test == "mcnemar-exact"
    assert decision.full_vs_adapter_p_value == pytest.approx(2 * 0.5**40)
    # The recommendation is the full run the paired test was run on, chosen on validation.
    assert decision.recommended is not None and decision.recommended["run_name"] == "full_big"
    assert "All three are met: escalating to full fine-tuning is justified" in decision.text
    assert decision.next_step is None


def test_a_gain_beyond_the_margin_that_is_not_significant_is_blocked(frame, make_row) -> None:
    n = 100
    adapter = hits(n, 80)  # right on 0..79
    # Right on 0..75 (missing 4 the adapter gets) and on 80..88 (9 the adapter misses): 85 of 100.
    full = [1.0 if i < 76 or 80 <= i < 89 else 0.0 for i in range(n)]
    rows = [
        make_row("lora_a", "lora", 0.80, 1.0, n_test=n, scores=adapter),
        make_row("lora_b", "lora", 0.78, 0.5, rank=32, alpha=64, n_test=n, scores=hits(n, 78)),
        make_row("qlora_c", "qlora", 0.75, 0.6, rank=8, alpha=16, n_test=n, scores=hits(n, 75)),
        make_row("full", "full", 0.85, 4.0, n_test=n, scores=full),
    ]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.full_gain == pytest.approx(0.05)  # 5 points: more than the 2-point margin
    # Discordant pairs: 9 full-only, 4 adapter-only: p = 2 x P(X <= 4), X ~ Bin(13, 1/2) = 2186/8192.
    assert decision.full_vs_adapter_p_value == pytest.approx(2186 / 8192)
    assert decision.escalate_to_full is False
    assert decision.escalation_blocked_by == "significance"
    assert decision.escalation_conditions == {"margin": True, "significance": False, "adapter_configs": True}
    assert decision.recommended is not None and decision.recommended["method"] in ("lora", "qlora")
    assert "paired mcnemar-exact test on 100 test examples, p = 0.267 (needs < 0.05): not met" in decision.text
    assert decision.next_step is not None and "larger locked test set" in decision.next_step


def test_too_few_adapter_configs_block_escalation_and_say_how_many_more(frame, make_row) -> None:
    n = 400
    rows = three_adapters(make_row, n)[:3]  # base, lora_a, lora_b: two configurations
    rows.append(make_row("lora_a_again", "lora", 0.79, 1.1, n_test=n, scores=hits(n, 316)))  # lora_a's config
    rows.append(make_row("full", "full", 0.90, 6.0, n_test=n, scores=hits(n, 360)))
    decision = decide(rank_runs(frame(*rows)))
    assert decision.adapter_configs_completed == 2  # the repeated configuration counts once
    assert decision.escalation_conditions == {"margin": True, "significance": True, "adapter_configs": False}
    assert decision.escalation_blocked_by == "adapter_configs"
    assert decision.escalate_to_full is False
    assert decision.recommended is not None and decision.recommended["method"] == "lora"
    assert "2 of at least 3 adapter configurations completed: not met" in decision.text
    assert decision.next_step is not None
    assert decision.next_step.startswith("run 1 more LoRA/QLoRA configuration before")
    assert "TRIALS=" in decision.next_step and "make resume" in decision.next_step
    assert "Next: run 1 more LoRA/QLoRA configuration" in decision.text
    # The same board with a lower bar escalates.
    assert decide(rank_runs(frame(*rows)), min_adapter_configs=2).escalate_to_full is True


def test_the_first_failed_condition_is_named_and_all_are_listed(frame, make_row) -> None:
    # Within the margin AND too few adapters: blocked_by names the margin, the conditions hold both.
    rows = [make_row("lora_a", "lora", 0.80, 1.0), make_row("full", "full", 0.81, 4.0)]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalation_blocked_by == "margin"
    assert decision.escalation_conditions["adapter_configs"] is False
    assert "Escalation is blocked by margin, significance, adapter_configs" in decision.text


def test_chosen_on_validation_not_on_test(frame, make_row) -> None:
    """Validation and test disagree: every choice follows validation; test is only reported."""
    n = 400
    rows = [
        make_row("base", "none", 0.40, 0.05, n_test=n, scores=hits(n, 160)),
        # lora_val is best on validation, lora_test on test.
        make_row("lora_val", "lora", 0.78, 1.0, val_quality=0.85, n_test=n, scores=hits(n, 312)),
        make_row("lora_test", "lora", 0.82, 1.0, val_quality=0.75, rank=32, alpha=64, n_test=n,
                 scores=hits(n, 328)),
        make_row("qlora_c", "qlora", 0.76, 0.9, val_quality=0.74, rank=8, n_test=n, scores=hits(n, 304)),
        # full_val is best full on validation; full_test would escalate on test (0.95 vs 0.82).
        make_row("full_val", "full", 0.79, 5.0, val_quality=0.90, n_test=n, scores=hits(n, 316)),
        make_row("full_test", "full", 0.95, 5.0, val_quality=0.60, n_test=n, scores=hits(n, 380)),
    ]
    ranked = rank_runs(frame(*rows))
    best = ranked[ranked["best"]]
    assert list(best["run_name"]) == ["full_val"]  # highest val_quality (0.90), not the highest test score
    assert ranked.attrs["best_run_id"] == "id-full_val" and ranked.attrs["selected_on"] == "validation"
    decision = decide(ranked)
    assert decision.selected_on == "validation"
    assert decision.best_adapter is not None and decision.best_adapter["run_name"] == "lora_val"
    assert decision.best_full is not None and decision.best_full["run_name"] == "full_val"
    assert decision.full_gain == pytest.approx(0.79 - 0.78)  # the test scores of the validation choices
    assert decision.escalate_to_full is False and decision.escalation_blocked_by == "margin"
    # The validation floor is 0.9 x 0.90 = 0.81: of the adapters only lora_val (0.85) reaches it.
    assert decision.val_floor == pytest.approx(0.81)
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora_val"
    assert decision.reason == "most validation quality per dollar at or above the validation floor"
    # Chosen on test instead, full_test would have won the board and escalation: that is what must not happen.
    assert ranked.sort_values("test_quality").iloc[-1]["run_name"] == "full_test"


def test_below_the_validation_floor_the_best_adapter_by_validation_is_recommended(frame, make_row) -> None:
    rows = [make_row("lora_a", "lora", 0.70, 1.0, val_quality=0.70),
            make_row("lora_b", "lora", 0.72, 0.2, val_quality=0.65, rank=8),
            make_row("full", "full", 0.74, 4.0, val_quality=0.95)]  # sets the floor: 0.9 x 0.95 = 0.855
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalate_to_full is False  # margin met, but not significant and 2 configurations
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora_a"
    assert decision.reason == "highest validation quality, though no run of this method reaches the validation floor"


def test_a_run_without_validation_quality_is_shown_but_not_chosen(frame, make_row) -> None:
    rows = [make_row("lora_a", "lora", 0.80, 1.0), make_row("no_val", "lora", 0.95, 0.1, val_quality=None,
                                                             rank=4)]
    ranked = rank_runs(frame(*rows))
    assert "no_val" in set(ranked["run_name"]) and ranked["run_name"].iloc[0] == "no_val"  # 9.5 per dollar
    assert list(ranked.loc[ranked["best"], "run_name"]) == ["lora_a"]
    decision = decide(ranked)
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora_a"
    assert any("1 run(s) have a test quality but no val_quality (no_val)" in w
               for w in ranked.attrs["warnings"])


def test_without_per_example_scores_significance_falls_back_to_intervals(frame, make_row) -> None:
    rows = [make_row("lora_a", "lora", 0.70, 1.0, n_test=1000), make_row("lora_b", "lora", 0.69, 1.0, rank=8),
            make_row("qlora", "qlora", 0.68, 1.0), make_row("full", "full", 0.80, 4.0, n_test=1000)]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.full_vs_adapter_test == "interval-overlap"
    assert decision.full_vs_adapter_p_value is None
    assert decision.escalation_conditions["significance"] is True  # Wilson intervals at n=1000 do not overlap
    assert "no per-example scores to pair" in decision.text


def test_exactly_the_margin_is_not_more_than_the_margin(frame, make_row) -> None:
    # 0.83 - 0.81 is 0.02000000000000002 in floating point.
    ranked = rank_runs(frame(make_row("lora", "lora", 0.81, 1.0), make_row("full", "full", 0.83, 3.0)))
    assert decide(ranked, margin=0.02).escalation_conditions["margin"] is False
    assert decide(ranked, margin=0.019).escalation_conditions["margin"] is True


def test_margin_defaults_to_the_one_given_to_rank_runs(frame, make_row) -> None:
    ranked = rank_runs(frame(make_row("lora", "lora", 0.80, 1.0), make_row("full", "full", 0.83, 3.0)),
                       margin=0.05)
    decision = decide(ranked)
    assert decision.margin == 0.05 and decision.escalation_blocked_by == "margin"


def test_base_model_good_enough_is_recommended(frame, make_row) -> None:
    ranked = rank_runs(frame(make_row("base", "none", 0.79, 0.05), make_row("lora", "lora", 0.80, 1.0)))
    decision = decide(ranked)
    assert decision.recommended is not None and decision.recommended["method"] == "none"
    assert "does not beat the base model's test score by more than the 0.02 margin" in decision.text


def test_no_baseline_and_no_full_are_said(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("lora", "lora", 0.8, 1.0))))
    assert "No baseline run" in decision.text
    assert "No full fine-tuning run" in decision.text
    assert decision.baseline_quality is None and decision.escalate_to_full is None
    assert decision.escalation_blocked_by is None and decision.full_vs_adapter_p_value is None
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora"


def test_only_full_runs_say_to_tune_adapters_first(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("f1", "full", 0.8, 4.0), make_row("f2", "full", 0.78, 2.0))))
    assert decision.best_adapter is None and decision.adapter_configs_completed == 0
    assert decision.recommended is not None and decision.recommended["run_name"] == "f2"
    assert decision.next_step is not None and decision.next_step.startswith("run 3 more LoRA/QLoRA configurations")


def test_nothing_measured_means_no_recommendation(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("x", quality=None, status="failed"))))
    assert decision.recommended is None
    assert decision.text.endswith("No recommendation: no run has both a validation and a test quality to "
                                  "choose by (all failed, are still running, or logged no val_quality).")


def test_adapter_configs_count_distinct_settings_with_a_test_score(frame, make_row) -> None:
    rows = rank_runs(frame(
        make_row("a", "lora"), make_row("a2", "lora", learning_rate=2.0000000000001e-4),  # same config
        make_row("b", "qlora"),  # another method is another configuration
        make_row("c", "lora", target_modules="k_proj,q_proj,v_proj,o_proj"),  # same modules, another order
        make_row("d", "lora", lora_dropout=0.1),
        make_row("e", "lora", quality=None, rank=64, status="failed"),  # no test score: not completed
        make_row("f", "full"),
    ))
    assert adapter_configs(rows) == 3


def test_decision_is_json_serialisable_with_the_new_fields(frame, make_row, sweep_rows) -> None:
    decision = decide(rank_runs(frame(*sweep_rows, make_row("full", "full", 0.84, 4.0))))
    document = json.loads(json.dumps(decision.to_dict()))
    assert document["recommended"]["rank"] == 32
    assert document["min_quality"] == pytest.approx(0.756)
    assert document["selected_on"] == "validation"
    assert document["adapter_configs_completed"] == 2
    assert document["escalation_blocked_by"] == "significance"  # no per-example scores, intervals overlap
    assert "full_vs_adapter_p_value" in document and document["full_vs_adapter_p_value"] is None


def test_negative_min_adapter_configs_is_refused(frame, make_row) -> None:
    with pytest.raises(ValueError, match="min_adapter_configs must be >= 0"):
        decide(rank_runs(frame(make_row("a"))), min_adapter_configs=-1)
