from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from leaderboard.decision import Decision, adapter_configs, decide
from leaderboard.rank import rank_runs
from search_spaces.rates import RateRange

BLOCKED_ALL = "margin, significance, adapter_rate_bracketed, full_rate_bracketed, adapter_capacity"


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
    assert f"Escalation is blocked by {BLOCKED_ALL}: full fine-tuning is not" in text
    assert "Recommended: lora_b (lora, r=32, alpha=64, lr=2e-4" in text
    assert "test 0.780" in text and "(val 0.780)" in text and "cost $0.50" in text and "adapter 12.2 MB" in text


def bracketed(make_row, n: int = 400) -> list[dict]:
    """Both learning rates bracketed on validation curves and more LoRA capacity tried at its best rate.

    LoRA (r=16, attention): 1e-3 beats 3e-4 and 3e-3 (diverged) at step 20; all-linear at 1e-3 gains 0.03.
    Full: 1e-4 beats 3e-5 and 3e-4 at step 40. The best adapter by validation is lora-all (test 320/400),
    the best full run full-1e-4 (360/400): +0.10, McNemar p = 2 x 0.5^40."""
    lora = {"target_modules": "attention", "lora_dropout": 0.05, "n_test": n}
    return [
        make_row("base", "none", 0.40, 0.05, n_test=n, scores=hits(n, 160)),
        make_row("lora-3e-4", "lora", 0.74, 1.0, learning_rate=3e-4, val_quality=0.78, scores=hits(n, 296),
                 val_curve={10: 0.70, 20: 0.78}, **lora),
        make_row("lora-1e-3", "lora", 0.78, 1.0, learning_rate=1e-3, val_quality=0.86, scores=hits(n, 312),
                 val_curve={10: 0.75, 20: 0.86}, **lora),
        make_row("lora-3e-3", "lora", None, 0.2, learning_rate=3e-3, status="failed",
                 error="Diverged: training loss 40.1 over steps to 10 against 2.3 at step 1", **lora),
        make_row("lora-oom", "lora", None, 0.1, learning_rate=2e-3, status="failed", error="CUDA out of memory",
                 **lora),
        make_row("lora-all", "lora", 0.80, 1.3, learning_rate=1e-3, val_quality=0.89, scores=hits(n, 320),
                 val_curve={10: 0.77, 20: 0.89}, **{**lora, "target_modules": "all-linear"}),
        make_row("full-3e-5", "full", 0.86, 6.0, learning_rate=3e-5, val_quality=0.85, n_test=n,
                 scores=hits(n, 344), val_curve={20: 0.80, 40: 0.85}),
        make_row("full-1e-4", "full", 0.90, 6.0, learning_rate=1e-4, val_quality=0.92, n_test=n,
                 scores=hits(n, 360), val_curve={20: 0.84, 40: 0.92}),
        make_row("full-3e-4", "full", 0.84, 6.0, learning_rate=3e-4, val_quality=0.82, n_test=n,
                 scores=hits(n, 336), val_curve={20: 0.83, 40: 0.82}),
    ]


