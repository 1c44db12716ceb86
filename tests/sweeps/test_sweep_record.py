"""The MLflow record of whole smoke sweeps (the CLI, real Ray Tune, real MLflow in SQLite, the tiny model): every
setting as a param, the data as dataset inputs, the experiment's kind, the sweep's own id, and how the parent run
ends (finished, interrupted by Ctrl-C, failed)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from test_sweep_e2e import REPO, runs_of, smoke_config, sweep_env, sweepboard

from tracking import names
from tracking.record import TAG_SHA256

pytestmark = pytest.mark.slow


def lock_sha() -> str:
    manifest = next((REPO / ".cache" / "locks").glob("dates-n300-*")) / "manifest.json"
    return str(json.loads(manifest.read_text())["sha256"])


def by_role(runs: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"sweep": [], "trial": [], "baseline": []}
    for run in runs:
        found[run.data.tags[names.TAG_ROLE]].append(run)
    return found


def state(tmp_path: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "runs" / "sweeps" / name / "sweepboard.json").read_text()))


def test_a_sweep_records_every_setting_its_data_and_its_id_and_a_reused_name_never_mixes(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "rec", max_trials=2)
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rec")
    assert experiment.tags[names.TAG_EXPERIMENT_KIND] == "custom_model_development"
    first_id = state(tmp_path, "rec")["sweep_id"]
    assert state(tmp_path, "rec")["ended"] == "finished"
    first = by_role(runs_of(tmp_path, "rec"))
    parent = first["sweep"][0]
    assert len(first["sweep"]) == 1 and parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_SWEEP_ID] == first_id and parent.data.tags[names.TAG_TEST_SHA] == lock_sha()
    assert len(first["baseline"]) == 1 and len(first["trial"]) == 2
    for run in first["trial"] + first["baseline"]:
        assert run.data.tags[names.TAG_SWEEP_ID] == first_id
        params = run.data.params
        assert {"model": "builtin:tiny", "max_seq_len": "256", "data.source": "builtin:dates",
                "data.metric": "exact_match", "data.prompt_template": "{prompt}", "data.test_size": "40",
                "data.val_size": "20"}.items() <= params.items()
        assert params["precision"] in ("fp32", "bf16")  # what "auto" resolved to on this machine
        assert params["data.lock_dir"].endswith(next((REPO / ".cache" / "locks").glob("dates-n300-*")).name)
        assert "out" not in params and "cache_dir" not in params
        if run in first["trial"]:
            assert {"steps": "6", "batch_size": "4", "grad_accum": "1", "seed": "0"}.items() <= params.items()
            assert params["learning_rate"] and params["method"] in ("lora", "qlora", "full")
        if "test_quality" in run.data.metrics:  # evaluated: scored on the locked test set, logged as an input
            inputs = {i.tags[0].value: i for i in run.inputs.dataset_inputs}
            test = inputs["test"]
            assert test.dataset.digest == lock_sha()[:12] and test.dataset.name == "dates-locked-test"
            assert {t.key: t.value for t in test.tags}[TAG_SHA256] == lock_sha()
            assert json.loads(test.dataset.profile) == {"num_rows": 40}
            for context in ("validation", "train"):  # their hashes come with metrics.json where written
                if context in inputs:
                    assert json.loads(inputs[context].dataset.profile)["num_rows"] > 0

    # Its folder deleted, a new sweep of the same name: a new id, a parent and a baseline of its own.
    shutil.rmtree(tmp_path / "runs" / "sweeps" / "rec")
    again = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second_id = state(tmp_path, "rec")["sweep_id"]
    assert second_id != first_id
    both = by_role(runs_of(tmp_path, "rec"))
    assert len(both["sweep"]) == 2 and len(both["baseline"]) == 2 and len(both["trial"]) == 4
    parents = {r.data.tags[names.TAG_SWEEP_ID]: r.info.run_id for r in both["sweep"]}
    for run in both["trial"] + both["baseline"]:  # every child under its own sweep's parent, none shared
        assert run.data.tags[names.TAG_PARENT] == parents[run.data.tags[names.TAG_SWEEP_ID]]
    old = {r.info.run_id for r in first["trial"] + first["baseline"]}
    new = [r for r in both["trial"] + both["baseline"] if r.data.tags[names.TAG_SWEEP_ID] == second_id]
    assert len(new) == 3 and not old & {r.info.run_id for r in new}
    assert all(r.info.status == "FINISHED" for r in both["sweep"])


def test_ctrl_c_ends_the_parent_killed_and_the_interrupted_trial_apart_from_stopped_ones(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "cc", max_trials=4, concurrency=1, trial={"steps": 40})
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=sweep_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    root = tmp_path / "runs" / "sweeps" / "cc"
    deadline = time.monotonic() + 300
    while not list(root.glob("trial_*/checkpoint_*")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # a trial has trained and checkpointed: it is mid-training now
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = driver.communicate(timeout=300)
    assert "interrupted" in output, output[-3000:]
    assert state(tmp_path, "cc")["ended"] == "interrupted"
    runs = by_role(runs_of(tmp_path, "cc"))
    parent = runs["sweep"][0]
    assert parent.info.status == "KILLED" and parent.data.tags[names.TAG_STATUS] == "interrupted"
    cut = [r for r in runs["trial"] if r.data.tags[names.TAG_STATUS] == "interrupted"]
    assert cut, "no trial was left mid-training"
    for run in cut:  # interrupted before its final evaluation: no test score, its run KILLED
        assert run.info.status == "KILLED" and "test_quality" not in run.data.metrics
    for run in runs["trial"]:
        if run.data.tags[names.TAG_STATUS] in ("finished", "stopped"):
            assert run.info.status == "FINISHED" and "test_quality" in run.data.metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA, where device: cuda fails")
def test_a_crash_ends_the_parent_failed(tmp_path: Path) -> None:
    # device: cuda passes the config checks and fails in the baseline, on a machine with no CUDA.
    cfg = smoke_config(tmp_path, "crash", trial={"device": "cuda"})
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode != 0 and "no CUDA device" in done.stdout + done.stderr
    assert state(tmp_path, "crash")["ended"] == "failed"
    runs = by_role(runs_of(tmp_path, "crash"))
    parent, baseline = runs["sweep"][0], runs["baseline"][0]
    assert parent.info.status == "FAILED" and parent.data.tags[names.TAG_STATUS] == "failed"
    assert baseline.info.status == "FAILED" and "no CUDA device" in baseline.data.tags[names.TAG_ERROR]
