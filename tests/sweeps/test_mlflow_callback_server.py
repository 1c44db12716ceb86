"""The Tune callback against a real `mlflow server` over HTTP: concurrent trials, a server killed mid-sweep
(trials train on, `sweepboard sync` copies the rest, a second sync changes nothing), and a server that comes
back (the queued writes are flushed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer
from ray import tune
from test_mlflow_callback import (  # ray_cluster: the module's own local Ray, as in the callback's tests
    FULL,
    LORA,
    SHA,
    SWEEP_ID,
    grid,
    ray_cluster,  # noqa: F401
    steps_of,
    sweep,
    trial_runs,
    tuner,
    with_steps,
)

from sweeps import mlflow_callback
from sweeps.sync import sync
from tracking import mlflow_conn as conn
from tracking import mlflow_store as store
from tracking.names import TAG_PARENT, TAG_STATUS, TAG_TEST_SHA


class ServerOutage(tune.Callback):
    """Kills the MLflow server at the `kill_at`-th trial result Tune hands to callbacks, and starts it
    again at the `restart_at`-th (0: never): an outage at a known point of the sweep."""

    def __init__(self, server: MlflowServer, kill_at: int, restart_at: int = 0) -> None:
        self.server, self.kill_at, self.restart_at, self.results = server, kill_at, restart_at, 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "server": None}  # Tune pickles callbacks into tuner.pkl; a process cannot go

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results += 1
        if self.results == self.kill_at:
            self.server.kill()
        if self.results == self.restart_at:
            self.server.start(same_port=True)  # back at its address: the sweep's URI does not change


def snapshot(client: MlflowClient) -> dict[str, Any]:
    """Everything sync could change in the experiment: runs, statuses, tags, params, every metric point,
    artifacts."""
    experiment_id = store.ensure_experiment(client, "demo")
    state: dict[str, Any] = {}
    for run in client.search_runs([experiment_id]):
        run_id = run.info.run_id
        history = {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
                   for key in run.data.metrics}
        artifacts = sorted((a.path, a.file_size) for a in client.list_artifacts(run_id))
        info = (run.info.status, run.info.end_time)
        state[run_id] = (info, run.data.tags, run.data.params, history, artifacts)
    return state


def write_sweep_state(root: Path) -> None:
    """The part of the sweep's own state file (sweeps/sweep.py, sweeps/runtime.py) that sync reads: the sweep
    ended (its driver records that before it ends the parent run, which failed here with the server down)."""
    state = {"config": {"trial": {}}, "budget_usd": 1.0, "sweep_id": SWEEP_ID, "ended": "finished"}
    (root / "sweepboard.json").write_text(json.dumps(state))


@pytest.mark.slow
def test_concurrent_trials_through_an_mlflow_server(tmp_path, mlflow_server):
    conn.check_reachable(mlflow_server)
    client, parent, logger = sweep(tmp_path, mlflow_server)
    configs: list[dict[str, Any]] = [{**with_steps(LORA, 5), "sleep": 0.2},
                                     {**with_steps(FULL, 5), "sleep": 0.2}]
    results = tuner(tmp_path, grid(configs), [logger], max_concurrent_trials=2).fit()
    assert not results.errors
    runs = trial_runs(client)
    assert len(runs) == 2
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags[TAG_PARENT] == parent
        assert steps_of(client, run, "train_loss") == [1, 2, 3, 4, 5]
        assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_trials_outlive_a_dead_server_and_sync_copies_the_rest(tmp_path, server, capsys):
    client, parent, logger = sweep(tmp_path, server.uri)
    configs: list[dict[str, Any]] = [{**with_steps(LORA, 6), "sleep": 0.2},
                                     {**with_steps(FULL, 6), "sleep": 0.2}]
    # The 3rd result: both runs exist and have curve points; the rest of the sweep happens without MLflow.
    results = tuner(tmp_path, grid(configs), [logger, ServerOutage(server, kill_at=3)]).fit()
    assert not results.errors  # Tune did not abort: the callback raised nothing
    assert all((results[n].metrics or {}).get("phase") == "final" for n in range(len(results)))  # all trained
    message = logger.unlogged_message()
    assert message is not None and server.uri in message and "were not logged" in message
    assert f"sweepboard sync demo --tracking-uri {server.uri}" in message and "make sync NAME=demo" in message
    assert message in capsys.readouterr().err  # printed at the end of the sweep

    server.start()  # the same store, on a port of its own (a released one may be taken by now)
    client = MlflowClient(server.uri)
    before = trial_runs(client)
    assert not any("test_quality" in run.data.metrics for run in before.values())  # the finals were lost
    root = tmp_path / "ray" / "demo"
    write_sweep_state(root)
    assert sync("demo", str(root.parent), server.uri) == 0
    runs = trial_runs(client)
    assert len(runs) == 2 and set(before) <= set(runs)
    for trial_id, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STATUS] == "finished"
        assert run.data.tags[TAG_PARENT] == parent and run.data.tags[TAG_TEST_SHA] == SHA
        assert run.data.metrics["test_quality"] == 0.5
        assert run.data.metrics["cost_usd"] == pytest.approx(0.065)
        for key in ("train_loss", "val_quality", "cost_usd"):
            assert steps_of(client, run, key) == [1, 2, 3, 4, 5, 6]  # every step, once
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json",
                                                                           "test_predictions.jsonl"}
        if trial_id in before:
            assert run.info.run_id == before[trial_id].info.run_id
    sweep_run = client.get_run(parent)
    assert sweep_run.data.metrics["spent_usd"] == pytest.approx(2 * 0.065)
    assert sweep_run.info.status == "FINISHED"

    state = snapshot(client)
    capsys.readouterr()
    assert sync("demo", str(root.parent), server.uri) == 0
    assert "0 created, 0 updated, 2 unchanged; parent run unchanged" in capsys.readouterr().out
    assert snapshot(client) == state  # a second sync changes nothing


@pytest.mark.slow
def test_queued_results_are_logged_when_the_server_answers_again(tmp_path, server, monkeypatch):
    monkeypatch.setattr(mlflow_callback, "RETRY_AFTER_S", (0.5,))
    client, _, logger = sweep(tmp_path, server.uri)
    configs: list[dict[str, Any]] = [{**with_steps(LORA, 8), "sleep": 0.2},
                                     {**with_steps(FULL, 8), "sleep": 0.2}]
    outage = ServerOutage(server, kill_at=3, restart_at=7)
    results = tuner(tmp_path, grid(configs), [logger, outage]).fit()
    assert not results.errors and outage.results > 7
    assert logger.unlogged_message() is None  # nothing left over: no sync needed
    runs = trial_runs(client)
    assert len(runs) == 2
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.metrics["test_quality"] == 0.5
        assert steps_of(client, run, "train_loss") == list(range(1, 9))  # queued in order, none lost
        assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