def test_all_five_conditions_met_escalates_and_says_which_limit_lora_hit(frame, make_row) -> None:
    decision = decide(rank_runs(frame(*bracketed(make_row))))
    assert decision.escalation_conditions == {"margin": True, "significance": True, "adapter_rate_bracketed": True,
                                              "full_rate_bracketed": True, "adapter_capacity": True}
    assert decision.escalate_to_full is True and decision.escalation_blocked_by is None
    assert decision.best_adapter is not None and decision.best_adapter["run_name"] == "lora-all"
    assert decision.best_full is not None and decision.best_full["run_name"] == "full-1e-4"
    assert decision.full_vs_adapter_test == "mcnemar-exact"
    assert decision.full_vs_adapter_p_value == pytest.approx(2 * 0.5**40)
    assert decision.recommended is not None and decision.recommended["run_name"] == "full-1e-4"
    assert decision.next_step is None
    text = decision.text
    # The limit LoRA hit: its bracketed rate with both neighbours' scores and the step they were compared at,
    # the capacity tried there, then full fine-tuning's gain, cost and p-value.
    assert ("LoRA's learning rate is bracketed: 1e-3 scored 0.860 on validation at step 20, above 3e-4 (0.780) "
            "and 3e-3 (diverged).") in text
    assert "all-linear at 1e-3: +0.030 at step 20" in text
    assert ("Full fine-tuning's learning rate is bracketed: 1e-4 scored 0.920 on validation at step 40, above "
            "3e-5 (0.850) and 3e-4 (0.820).") in text
    assert "+0.100 test exact_match over the best adapter run at 4.6x its cost" in text
    assert text.index("LoRA's learning rate") < text.index("all-linear at 1e-3") < text.index("Full fine-tuning:")
    assert "p = 1.8e-12 (needs < 0.05): met" in text
    assert "All five are met: escalating to full fine-tuning is justified" in text
    adapter = decision.brackets["adapter"]
    assert adapter is not None and adapter["rates"] == pytest.approx({"0.0003": 0.78, "0.001": 0.86, "0.003": None})
    assert adapter["diverged"] == ["0.003"]  # the out-of-memory run at 2e-3 is no evidence about the rate
    assert [c["label"] for c in decision.capacity] == ["lora-all"]


def test_no_capacity_tried_at_the_bracketed_rate_blocks_and_names_the_trial(frame, make_row) -> None:
    rows = [r for r in bracketed(make_row) if r["run_name"] != "lora-all"]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalation_blocked_by == "adapter_capacity" and decision.escalate_to_full is False
    assert decision.recommended is not None and decision.recommended["method"] == "lora"
    assert "No capacity increase (a higher rank or broader target modules) was tried at LoRA's best rate " \
           "1e-3." in decision.text
    assert decision.next_step is not None
    assert decision.next_step.startswith("to decide on full fine-tuning, run lora (rank 16, alpha 32, "
                                         "target_modules attention, lora_dropout 0.05) with a higher rank or "
                                         "all-linear targets at learning_rate 1e-3")


def test_a_best_rate_at_the_edge_of_the_range_is_bracketed_on_that_side(frame, make_row) -> None:
    rows = [r for r in bracketed(make_row) if r["run_name"] != "lora-3e-3"]
    ranked = rank_runs(frame(*rows))
    # Without the space, 1e-3 has an untried rung above it (3e-3): not bracketed.
    open_above = decide(ranked)
    assert open_above.escalation_blocked_by == "adapter_rate_bracketed"
    assert open_above.brackets["adapter"] is not None and open_above.brackets["adapter"]["next_rates"] == [3e-3]
    # The space's LoRA range ends at 1e-3: its edge closes that side.
    ranges = {"adapter": RateRange(1e-5, 1e-3), "full": RateRange(1e-6, 1e-3)}
    decision = decide(ranked, ranges=ranges)
    assert decision.escalate_to_full is True
    assert ("1e-3 scored 0.860 on validation at step 20, above 3e-4 (0.780); 1e-3 is at the upper edge of the "
            "search range (no rung of the ~3x ladder lies beyond it inside the range).") in decision.text
    assert decision.rate_ranges["adapter"] == {"low": 1e-5, "high": 1e-3, "choices": None}


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
    assert decision.escalation_conditions["margin"] is True and decision.escalation_conditions["significance"] is False
    assert decision.recommended is not None and decision.recommended["method"] in ("lora", "qlora")
    assert "paired mcnemar-exact test on 100 test examples, p = 0.267 (needs < 0.05): not met" in decision.text
    assert decision.next_step is not None and "larger locked test set" in decision.next_step


