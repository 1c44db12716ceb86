"""MLflow on a PostgreSQL server, as teams run it: `mlflow server` on a database of its own (a throwaway
cluster, tests/sweeps/pg_cluster.py) with the artifacts proxied by the server. A smoke sweep of two concurrent
trials through it, its driver killed with SIGKILL mid-sweep and resumed; and concurrent metric batches to one
run, the pattern behind MLflow's PostgreSQL deadlock (mlflow issue 24923).

Skipped where PostgreSQL or psycopg2 is missing, failed so in CI (CI=1), which installs both."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer
from pg_cluster import Postgres
from test_faults import board_rows, parent_of, sweep_root, trial_runs
from test_mlflow_outage import cli_env, runs_of
from test_sweep_e2e import kill_node, results_of, smoke_config, wait_until

from tracking import names
from tracking.names import FINAL_METRICS

pytestmark = pytest.mark.slow
CURVES = ("train_loss", "val_quality", "cost_usd")
SMOKE_STEPS = (2, 4, 6)  # sweeps/configs/smoke.yaml: 6 steps, a report every 2


def test_a_killed_sweep_resumed_through_mlflow_on_postgres_has_one_run_per_trial_and_whole_curves(
    tmp_path: Path, postgres_server: MlflowServer
) -> None:
    server = postgres_server
    # No pruning (grace period = ASHA's max_t): both trials train to their final test evaluation.
    cfg = smoke_config(tmp_path, "pg", max_trials=2, concurrency=2, grace_period=5)
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    env = cli_env(tmp_path, server.uri)
    # The first driver's trials hold after their first training report (a fault drill the resume does not
    # set): the kill lands mid-trial however fast or busy the machine is.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**env, "SWEEPBOARD_FAULT": "pause@step=3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    root = sweep_root(tmp_path, "pg")
    try:
        # Mid-sweep: two trials at once (concurrency 2), one of them past its first training report.
        wait_until(lambda: len(results_of(root)) == 2 and any(r.get("phase") == "train"
                                                              for rs in results_of(root).values() for r in rs),
                   proc)  # fmt: skip
    finally:
        kill_node(proc)  # the driver and its Ray, no chance to clean up
    before = results_of(root)
    interrupted = [t for t, rs in before.items() if all(r.get("phase") != "final" for r in rs)]
    assert interrupted, "the driver was killed after the trials ended"

    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "resume", "pg"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not logged" not in done.stderr

    client = MlflowClient(server.uri)
    runs = runs_of(client, "pg")
    trials = trial_runs(runs)
    ray = results_of(root)
    assert len(ray) == 2 and all(rs and rs[-1].get("phase") == "final" for rs in ray.values())
    # One run per trial, never two (the resumed driver found the runs of the killed one).
    trial_ids = [r.data.tags[names.TAG_TRIAL_ID] for r in trials]
    assert sorted(trial_ids) == sorted(ray)
    parent = parent_of(runs)
    for run in trials:
        assert run.data.tags[names.TAG_PARENT] == parent.info.run_id and run.info.status == "FINISHED"
        for key in CURVES:
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert_whole_curve(key, logged, ray[run.data.tags[names.TAG_TRIAL_ID]])
    # The books and the leaderboard, built from the runs on PostgreSQL; its files went through the server's
    # artifact proxy to its destination folder.
    kids = [r for r in runs if r.data.tags.get(names.TAG_ROLE) in ("trial", "baseline")]
    assert parent.info.status == "FINISHED" and len(kids) == len(trials) + 1
    assert parent.data.metrics["spent_usd"] == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids))
    rows = board_rows(tmp_path, "pg")
    assert sorted(r["trial_id"] for r in rows) == sorted(r.data.tags[names.TAG_TRIAL_ID] for r in kids)
    assert any(r["status"] == "finished" and r["test_quality"] is not None for r in rows)
    board_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.html"} <= board_files
    stored = {p.name for p in (server.folder / "artifacts").rglob("*") if p.is_file()}
    assert {"leaderboard.csv", "metrics.json", "test_predictions.jsonl"} <= stored
    assert runs_in_database(str(server.backend_uri), "pg") == len(runs)  # they are in PostgreSQL itself


def assert_whole_curve(key: str, logged: list[int], results: list[dict[str, Any]]) -> None:
    """Every step Ray recorded for the trial is on its MLflow curve, once, and nothing else is: a smoke trial
    reports at steps 2, 4 and 6. A final metric (val_quality, cost_usd) also has its final value at the last
    step, where MLflow shows it as the run's value (tracking.mlflow_store.final_step). A step the trial
    checkpointed whose report was lost with the killed driver is in neither: the trial resumes after it."""
    recorded = {int(r["step"]) for r in results if "step" in r and key in r}
    assert recorded and recorded <= set(logged) <= set(SMOKE_STEPS), (key, logged, recorded)
    repeated = [step for step in sorted(set(logged)) if logged.count(step) > 1]
    final_point = [SMOKE_STEPS[-1]] if key in FINAL_METRICS else []
    assert repeated in ([], final_point) and all(logged.count(s) == 2 for s in repeated), (key, logged)


def runs_in_database(backend_uri: str, experiment: str) -> int:
    import psycopg2

    connection = psycopg2.connect(backend_uri.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs JOIN experiments USING (experiment_id)"
                           " WHERE experiments.name = %s", (experiment,))  # fmt: skip
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_concurrent_metric_batches_to_one_run_neither_deadlock_nor_lose_points(
    postgres: Postgres, postgres_server: MlflowServer
) -> None:
    """mlflow#24923: log_batch calls to one run with the same keys in different orders, more keys than one
    locking query takes (500), deadlocked on PostgreSQL until the keys were sorted before batching (mlflow PR
    24941). A bounded retry now also hides a deadlock from the client, so PostgreSQL's own log is read: it
    reports every deadlock it broke. (With that sort undone in the server, this load made 7 and 8 of them in two
    runs.)"""
    client = MlflowClient(postgres_server.uri)
    run_id = client.create_run(client.create_experiment("batches")).info.run_id
    keys = [f"m{i:04d}" for i in range(1000)]  # log_batch's limit: 1000 metrics a call
    client.log_batch(run_id, metrics=[Metric(k, 0.0, 0, 0) for k in keys])  # the rows the later calls lock
    deadlocks_before = postgres.log.read_text().count("deadlock detected")
    writers, rounds, errors = 6, 3, []

    def write(writer: int) -> None:
        order = random.Random(writer).sample(keys, len(keys))  # each writer its own key order
        for step in range(1, rounds + 1):
            stamp = int(time.time() * 1000)
            try:
                client.log_batch(run_id, metrics=[Metric(k, writer * 100 + step, stamp, step) for k in order])
            except Exception as error:  # noqa: BLE001 - collected, failed on below with the others
                errors.append(f"writer {writer} step {step}: {error}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert postgres.log.read_text().count("deadlock detected") == deadlocks_before
    history = client.get_metric_history(run_id, keys[-1])
    assert len(history) == 1 + writers * rounds  # no point lost
    latest = client.get_run(run_id).data.metrics
    assert len(latest) == len(keys) and all(latest[k] % 100 == rounds for k in keys)  # the last step wins
