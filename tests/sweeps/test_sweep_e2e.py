"""Whole sweeps through the CLI, as a user runs them: real Ray Tune, real MLflow (SQLite), tiny model.

Each sweep runs in its own process and folder, so Ray and MLflow state never leak between tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from tracking import names

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "configs" / "smoke.yaml"
pytestmark = pytest.mark.slow


def sweep_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        SWEEPBOARD_CACHE=str(REPO / ".cache"),  # the tiny model is built once and shared
        PYTHONUNBUFFERED="1",
        RAY_DEDUP_LOGS="0",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def sweepboard(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sweeps.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def smoke_config(tmp_path: Path, name: str, **changes: Any) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    trial = raw["trial"]
    trial.update(changes.pop("trial", {}))
    raw.update(changes, name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def runs_of(tmp_path: Path, sweep: str) -> list[Any]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep)
    assert experiment is not None, f"no MLflow experiment {sweep}"
    return client.search_runs([experiment.experiment_id], max_results=1000)


def children(runs: list[Any]) -> list[Any]:
    return [r for r in runs if r.data.tags.get(names.TAG_ROLE) in ("trial", "baseline")]


def test_smoke_sweep_logs_one_run_per_trial_and_writes_the_board(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "e2e")
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "budget" in done.stdout and "Leaderboard" in done.stdout and "make ui" in done.stdout

    runs = runs_of(tmp_path, "e2e")
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    assert len(parents) == 1
    kids = children(runs)
    trials = [r for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]
    baselines = [r for r in kids if r.data.tags[names.TAG_ROLE] == "baseline"]
    assert len(baselines) == 1 and baselines[0].data.params["method"] == "none"
    assert len(trials) == 4
    trial_ids = [r.data.tags[names.TAG_TRIAL_ID] for r in trials]
    assert len(set(trial_ids)) == len(trial_ids)  # never two runs for one trial
    lock = json.loads((REPO / ".cache" / "locks").glob("dates-n300-*").__next__().joinpath("manifest.json")
                      .read_text())  # fmt: skip
    for run in kids:
        tags = run.data.tags
        assert tags[names.TAG_PARENT] == parents[0].info.run_id
        assert tags[names.TAG_SWEEP] == "e2e"
        assert tags[names.TAG_STATUS] in ("finished", "pruned", "stopped")
        assert tags[names.TAG_TEST_SHA] == lock["sha256"]
        assert tags[names.TAG_METHOD] == run.data.params["method"]
        assert run.data.metrics["cost_usd"] > 0
    finished = [r for r in trials if r.data.tags[names.TAG_STATUS] == "finished"]
    assert finished, "no trial reached its final test evaluation"
    for run in finished:
        assert 0 <= run.data.metrics["test_quality"] <= 1 and run.data.metrics["n_test"] == 40
    # The production default (r8 in the smoke space) first, then every other method measured.
    # (Two trials start together at concurrency 2, so "first" is checked by content, not by start time.)
    defaults = [r for r in trials if r.data.params["method"] == "lora" and r.data.params["rank"] == "8"
                and float(r.data.params["learning_rate"]) == 2e-4]  # fmt: skip
    assert defaults, "the production-default point was not evaluated"
    assert {r.data.params["method"] for r in trials} == {"lora", "qlora", "full"}
    # The books close: the parent's spend is the baseline plus every trial, pruned ones included.
    spent = parents[0].data.metrics["spent_usd"]
    assert spent == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-6)
    assert spent <= 5
    board = tmp_path / "runs" / "sweeps" / "e2e" / "leaderboard"
    for fmt in ("csv", "json", "md", "html"):
        assert (board / f"leaderboard.{fmt}").stat().st_size > 0
    rows = json.loads((board / "leaderboard.json").read_text())["rows"]
    assert len(rows) == 5

    # The same name again: refused, nothing overwritten, no new runs.
    again = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert (
        again.returncode == 2 and "already exists" in again.stderr and "make resume NAME=e2e" in again.stderr
    )
    assert len(runs_of(tmp_path, "e2e")) == len(runs)


@pytest.mark.parametrize("price", [60.0, 100.0])
def test_budget_is_never_exceeded_and_admission_stops_new_trials(tmp_path: Path, price: float) -> None:
    budget = 0.8
    cfg = smoke_config(tmp_path, "tight", max_trials=8, concurrency=1, estimate_trial_seconds=20)
    done = sweepboard(tmp_path, "sweep", "--budget", str(budget), "--config", str(cfg), "--price-per-hour",
                      str(price))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kids = children(runs_of(tmp_path, "tight"))
    spent = sum(r.data.metrics.get("cost_usd", 0.0) for r in kids)
    longest = max(r.data.metrics.get("wall_seconds", 0.0) for r in kids)
    # Tolerance from the contract: one report interval of the running trial (a trial's length bounds it).
    assert spent <= budget + price * longest / 3600 / 3
    assert len([r for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]) < 8


def test_killed_driver_resumes_without_duplicates(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "crash", max_trials=3, concurrency=1, trial={"steps": 16})
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=sweep_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    root = tmp_path / "runs" / "sweeps" / "crash"
    deadline = time.time() + 300
    while time.time() < deadline and not list(root.glob("trial_*/checkpoint_*")):
        time.sleep(1)
    assert list(root.glob("trial_*/checkpoint_*")), "no trial checkpointed before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-trial
    proc.wait()
    interrupted = {p.parent.name.removeprefix("trial_") for p in root.glob("trial_*/checkpoint_*")}

    done = sweepboard(tmp_path, "resume", "crash")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = runs_of(tmp_path, "crash")
    kids = children(runs)
    trial_ids = [r.data.tags[names.TAG_TRIAL_ID] for r in kids]
    assert len(trial_ids) == len(set(trial_ids)) == 4  # baseline + 3 trials, none twice
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in kids:
        if run.data.tags[names.TAG_TRIAL_ID] in interrupted:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
            assert steps == sorted(set(steps)), f"steps trained twice after resume: {steps}"
            assert run.data.metrics["steps_done"] == 16
    parent = next(r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep")
    ledger = json.loads((root / "budget.json").read_text())
    assert parent.data.metrics["spent_usd"] == pytest.approx(
        sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-6
    )
    assert ledger  # the ledger file survived the kill
    trial_costs = sum(r.data.metrics["cost_usd"] for r in kids if r.data.tags[names.TAG_ROLE] == "trial")
    # The ledger counts what was paid: the trials' costs, plus any work the kill threw away after a trial's
    # last checkpoint (done again after the resume). Never less than the trials' costs, never over budget.
    assert trial_costs - 1e-9 <= ledger["spent_usd"] <= trial_costs * 1.5 + 1e-6
    assert parent.data.metrics["spent_usd"] <= 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "-3"], "budget"),
        (["--budget", "abc"], "budget"),
        (["--budget", "0"], "budget"),
        (["--budget", "5", "--space", "no-such-space"], "no-such-space"),
        (["--budget", "5", "--max-trials", "0"], "max_trials"),
        (["--budget", "5", "--tracking-uri", "http://127.0.0.1:9/"], "127.0.0.1:9"),
    ],
)
def test_bad_input_fails_before_ray_starts(tmp_path: Path, args: list[str], message: str) -> None:
    started = time.time()
    done = sweepboard(tmp_path, "sweep", "--config", "smoke", *args, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing written half-way
    assert time.time() - started < 60


def test_unknown_sweep_to_resume_is_named(tmp_path: Path) -> None:
    done = sweepboard(tmp_path, "resume", "nope", timeout=120)
    assert done.returncode == 2 and "nope" in done.stderr and "make sweep" in done.stderr