def test_a_significant_gain_over_an_adapter_at_one_untried_rate_is_not_escalated(frame, make_row) -> None:
    """Full beats the adapter by a wide, significant margin, but LoRA only ever ran at 2e-4: its limit may be
    its learning rate, so the adapter stays and the next step names the rates to try."""
    n = 400
    rows = [make_row("lora_a", "lora", 0.80, 1.0, n_test=n, scores=hits(n, 320), val_curve={10: 0.7, 20: 0.8}),
            make_row("lora_b", "lora", 0.78, 0.5, rank=32, alpha=64, n_test=n, scores=hits(n, 312)),
            make_row("full", "full", 0.90, 6.0, learning_rate=1e-4, n_test=n, scores=hits(n, 360))]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalation_conditions["margin"] is True and decision.escalation_conditions["significance"]
    assert decision.escalation_conditions["adapter_rate_bracketed"] is False
    assert decision.escalation_blocked_by == "adapter_rate_bracketed"
    assert decision.escalate_to_full is False
    assert decision.recommended is not None and decision.recommended["method"] == "lora"
    assert ("LoRA's learning rate is not bracketed: 2e-4 scored 0.800 on validation at step 20; no rate tried "
            "below or above it.") in decision.text
    assert decision.next_step is not None
    assert decision.next_step.startswith("to decide on full fine-tuning, run lora (rank 16, alpha 32, "
                                         "target_modules q_proj,k_proj,v_proj,o_proj) at learning_rate 6.67e-5 "
                                         "and 6e-4 to bracket LoRA's rate; full at learning_rate 3.33e-5 and 3e-4")
    assert "sweepboard leaderboard <this sweep> <new name>" in decision.next_step
    assert "Next: to decide on full fine-tuning, run lora" in decision.text


def test_the_first_failed_condition_is_named_and_all_are_listed(frame, make_row) -> None:
    # Within the margin AND too few adapters: blocked_by names the margin, the conditions hold both.
    rows = [make_row("lora_a", "lora", 0.80, 1.0), make_row("full", "full", 0.81, 4.0)]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalation_blocked_by == "margin"
    assert decision.escalation_conditions["adapter_rate_bracketed"] is False
    assert f"Escalation is blocked by {BLOCKED_ALL}" in decision.text


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
    assert decision.next_step is not None and decision.next_step.startswith("tune LoRA/QLoRA before deciding")


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
    assert document["brackets"]["adapter"]["best_rate"] == pytest.approx(2e-4)
    assert document["brackets"]["full"] is None  # the full run has no learning rate
    assert document["capacity"] == []


def test_diverged_scores_serialise_without_infinity(frame, make_row) -> None:
    decision = decide(rank_runs(frame(*bracketed(make_row))))
    document = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    above = document["brackets"]["adapter"]["above"]
    assert above == {"rate": 3e-3, "score": None, "label": "lora-3e-3", "closed": True, "edge": False,
                     "diverged": True}
    assert document["brackets"]["adapter"]["below"]["diverged"] is False


def test_min_adapter_configs_is_gone_from_the_decision() -> None:
    assert "min_adapter_configs" not in inspect.signature(decide).parameters
    assert "min_adapter_configs" not in {f.name for f in dataclasses.fields(Decision)}


def test_without_curves_each_run_stands_on_its_final_validation_score(frame, make_row) -> None:
    """Older frames have no val_curve: a run's one point is val_quality at its steps."""
    rows = [make_row(f"lora-{rate:g}", "lora", quality, 1.0, learning_rate=rate, steps=40)
            for rate, quality in ((2e-4, 0.70), (6e-4, 0.80), (1.8e-3, 0.75))]
    ranked = rank_runs(frame(*rows)).drop(columns="val_curve")
    decision = decide(ranked)
    adapter = decision.brackets["adapter"]
    assert adapter is not None and adapter["bracketed"] and adapter["step"] == 40
    assert adapter["best_rate"] == pytest.approx(6e-4) and adapter["best_score"] == pytest.approx(0.80)
