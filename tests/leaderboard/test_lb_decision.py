from __future__ import annotations

import json

import pytest

from leaderboard.decision import decide
from leaderboard.rank import rank_runs


@pytest.fixture
def sweep_rows(make_row):
    return [
        make_row("base", "none", 0.40, 0.05),
        make_row("lora_a", "lora", 0.80, 1.0),
        make_row("lora_b", "lora", 0.78, 0.5, adapter_mb=12.25, rank=32, alpha=64),
        make_row("failed", "qlora", None, 0.3, status="failed"),
    ]


def test_full_within_margin_keeps_the_cheapest_good_adapter(frame, make_row, sweep_rows) -> None:
    ranked = rank_runs(frame(*sweep_rows, make_row("full", "full", 0.815, 4.0)))
    decision = decide(ranked, margin=0.02)
    assert decision.escalate_to_full is False
    assert decision.full_gain == pytest.approx(0.015)
    assert decision.full_cost_multiple == pytest.approx(4.0)
    assert decision.baseline_quality == pytest.approx(0.40)
    assert decision.best_adapter is not None and decision.best_adapter["run_name"] == "lora_a"
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora_b"
    # The text carries the baseline, the best adapter, the full verdict with its cost multiple, and the
    # recommended configuration with quality, cost and adapter size.
    text = decision.text
    assert "Baseline (base model, no fine-tuning): 0.400" in text
    assert "Best LoRA/QLoRA run: lora_a" in text
    assert "+0.015 over the best adapter run at 4.0x its cost" in text
    assert "within the 0.02 margin" in text
    assert "Recommended: lora_b (lora, r=32, alpha=64, lr=2e-4" in text
    assert "quality 0.780" in text and "cost $0.50" in text and "adapter 12.2 MB" in text


def test_full_beyond_margin_escalates(frame, make_row, sweep_rows) -> None:
    rows = [*sweep_rows, make_row("full_big", "full", 0.90, 6.0), make_row("full_small", "full", 0.85, 3.0)]
    decision = decide(rank_runs(frame(*rows)))
    assert decision.escalate_to_full is True
    assert decision.best_full is not None and decision.best_full["run_name"] == "full_big"
    assert decision.full_cost_multiple == pytest.approx(6.0)
    # full_small beats 0.80 + 0.02 too and gives more quality per dollar (0.283 vs 0.15).
    assert decision.recommended is not None and decision.recommended["run_name"] == "full_small"
    assert "more than the 0.02 margin, so escalating to full fine-tuning is justified" in decision.text


def test_exactly_the_margin_is_not_more_than_the_margin(frame, make_row) -> None:
    # 0.83 - 0.81 is 0.02000000000000002 in floating point.
    ranked = rank_runs(frame(make_row("lora", "lora", 0.81, 1.0), make_row("full", "full", 0.83, 3.0)))
    assert decide(ranked, margin=0.02).escalate_to_full is False
    assert decide(ranked, margin=0.019).escalate_to_full is True


def test_margin_defaults_to_the_one_given_to_rank_runs(frame, make_row) -> None:
    ranked = rank_runs(frame(make_row("lora", "lora", 0.80, 1.0), make_row("full", "full", 0.83, 3.0)),
                       margin=0.05)
    decision = decide(ranked)
    assert decision.margin == 0.05 and decision.escalate_to_full is False


def test_base_model_good_enough_is_recommended(frame, make_row) -> None:
    ranked = rank_runs(frame(make_row("base", "none", 0.79, 0.05), make_row("lora", "lora", 0.80, 1.0)))
    decision = decide(ranked)
    assert decision.recommended is not None and decision.recommended["method"] == "none"
    assert "no fine-tuned run beats the base model by more than the 0.02 margin" in decision.text


def test_no_baseline_and_no_full_are_said(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("lora", "lora", 0.8, 1.0))))
    assert "No baseline run" in decision.text
    assert "No full fine-tuning run" in decision.text
    assert decision.baseline_quality is None and decision.escalate_to_full is None
    assert decision.recommended is not None and decision.recommended["run_name"] == "lora"


def test_only_full_runs(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("f1", "full", 0.8, 4.0), make_row("f2", "full", 0.78, 2.0))))
    assert decision.best_adapter is None
    assert decision.recommended is not None and decision.recommended["run_name"] == "f2"


def test_nothing_measured_means_no_recommendation(frame, make_row) -> None:
    decision = decide(rank_runs(frame(make_row("x", quality=None, status="failed"))))
    assert decision.recommended is None
    assert decision.text.endswith("No recommendation: no run has a test quality (all failed or are still "
                                  "running).")


def test_decision_is_json_serialisable(frame, make_row, sweep_rows) -> None:
    decision = decide(rank_runs(frame(*sweep_rows)))
    document = json.loads(json.dumps(decision.to_dict()))
    assert document["recommended"]["rank"] == 32
    assert document["min_quality"] == pytest.approx(0.72)
