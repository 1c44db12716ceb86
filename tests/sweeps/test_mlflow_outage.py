"""Whole smoke sweeps through `mlflow server` over HTTP, as a user runs them (the CLI, real Ray Tune, the tiny
model): one with the server up throughout, one whose server is killed while trials train. Then
`sweepboard sync` copies what MLflow missed from Ray's storage, and a second sync changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from test_sweep_e2e import smoke_config, sweep_env

from tracking import names

pytestmark = pytest.mark.slow


def cli_env(tmp_path: Path, uri: str) -> dict[str, str]:
    return {**sweep_env(tmp_path), "MLFLOW_TRACKING_URI": uri}


def sweepboard(tmp_path: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sweeps.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(tmp_path, uri), capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def runs_of(client: MlflowClient, sweep: str) -> list[Any]:
    experiment = client.get_experiment_by_name(sweep)
    assert experiment is not None, f"no MLflow experiment {sweep}"
    return client.search_runs([experiment.experiment_id], max_results=1000)


def snapshot(client: MlflowClient, sweep: str) -> dict[str, Any]:
    """What a sync could change: runs, statuses and end times, tags, params, every metric point, artifacts."""
    state: dict[str, Any] = {}
    for run in runs_of(client, sweep):
        run_id = run.info.run_id
        history = {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
                   for key in run.data.metrics}  # fmt: skip
        artifacts = sorted((a.path, a.file_size) for a in client.list_artifacts(run_id))
        info = (run.info.status, run.info.end_time)
        state[run_id] = (info, run.data.tags, run.data.params, history, artifacts)
    return state


def check_books(client: MlflowClient, sweep: str, trial_ids: set[str]) -> list[Any]:
    """One parent run, one run per trial and one for the baseline, each ended, priced, with its finals; the
    parent's spend is the sum of its children's. Returns the child runs."""
    runs = runs_of(client, sweep)
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    kids = [r for r in runs if r.data.tags.get(names.TAG_ROLE) in ("trial", "baseline")]
    assert len(parents) == 1 and len(kids) == len(runs) - 1
    ids = [r.data.tags[names.TAG_TRIAL_ID] for r in kids]
    assert len(ids) == len(set(ids)) == len(trial_ids) + 1  # never two runs for one trial
    assert set(ids) == trial_ids | {f"{sweep}-baseline"}
    for run in kids:
        tags = run.data.tags
        assert tags[names.TAG_PARENT] == parents[0].info.run_id and tags[names.TAG_SWEEP] == sweep
        assert run.info.status == "FINISHED" and tags[names.TAG_STATUS] in ("finished", "pruned")
        assert run.data.metrics["cost_usd"] > 0
        if tags[names.TAG_STATUS] == "finished":
            assert 0 <= run.data.metrics["test_quality"] <= 1 and run.data.metrics["n_test"] == 40
            assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["spent_usd"] == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids))
    board = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.html"} <= board
    return kids


def checkpointed(root: Path) -> bool:
    return bool(list(root.glob("trial_*/checkpoint_*")))


def ray_trials(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial in Ray's storage with the results it reported."""
    return {folder.name.removeprefix("trial_"): [json.loads(line) for line in
                                                 (folder / "result.json").read_text().splitlines()]
            for folder in root.glob("trial_*")}  # fmt: skip


def test_a_sweep_through_an_mlflow_server_is_complete_and_sync_changes_nothing(tmp_path, server):
    cfg = smoke_config(tmp_path, "http")
    done = sweepboard(tmp_path, server.uri, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Leaderboard" in done.stdout and "not logged" not in done.stderr
    client = MlflowClient(server.uri)
    trials = ray_trials(tmp_path / "runs" / "sweeps" / "http")
    assert len(trials) == 4
    check_books(client, "http", set(trials))

    before = snapshot(client, "http")
    again = sweepboard(tmp_path, server.uri, "sync", "http")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 created, 0 updated, 5 unchanged; parent run unchanged" in again.stdout
    assert snapshot(client, "http") == before


def test_server_killed_mid_sweep_trials_train_on_and_sync_copies_the_rest(tmp_path, server):
    # No pruning (grace period = ASHA's max_t): every trial trains to its final test evaluation.
    cfg = smoke_config(tmp_path, "outage", grace_period=5)
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path, server.uri), stdout=out, stderr=err)
        root = tmp_path / "runs" / "sweeps" / "outage"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not checkpointed(root):
            time.sleep(0.5)
        assert proc.poll() is None and checkpointed(root), "no trial checkpointed in time"
        server.kill()  # an outage while the first trials train
        try:
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    # The documented ending: exit code 3, what was not logged, and the command that copies it in.
    assert proc.returncode == 3, stdout[-3000:] + stderr[-3000:]
    assert "were not logged" in stderr and "Nothing trained is lost" in stderr
    assert f"sweepboard sync outage --tracking-uri {server.uri}" in stderr
    trials = ray_trials(root)
    assert len(trials) == 4
    assert all(results[-1]["phase"] == "final" for results in trials.values())  # each trained to its end

    server.start()  # the same store, on a port of its own (a released one may be taken by now)
    client = MlflowClient(server.uri)
    logged = {r.data.tags.get(names.TAG_TRIAL_ID): r for r in runs_of(client, "outage")}
    # The outage cost MLflow something: a trial without a run, or a run without its final test score.
    assert any(t not in logged or "test_quality" not in logged[t].data.metrics for t in trials)
    done = sweepboard(tmp_path, server.uri, "sync", "outage")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kids = check_books(client, "outage", set(trials))
    assert all(r.data.tags[names.TAG_STATUS] == "finished" for r in kids)
    for run in kids:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)), f"duplicate curve points: {steps}"
        if run.data.tags[names.TAG_ROLE] == "trial":
            assert steps == [2, 4, 6]

    before = snapshot(client, "outage")
    again = sweepboard(tmp_path, server.uri, "sync", "outage")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 created, 0 updated, 5 unchanged; parent run unchanged" in again.stdout
    assert snapshot(client, "outage") == before
