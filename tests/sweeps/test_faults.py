"""Sweeps that meet faults, through the CLI as a user runs them: real processes, real Ray Tune, real MLflow
(SQLite), the tiny model. Faults come from the drill in trainers/faults.py (SWEEPBOARD_FAULT), which the
sweep's Ray workers inherit from the driver's environment.

Shared with test_sweep_e2e.py: how a sweep is started (environment, config) and how its runs are read back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from test_sweep_e2e import children, runs_of, smoke_config, sweep_env

from tracking import names
from trainers import faults

# Three trials: the production-default LoRA, the same as QLoRA, full fine-tuning (the sweep's first points).
# grace_period 4 puts ASHA's only rung at the final report, so no trial is pruned: the ones a fault does
# not hit must reach their final evaluation.
THREE_METHODS: dict[str, Any] = {"max_trials": 3, "grace_period": 4}


def start_sweep(tmp_path: Path, cfg: Path, fault: str | None = None) -> subprocess.Popen[str]:
    env = sweep_env(tmp_path)
    env.pop("SWEEPBOARD_FAULT", None)
    if fault:
        env["SWEEPBOARD_FAULT"] = fault
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-5000:]
    return output


def sweep_root(tmp_path: Path, name: str) -> Path:
    return tmp_path / "runs" / "sweeps" / name


def trial_runs(runs: list[Any]) -> list[Any]:
    return [r for r in children(runs) if r.data.tags[names.TAG_ROLE] == "trial"]


def parent_of(runs: list[Any]) -> Any:
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    assert len(parents) == 1
    return parents[0]


def ledger_costs(tmp_path: Path, name: str) -> dict[str, float]:
    """Per trial id, what the sweep's budget ledger (runs/sweeps/NAME/budget.json) says it cost."""
    ledger = json.loads((sweep_root(tmp_path, name) / "budget.json").read_text())
    return {trial_id: e["cost"] + e["carried"] for trial_id, e in ledger["trials"].items()}


def trial_log(tmp_path: Path, name: str, trial_id: str) -> str:
    """What the trial printed, over all its attempts."""
    return (sweep_root(tmp_path, name) / f"trial_{trial_id}" / "trial.log").read_text()


def board_rows(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((sweep_root(tmp_path, name) / "leaderboard" / "leaderboard.json").read_text())["rows"]


def steps_logged(tmp_path: Path, run: Any, key: str = "train_loss") -> list[int]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


@pytest.mark.slow
def test_a_trial_that_raises_is_failed_billed_and_the_others_finish(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "raises", **THREE_METHODS)
    output = finish(start_sweep(tmp_path, cfg, fault="error@step=3,method=full"))

    runs = runs_of(tmp_path, "raises")
    trials = trial_runs(runs)
    assert sorted(r.data.params["method"] for r in trials) == ["full", "lora", "qlora"]
    failed = next(r for r in trials if r.data.params["method"] == "full")
    # MLflow: failed, with the reason, what it cost up to the failure, and the steps it had trained.
    assert failed.data.tags[names.TAG_STATUS] == "failed" and failed.info.status == "FAILED"
    assert "RuntimeError: injected fault: error before step 3" in failed.data.tags[names.TAG_ERROR]
    assert failed.data.metrics["cost_usd"] > 0 and failed.data.metrics["steps_done"] == 2
    # Tune retried it once (FailureConfig(max_failures=1)) from its step-2 checkpoint; it failed again.
    failed_id = failed.data.tags[names.TAG_TRIAL_ID]
    log = trial_log(tmp_path, "raises", failed_id)
    assert "sweepboard: resuming from step 2" in log
    error_txt = (sweep_root(tmp_path, "raises") / f"trial_{failed_id}" / "error.txt").read_text()
    assert "injected fault" in error_txt
    # The others went on to their final test evaluation.
    for run in trials:
        if run is not failed:
            assert run.data.tags[names.TAG_STATUS] == "finished", run.data.tags
            assert 0 <= run.data.metrics["test_quality"] <= 1 and run.data.metrics["steps_done"] == 6
    # The books: the parent's spend is every run's cost, the failed one included, and the ledger knew it.
    kids = children(runs)
    spent = parent_of(runs).data.metrics["spent_usd"]
    assert spent == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-6)
    ledger = ledger_costs(tmp_path, "raises")
    assert set(ledger) == {r.data.tags[names.TAG_TRIAL_ID] for r in trials}
    # The ledger may hold more than MLflow: a lost attempt's work after its checkpoint stays spent there.
    assert ledger[failed_id] >= failed.data.metrics["cost_usd"] * (1 - 1e-9)
    for run in trials:
        if run is not failed:
            assert ledger[run.data.tags[names.TAG_TRIAL_ID]] == pytest.approx(run.data.metrics["cost_usd"])
    # The leaderboard lists it, as failed, with its cost; the driver said so at the end.
    row = next(r for r in board_rows(tmp_path, "raises") if r["trial_id"] == failed_id)
    assert row["status"] == "failed" and row["cost_usd"] == pytest.approx(failed.data.metrics["cost_usd"])
    assert "1 trial(s) failed" in output


