"""End to end: a real MLflow SQLite store laid out as tracking/names.py says, read back by the leaderboard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from leaderboard import build, load_runs, main, write_leaderboard
from tracking.names import (
    ARTIFACT_PREDICTIONS,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

SHA = "5" * 64
OTHER_SHA = "9" * 64
LORA = {"rank": "16", "alpha": "32", "target_modules": "q_proj,k_proj,v_proj,o_proj", "lora_dropout": "0.05",
        "learning_rate": "0.0002"}


def log_sweep(client: MlflowClient, root: Path, name: str, metric: str, trials: list[dict[str, Any]]) -> None:
    experiment_id = client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    parent = client.create_run(experiment_id, run_name=f"{name}-sweep",
                               tags={TAG_SWEEP: name, TAG_ROLE: "sweep", TAG_TEST_SHA: SHA})
    for i, trial in enumerate(trials):
        method = trial["method"]
        tags = {TAG_PARENT: parent.info.run_id, TAG_SWEEP: name, TAG_ROLE: trial.get("role", "trial"),
                TAG_TRIAL_ID: f"trial_{i:03d}", TAG_METHOD: method,
                TAG_STATUS: trial.get("status", "finished"), TAG_TEST_SHA: trial.get("sha", SHA),
                TAG_METRIC: metric, TAG_GIT_COMMIT: "feedc0ffee1234"}
        if "error" in trial:
            tags[TAG_ERROR] = trial["error"]
        run = client.create_run(experiment_id, run_name=trial["name"], tags=tags)
        params = {"method": method, "steps": "40", "batch_size": "8", "model": "smollm2-135m",
                  "precision": "fp32", "rank": "", "alpha": "", **trial.get("params", {})}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in trial["metrics"].items()]
        metrics.append(Metric("val_quality", 0.1, now, 10))  # a curve: the leaderboard takes the last value
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()], metrics=metrics)
        if "scores" in trial:
            examples = [{"expected": "a", "predicted": "b", "score": s} for s in trial["scores"]]
            lines = "\n".join(json.dumps(example) for example in examples)
            client.log_text(run.info.run_id, lines + "\n", ARTIFACT_PREDICTIONS)
        client.set_terminated(run.info.run_id, "FAILED" if trial.get("status") == "failed" else "FINISHED")
    client.set_terminated(parent.info.run_id)


def final(quality: float | None, cost: float, n: int = 200, adapter: float | None = None) -> dict[str, float]:
    metrics = {"n_test": n, "cost_usd": cost, "device_hours": cost / 2.5, "peak_memory_mb": 900.0,
               "trainable_params": 1_843_200, "tokens_per_second": 135.0}
    if quality is not None:
        metrics["test_quality"] = quality
    if adapter is not None:
        metrics["adapter_mb"] = adapter
    return metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    log_sweep(client, root, "demo", "exact_match", [
        {"name": "baseline", "method": "none", "role": "baseline", "metrics": final(0.35, 0.02)},
        {"name": "lora-default", "method": "lora", "params": LORA, "metrics": final(0.74, 0.40, adapter=7.0)},
        {"name": "qlora-r8", "method": "qlora", "params": {**LORA, "rank": "8", "alpha": "16"},
         "metrics": final(0.75, 0.30, adapter=3.5)},
        {"name": "full", "method": "full", "params": {"learning_rate": "1e-05"}, "metrics": final(0.78, 2.5)},
        {"name": "lora-r64-pruned", "method": "lora", "status": "pruned",
         "params": {**LORA, "rank": "64", "alpha": "128"}, "metrics": final(0.60, 0.10, adapter=28.0)},
        {"name": "lora-oom", "method": "lora", "status": "failed", "error": "CUDA out of memory",
         "params": LORA, "metrics": final(None, 0.05)},
        {"name": "stale-test-set", "method": "lora", "sha": OTHER_SHA, "params": LORA,
         "metrics": final(0.99, 0.01)},
    ])
    # A run that is not part of the layout (someone logged by hand into the experiment).
    demo = client.get_experiment_by_name("demo")
    assert demo is not None
    client.set_terminated(client.create_run(demo.experiment_id, run_name="stray").info.run_id)
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
    decision = board.decision
    assert decision.escalate_to_full is True  # 0.78 - 0.75 = 0.03 > 0.02
    assert decision.recommended is not None and decision.recommended["run_name"] == "full"
    assert "+0.030 over the best adapter run at 8.3x its cost" in decision.text


def test_cli_json_export(store, tmp_path, capsys) -> None:
    out = tmp_path / "board.json"
    argv = ["demo", "--format", "json", "--out", str(out), "--tracking-uri", store, "--margin", "0.05"]
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert [r["run_name"] for r in document["rows"]][0] == "qlora-r8"
    assert document["decision"]["escalate_to_full"] is False
    assert document["decision"]["recommended"]["run_name"] == "qlora-r8"
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
