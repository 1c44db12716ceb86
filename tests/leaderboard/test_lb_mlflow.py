"""End to end: a real MLflow SQLite store laid out as tracking/names.py says, read back by the leaderboard."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from lb_store import LORA, OTHER_SHA, SHA, final, hits, log_sweep
from mlflow.tracking import MlflowClient

from leaderboard import build, load_runs, main, write_leaderboard
from search_spaces.rates import RateRange

# The search space the "rates" sweep ran in (its parent run's "space" param names this file).
SPACE = """
methods:
  lora:
    rank: {type: categorical, choices: [16, 32]}
    alpha: {type: fixed, value: 32}
    target_modules: {type: categorical, choices: [attention, all-linear]}
    lora_dropout: {type: fixed, value: 0.05}
    learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true}
  full:
    learning_rate: {type: float, low: 1e-6, high: 1e-4, log: true}
"""
ATTENTION = {**LORA, "target_modules": "attention"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # Per-example scores are nested (each run right on the first k of 200 examples), so the paired tests have
    # known discordant pairs: full (156) against qlora-r8 (150) is 6 to 0, McNemar p = 2 x 0.5^6.
    log_sweep(client, root, "demo", "exact_match", [
        {"name": "baseline", "method": "none", "role": "baseline", "metrics": final(0.35, 0.02),
         "scores": hits(200, 70)},
        {"name": "lora-default", "method": "lora", "params": LORA, "metrics": final(0.74, 0.40, adapter=7.0),
         "scores": hits(200, 148)},
        {"name": "qlora-r8", "method": "qlora", "params": {**LORA, "rank": "8", "alpha": "16"},
         "metrics": final(0.75, 0.30, adapter=3.5), "scores": hits(200, 150)},
        {"name": "full", "method": "full", "params": {"learning_rate": "1e-05"}, "metrics": final(0.78, 2.5),
         "scores": hits(200, 156)},
        {"name": "lora-r64-pruned", "method": "lora", "status": "pruned", "val": 0.55,
         "params": {**LORA, "rank": "64", "alpha": "128"}, "metrics": final(0.60, 0.10, adapter=28.0),
         "scores": hits(200, 120)},
        {"name": "lora-oom", "method": "lora", "status": "failed", "error": "CUDA out of memory",
         "params": LORA, "metrics": final(None, 0.05), "val": None},
        {"name": "stale-test-set", "method": "lora", "sha": OTHER_SHA, "params": LORA,
         "metrics": final(0.99, 0.01)},
    ])
    # A run that is not part of the layout (someone logged by hand into the experiment).
    demo = client.get_experiment_by_name("demo")
    assert demo is not None
    client.set_terminated(client.create_run(demo.experiment_id, run_name="stray").info.run_id)
    # Both rates bracketed on validation curves (compared at the deepest step every trial of a family
    # reached), LoRA's best at the range's upper edge, more capacity tried there: full may be recommended.
    (root / "space.yaml").write_text(SPACE)
    log_sweep(client, root, "rates", "exact_match", [
        {"name": "base", "method": "none", "role": "baseline", "metrics": final(0.35, 0.02),
         "scores": hits(200, 70)},
        {"name": "lora-1e-4-pruned", "method": "lora", "status": "pruned", "curve": {20: 0.60},
         "params": {**ATTENTION, "learning_rate": "0.0001"}, "metrics": final(None, 0.10)},
        {"name": "lora-3e-4", "method": "lora", "curve": {20: 0.70, 40: 0.76},
         "params": {**ATTENTION, "learning_rate": "0.0003"}, "metrics": final(0.74, 0.40), "scores": hits(200, 148)},
        {"name": "lora-1e-3", "method": "lora", "curve": {20: 0.78, 40: 0.80},
         "params": {**ATTENTION, "learning_rate": "0.001"}, "metrics": final(0.78, 0.40), "scores": hits(200, 156)},
        {"name": "lora-1e-3-all", "method": "lora", "curve": {20: 0.79, 40: 0.82},
         "params": {**ATTENTION, "target_modules": "all-linear", "learning_rate": "0.001"},
         "metrics": final(0.79, 0.50), "scores": hits(200, 158)},
        {"name": "lora-oom", "method": "lora", "status": "failed", "error": "CUDA out of memory", "curve": {},
         "params": {**ATTENTION, "learning_rate": "0.00001"}, "metrics": final(None, 0.05)},
        {"name": "full-1e-5", "method": "full", "curve": {20: 0.74, 40: 0.79},
         "params": {"learning_rate": "1e-05"}, "metrics": final(0.79, 2.0), "scores": hits(200, 158)},
        {"name": "full-3e-5", "method": "full", "curve": {20: 0.80, 40: 0.84},
         "params": {"learning_rate": "3e-05"}, "metrics": final(0.84, 2.0), "scores": hits(200, 168)},
        {"name": "full-1e-4-diverged", "method": "full", "status": "failed", "curve": {},
         "error": "Diverged: training loss 41.2 over steps to 20 against 2.31 at step 1",
         "params": {"learning_rate": "0.0001"}, "metrics": final(None, 0.3)},
    ], parent_params={"space": str(root / "space.yaml")})
    log_sweep(client, root, "f1", "token_f1", [
        {"name": "f1-lora", "method": "lora", "params": LORA, "metrics": final(0.7, 0.5, n=100),
         "scores": [0.5, 0.6, 0.7, 0.8, 0.9] * 20},
        {"name": "f1-no-predictions", "method": "qlora", "params": LORA, "metrics": final(0.65, 0.2, n=100)},
    ])
    return uri


def test_load_reads_every_run_of_the_locked_test_set(store) -> None:
    df, warnings = load_runs(["demo"], store)
    assert sorted(df["run_name"]) == sorted(
        ["baseline", "lora-default", "qlora-r8", "full", "lora-r64-pruned", "lora-oom"]
    )
    assert any("left out 1 run(s) evaluated on another locked test set" in w for w in warnings)
    assert any("ignored 1 run(s) without a sweepboard.role tag" in w for w in warnings)
    rows = df.set_index("run_name")
    assert rows.loc["qlora-r8", "rank"] == 8 and rows.loc["qlora-r8", "alpha"] == 16
    assert rows.loc["lora-default", "target_modules"] == "q_proj,k_proj,v_proj,o_proj"
    assert rows.loc["lora-default", "learning_rate"] == pytest.approx(2e-4)
    assert rows.loc["full", "rank"] is pd.NA  # "" param: no rank for full fine-tuning
    assert rows.loc["lora-oom", "status"] == "failed"
    assert rows.loc["lora-oom", "error"] == "CUDA out of memory"
    assert pd.isna(rows.loc["lora-oom", "test_quality"]) and rows.loc["lora-oom", "cost_usd"] == 0.05
    assert rows.loc["baseline", "role"] == "baseline"
    assert rows.loc["lora-default", "git_commit"] == "feedc0ffee1234"
    assert set(df["test_set_sha256"]) == {SHA}
    # val_quality is the final value (step 10), not the curve's earlier point; the scores come per example.
    assert rows.loc["lora-r64-pruned", "val_quality"] == pytest.approx(0.55)
    assert rows.loc["qlora-r8", "val_quality"] == pytest.approx(0.75)
    assert rows.loc["full", "scores"] == [1.0] * 156 + [0.0] * 44
    assert pd.isna(rows.loc["lora-oom", "val_quality"]) and rows.loc["lora-oom", "scores"] is None
    assert not any("max_seq_len" in w or "test_predictions" in w for w in warnings)  # none missing, none cut
    # The whole validation curve of every trial run, by training step; none for the baseline or a run
    # that never validated.
    assert rows.loc["qlora-r8", "val_curve"] == pytest.approx({5: 0.375, 10: 0.75})
    assert rows.loc["lora-r64-pruned", "val_curve"] == pytest.approx({5: 0.275, 10: 0.55})
    assert rows.loc["baseline", "val_curve"] is None and rows.loc["lora-oom", "val_curve"] is None
    assert df.attrs["spaces"] == []  # the demo's parent run names no search space


def test_load_reads_curves_of_several_steps_and_the_parent_space(store) -> None:
    df, _ = load_runs(["rates"], store)
    rows = df.set_index("run_name")
    assert rows.loc["lora-3e-4", "val_curve"] == pytest.approx({20: 0.70, 40: 0.76})
    assert rows.loc["lora-1e-4-pruned", "val_curve"] == pytest.approx({20: 0.60})
    assert rows.loc["lora-3e-4", "val_quality"] == pytest.approx(0.76)  # the last step's value
    assert rows.loc["full-1e-4-diverged", "val_curve"] is None
    assert rows.loc["full-1e-4-diverged", "error"].startswith("Diverged")
    assert len(df.attrs["spaces"]) == 1 and df.attrs["spaces"][0].endswith("space.yaml")


def test_board_from_mlflow_ranks_and_decides(store) -> None:
    board = build(["demo"], store)
    ranked = board.ranked
    # Floor 0.9 x 0.78 = 0.702: qlora-r8 2.5/$, lora-default 1.85/$, full 0.31/$; then below the floor.
    assert list(ranked["run_name"]) == [
        "qlora-r8", "lora-default", "full", "lora-r64-pruned", "baseline", "lora-oom"
    ]
    rows = ranked.set_index("run_name")
    assert rows.loc["lora-default", "lift_over_baseline"] == pytest.approx(0.39)
    assert rows.loc["lora-default", "ci_method"] == "wilson"
    # qlora-r8 (0.75 at $0.30) beats lora-default (0.74 at $0.40) on both axes.
    front = set(ranked.loc[ranked["pareto"], "run_name"])
    assert front == {"baseline", "lora-r64-pruned", "qlora-r8", "full"}
    # Chosen on validation: full is the best run; the paired tests run on the per-example test scores.
    assert list(ranked.loc[ranked["best"], "run_name"]) == ["full"]
    assert rows.loc["qlora-r8", "tie_test"] == "mcnemar-exact"
    assert rows.loc["qlora-r8", "p_vs_best"] == pytest.approx(2 * 0.5**6)
    assert not rows.loc["qlora-r8", "tied_with_best"]  # p = 0.031 < 0.05, though the intervals overlap
    assert rows.loc["qlora-r8", "test_quality_ci_high"] > rows.loc["full", "test_quality_ci_low"]
    decision = board.decision
    # qlora-r8 is the best adapter by validation; 0.78 - 0.75 = 0.03 > 0.02, p = 0.031, 3 configurations.
    assert decision.best_adapter is not None and decision.best_adapter["run_name"] == "qlora-r8"
    assert decision.full_vs_adapter_p_value == pytest.approx(2 * 0.5**6)
    assert decision.adapter_configs_completed == 3
    assert "+0.030 test exact_match over the best adapter run at 8.3x its cost" in decision.text
    # But every adapter ran at 2e-4 and full at 1e-5 only: no rate is bracketed, so the adapter stays, and
    # the next step names the rates to try next to qlora-r8's settings (the range unknown: no space logged).
    assert decision.escalate_to_full is False
    assert decision.escalation_blocked_by == "adapter_rate_bracketed"
    assert decision.escalation_conditions["margin"] and decision.escalation_conditions["significance"]
    assert decision.recommended is not None and decision.recommended["run_name"] == "qlora-r8"
    adapter = decision.brackets["adapter"]
    assert adapter is not None and adapter["family"]["method"] == "qlora" and adapter["family"]["rank"] == 8
    assert adapter["step"] == 10 and adapter["next_rates"] == pytest.approx([6.67e-5, 6e-4])
    assert decision.next_step is not None
    assert "qlora (rank 8, alpha 16, target_modules q_proj,k_proj,v_proj,o_proj, lora_dropout 0.05) at " \
           "learning_rate 6.67e-5 and 6e-4" in decision.next_step
    assert "full at learning_rate 3.33e-6 and 3e-5" in decision.next_step


def test_cli_json_export(store, tmp_path, capsys) -> None:
    out = tmp_path / "board.json"
    argv = ["demo", "--format", "json", "--out", str(out), "--tracking-uri", store, "--margin", "0.05"]
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert [r["run_name"] for r in document["rows"]][0] == "qlora-r8"
    assert document["decision"]["escalate_to_full"] is False
    assert document["decision"]["recommended"]["run_name"] == "qlora-r8"
    assert document["selected_on"] == "validation" and document["decision"]["selected_on"] == "validation"
    assert document["best_run_id"] == next(r["run_id"] for r in document["rows"] if r["run_name"] == "full")
    assert document["decision"]["escalation_blocked_by"] == "margin"  # 0.03 is not more than 0.05
    assert document["decision"]["full_vs_adapter_p_value"] == pytest.approx(2 * 0.5**6)
    assert document["decision"]["adapter_configs_completed"] == 3
    assert all("val_quality" in r for r in document["rows"])
    assert "another locked test set" in capsys.readouterr().err


def test_cli_all_formats_and_write_leaderboard(store, tmp_path) -> None:
    assert main(["demo", "--format", "all", "--out", str(tmp_path / "a"), "--tracking-uri", store]) == 0
    paths = write_leaderboard(["demo"], tmp_path / "b", tracking_uri=store, min_quality=0.5)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in paths)
    csv = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    assert csv["run_name"].iloc[0] == "lora-r64-pruned"  # floor 0.5 lets the cheap pruned run lead (6/$)


def test_cli_unknown_sweep_is_an_error(store, capsys) -> None:
    assert main(["nope", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment named 'nope'" in err and "demo" in err


def test_two_sweeps_on_one_test_set_with_bootstrap_intervals(store) -> None:
    board = build(["demo", "f1"], store)
    rows = board.ranked.set_index("run_name")
    assert set(board.ranked["sweep"]) == {"demo", "f1"}
    assert rows.loc["f1-lora", "ci_method"] == "bootstrap"
    assert rows.loc["f1-no-predictions", "ci_method"] == "normal-approx"
    assert any("1 run(s) have no readable test_predictions.jsonl" in w for w in board.warnings)
    assert any("different metrics (exact_match, token_f1)" in w for w in board.warnings)
    # The f1 sweep has no baseline of its own, and the other sweep's is exact match: no lift, not a wrong one.
    assert pd.isna(rows.loc["f1-lora", "lift_over_baseline"])
    assert rows.loc["lora-default", "lift_over_baseline"] == pytest.approx(0.39)
    assert board.decision.metric is None  # two metrics: the decision does not pretend there is one


def test_add_cli_hooks_into_a_parent_parser(store, capsys) -> None:
    import argparse

    from leaderboard import add_cli

    parser = argparse.ArgumentParser(prog="sweepboard")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["leaderboard", "demo", "--format", "md", "--tracking-uri", store,
                              "--min-quality", "0.7"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Leaderboard: demo")
    assert "quality floor 0.700;" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["leaderboard", "demo", "--min-quality", "70"])  # a percentage, not a quality
    assert "expected a quality between 0 and 1" in capsys.readouterr().err


def test_a_sweep_without_runs_still_exports(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("fresh", artifact_location=(tmp_path / "a").as_uri())
    assert main(["fresh", "--format", "all", "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 0
    assert "sweep 'fresh' has no trial or baseline runs yet" in capsys.readouterr().err
    document = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert document["sweeps"] == ["fresh"] and document["rows"] == []
    assert document["decision"]["recommended"] is None
    assert "<h1>Leaderboard: fresh</h1>" in (tmp_path / "out" / "leaderboard.html").read_text()


def test_missing_sqlite_file_is_an_error_not_a_new_store(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'typo.db'}"
    assert main(["demo", "--tracking-uri", uri]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_bracketed_rates_and_capacity_escalate_in_the_sweeps_own_space(store) -> None:
    board = build(["rates"], store)  # the ranges from the parent run's space: LoRA's up to 1e-3
    decision = board.decision
    assert decision.rate_ranges["adapter"] == {"low": 1e-5, "high": 1e-3, "choices": None}
    assert decision.escalation_conditions == {"margin": True, "significance": True, "adapter_rate_bracketed": True,
                                              "full_rate_bracketed": True, "adapter_capacity": True}
    assert decision.escalate_to_full is True and decision.escalation_blocked_by is None
    assert decision.recommended is not None and decision.recommended["run_name"] == "full-3e-5"
    adapter, full = decision.brackets["adapter"], decision.brackets["full"]
    assert adapter is not None and full is not None
    # The pruned trial reached step 20 only: LoRA's rates are compared there, full's at step 40.
    assert adapter["step"] == 20 and adapter["rates"] == pytest.approx({"0.0001": 0.60, "0.0003": 0.70, "0.001": 0.78})
    assert adapter["above"]["edge"] and adapter["below"]["rate"] == pytest.approx(3e-4)
    assert full["best_rate"] == pytest.approx(3e-5) and full["step"] == 40
    assert full["above"]["diverged"] is True and full["above"]["score"] is None and full["diverged"] == ["0.0001"]
    assert "1e-05" not in adapter["rates"]  # out of memory: no evidence about the rate
    assert [c["label"] for c in decision.capacity] == ["lora-1e-3-all"]
    assert decision.capacity[0]["gain"] == pytest.approx(0.02) and decision.capacity[0]["step"] == 40
    text = decision.text
    assert ("LoRA's learning rate is bracketed: 1e-3 scored 0.780 on validation at step 20, above 3e-4 (0.700); "
            "1e-3 is at the upper edge of the search range (no rung of the ~3x ladder lies beyond it inside the "
            "range).") in text
    assert "all-linear at 1e-3: +0.020 at step 40" in text
    assert "above 1e-5 (0.790) and 1e-4 (diverged)" in text
    # The same runs judged in a wider LoRA range: 1e-3 is no longer the edge, so 3e-3 must be tried first.
    wider = build(["rates"], store, ranges={"adapter": RateRange(1e-5, 1e-2), "full": RateRange(1e-6, 1e-4)})
    assert wider.decision.escalation_blocked_by == "adapter_rate_bracketed"
    assert wider.decision.capacity == [] and wider.decision.escalate_to_full is False
    assert wider.decision.next_step is not None and "at learning_rate 3e-3 to bracket LoRA's rate" in \
        wider.decision.next_step


def test_cli_reads_the_space_of_the_parent_run_and_has_no_min_adapter_configs(store, tmp_path, capsys) -> None:
    out = tmp_path / "board.json"
    base = ["rates", "--format", "json", "--out", str(out), "--tracking-uri", store]
    assert main(base) == 0
    document = json.loads(out.read_text())
    decision = document["decision"]
    assert decision["escalation_blocked_by"] is None and decision["brackets"]["adapter"]["above"]["edge"]
    assert "min_adapter_configs" not in decision
    assert next(r for r in document["rows"] if r["run_name"] == "lora-3e-4")["val_curve"] == \
        pytest.approx({"20": 0.70, "40": 0.76})
    with pytest.raises(SystemExit):
        main([*base, "--min-adapter-configs", "4"])
    assert "unrecognized arguments: --min-adapter-configs" in capsys.readouterr().err


def test_an_unreadable_space_of_the_parent_run_is_warned_and_the_range_assumed(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep(MlflowClient(tracking_uri=uri), tmp_path, "moved", "exact_match", [
        {"name": "lora", "method": "lora", "params": LORA, "metrics": final(0.7, 0.4)},
    ], parent_params={"space": str(tmp_path / "gone.yaml")})
    board = build(["moved"], uri)
    assert any("cannot read the search space" in w and "gone.yaml" in w and "1e-06..0.01" in w
               for w in board.warnings)
    assert board.decision.rate_ranges["adapter"] == {"low": 1e-6, "high": 1e-2, "choices": None}