@pytest.mark.slow
def test_a_killed_worker_is_retried_from_its_checkpoint_into_the_same_run(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "killed", max_trials=1, concurrency=1, baseline=False)
    finish(start_sweep(tmp_path, cfg, fault="kill@step=4,method=lora"))

    runs = runs_of(tmp_path, "killed")
    trials = trial_runs(runs)
    assert len(trials) == 1, "a retried trial must log into its one run"
    run = trials[0]
    trial_id = run.data.tags[names.TAG_TRIAL_ID]
    work = sweep_root(tmp_path, "killed") / f"trial_{trial_id}" / "work"
    assert (work / "fault-kill-step4").is_file(), "the worker was never killed"
    # The retried attempt continued from the step-2 checkpoint: it says so, reported step 2 only once,
    # and trained to the end.
    assert "sweepboard: resuming from step 2" in trial_log(tmp_path, "killed", trial_id)
    assert steps_logged(tmp_path, run) == [2, 4, 6]
    assert run.data.tags[names.TAG_STATUS] == "finished" and run.info.status == "FINISHED"
    assert run.data.metrics["steps_done"] == 6 and 0 <= run.data.metrics["test_quality"] <= 1
    assert names.TAG_ERROR not in run.data.tags  # the lost attempt's error no longer holds
    spent = parent_of(runs).data.metrics["spent_usd"]
    assert spent == pytest.approx(run.data.metrics["cost_usd"], rel=1e-6)
    assert ledger_costs(tmp_path, "killed")[trial_id] >= run.data.metrics["cost_usd"] * (1 - 1e-9)


@pytest.mark.slow
def test_a_worker_lost_after_the_test_evaluation_reports_the_result_again_without_training(
    tmp_path: Path,
) -> None:
    """The trial's training state is deleted once it has its test score: the retried attempt must not train
    again (from Ray's older checkpoint or from scratch) but report the result it had, with its artifacts."""
    cfg = smoke_config(tmp_path, "lostfinal", max_trials=1, concurrency=1, baseline=False)
    finish(start_sweep(tmp_path, cfg, fault="kill@step=7,method=lora"))  # smoke trials train 6 steps

    runs = runs_of(tmp_path, "lostfinal")
    trials = trial_runs(runs)
    assert len(trials) == 1
    run = trials[0]
    trial_id = run.data.tags[names.TAG_TRIAL_ID]
    folder = sweep_root(tmp_path, "lostfinal") / f"trial_{trial_id}"
    assert (folder / "work" / "fault-kill-step7").is_file(), "the worker was never killed"
    log = trial_log(tmp_path, "lostfinal", trial_id)
    assert "reporting its result again" in log and "resuming from step" not in log
    assert steps_logged(tmp_path, run) == [2, 4, 6]
    assert run.data.tags[names.TAG_STATUS] == "finished" and run.data.metrics["steps_done"] == 6
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "test_predictions.jsonl", "adapter"} <= artifacts
    assert not list(folder.rglob("*.pt")), "training state left after the trial finished"


@pytest.mark.slow
def test_two_sweeps_at_once_keep_their_runs_ledgers_and_files_apart(tmp_path: Path) -> None:
    sweeps = ("left", "right")
    configs = {name: smoke_config(tmp_path, name, max_trials=2, concurrency=1) for name in sweeps}
    procs = {name: start_sweep(tmp_path, configs[name]) for name in sweeps}  # two drivers, two local Rays
    for name in sweeps:
        finish(procs[name])

    trial_ids: dict[str, set[str]] = {}
    for name in sweeps:
        runs = runs_of(tmp_path, name)
        assert {r.data.tags[names.TAG_SWEEP] for r in runs} == {name}
        assert parent_of(runs).data.params["config"] == str(configs[name])
        kids = children(runs)
        assert sorted(r.data.tags[names.TAG_ROLE] for r in kids) == ["baseline", "trial", "trial"]
        assert all(r.data.tags[names.TAG_PARENT] == parent_of(runs).info.run_id for r in kids)
        trial_ids[name] = {r.data.tags[names.TAG_TRIAL_ID] for r in trial_runs(runs)}
        # Its ledger holds its own trials only, and its spend is its own runs' costs.
        ledger = ledger_costs(tmp_path, name)
        assert set(ledger) == trial_ids[name]
        for run in trial_runs(runs):
            assert ledger[run.data.tags[names.TAG_TRIAL_ID]] == pytest.approx(run.data.metrics["cost_usd"])
        spent = parent_of(runs).data.metrics["spent_usd"]
        assert spent == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-6)
        # Its files: one folder per own trial, and its own board.
        folders = {p.name.removeprefix("trial_") for p in sweep_root(tmp_path, name).glob("trial_*")}
        assert folders == trial_ids[name]
        rows = board_rows(tmp_path, name)
        assert {r["sweep"] for r in rows} == {name} and len(rows) == 3
    assert not trial_ids["left"] & trial_ids["right"]


def test_the_drill_does_nothing_unless_asked_and_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.inject(3, "full", tmp_path)  # unset: a no-op
    monkeypatch.setenv(faults.ENV, "error@step=3,method=full")
    faults.inject(2, "full", tmp_path)  # another step
    faults.inject(3, "lora", tmp_path)  # another method
    with pytest.raises(RuntimeError, match="injected fault: error before step 3 of a full trial"):
        faults.inject(3, "full", tmp_path)
    # A kill fires once per trial folder: with its marker there (the retried attempt), it does not.
    (tmp_path / "fault-kill-step4").write_text("killed once\n")
    monkeypatch.setenv(faults.ENV, "kill@step=4")
    faults.inject(4, "qlora", tmp_path)
    assert faults.parse("error@step=1; kill@step=5,method=lora") == (
        faults.Fault("error", 1), faults.Fault("kill", 5, "lora"),
    )  # fmt: skip
    with pytest.raises(ValueError) as bad:
        faults.parse("crash@step=2;error@step=0;kill@step=3,method=none;error@when=2")
    for part in ("unknown fault 'crash'", "step: '0'", "method: 'none'", "'when=2'", "SWEEPBOARD_FAULT="):
        assert part in str(bad.value)
