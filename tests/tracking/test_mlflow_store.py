"""tracking.mlflow_store against a real MLflow SQLite store (and a real locked SQLite file); a trial's end as
sweeps/reconcile.py (the one writer of trial runs) writes it through the store."""

from __future__ import annotations

import http.server
import json
import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leaderboard import load_runs
from sweeps import reconcile as rec
from tracking import mlflow_conn as conn
from tracking import mlflow_store as store
from tracking.names import (
    EXPERIMENT_KIND,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_METHOD,
    TAG_METRIC,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

SHA = "c" * 64
SWEEP_ID = "a1" * 16


def trial_run(client: MlflowClient, trial_id: str = "abc_00000", **params: object) -> tuple[str, str, str]:
    parent = store.start_sweep_run(client, "demo", SWEEP_ID, {"budget_usd": 5.0})
    experiment_id = store.ensure_experiment(client, "demo")
    params = params or {"method": "lora", "rank": 16, "target_modules": ["q_proj", "v_proj"], "alpha": None}
    run_id = store.get_or_create_trial_run(client, experiment_id, parent, trial_id, SWEEP_ID,
                                           f"lora-r16-{trial_id}", "trial", params,
                                           {TAG_SWEEP: "demo", TAG_METHOD: "lora"})
    return experiment_id, parent, run_id


def finish(client: MlflowClient, final: dict, status: str, folder: str | None = None, error: str | None = None,
           trial_id: str = "abc_00000") -> str:
    """End a trial's run as the sweep does: through sweeps/reconcile.py."""
    experiment_id = store.ensure_experiment(client, "demo")
    parent = store.find_sweep_run(client, experiment_id, SWEEP_ID)
    assert parent is not None
    outcome = rec.Outcome(status, final, error, folder is not None)
    record = rec.TrialRecord(trial_id, "x", "trial", {}, {}, outcome, folder=Path(folder) if folder else None)
    return rec.reconcile(client, experiment_id, parent.info.run_id, record, SWEEP_ID)


def test_tracking_uri_explicit_then_environment_then_absolute_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert conn.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert conn.tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert conn.tracking_uri() == "http://127.0.0.1:5555"
    assert conn.tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_check_reachable_sqlite(tmp_path):
    conn.check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match=r"missing.*does not exist.*MLFLOW_TRACKING_URI"):
        conn.check_reachable(f"sqlite:///{tmp_path}/missing/mlflow.db")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="not writable"):
            conn.check_reachable(f"sqlite:///{locked}/mlflow.db")


def held_port() -> socket.socket:
    """A local port the OS picked, bound and not listening: a connection to it is refused, and no other
    process can take it while the test holds it (unlike a fixed number, or a port released and re-bound)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def serve_on(sock: socket.socket) -> http.server.ThreadingHTTPServer:
    """A plain file server listening on the port `sock` holds (it answers 404 to MLflow's calls)."""
    server = http.server.ThreadingHTTPServer(sock.getsockname(), http.server.SimpleHTTPRequestHandler,
                                             bind_and_activate=False)  # fmt: skip
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = "127.0.0.1", sock.getsockname()[1]
    server.server_activate()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_check_reachable_http(tmp_path):
    with held_port() as sock:
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ValueError, match=rf"{uri}.*no MLflow server answers.*mlflow server"):
            conn.check_reachable(uri, timeout_s=1.0)
    # Any HTTP answer (here a 404 from a plain file server) means something listens there.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn.check_reachable(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()


def test_sweep_run_is_reused_not_duplicated(client, caplog):
    params = {"budget_usd": 5.0, "space": "default.yaml"}
    first = store.start_sweep_run(client, "demo", SWEEP_ID, params, {TAG_TEST_SHA: SHA})
    store.finish_sweep_run(client, first, {"spent_usd": 1.0}, status="interrupted")
    assert client.get_run(first).info.status == "KILLED"
    again = store.start_sweep_run(client, "demo", SWEEP_ID, {"budget_usd": 9.0, "max_trials": 3})
    assert again == first
    experiment = client.get_experiment_by_name("demo")
    assert experiment.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND  # the UI opens it on its runs table
    assert len(client.search_runs([experiment.experiment_id])) == 1
    run = client.get_run(first)
    assert run.info.status == "RUNNING" and run.data.tags[TAG_STATUS] == "running"
    assert run.data.params == {"budget_usd": "5.0", "space": "default.yaml", "max_trials": "3"}
    assert run.data.tags[TAG_ROLE] == "sweep" and run.data.tags[TAG_TEST_SHA] == SHA
    assert run.data.tags[TAG_SWEEP_ID] == SWEEP_ID
    assert "budget_usd stays '5.0'" in caplog.text
    # Another sweep under the same name (its folder deleted, started anew) gets a parent of its own.
    other = store.start_sweep_run(client, "demo", "b2" * 16, {"budget_usd": 1.0})
    assert other != first and len(client.search_runs([experiment.experiment_id])) == 2
    with pytest.raises(ValueError, match="finished, interrupted or failed"):
        store.finish_sweep_run(client, other, {}, status="pruned")


def test_an_experiment_made_before_the_kind_was_set_gets_it(client):
    experiment_id = client.create_experiment("old")
    assert TAG_EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags
    assert store.ensure_experiment(client, "old") == experiment_id
    assert client.get_experiment(experiment_id).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_trial_run_found_by_tag_and_reopened(client):
    experiment_id, parent, run_id = trial_run(client)
    assert store.find_trial_run(client, experiment_id, "abc_00000", SWEEP_ID) == run_id
    assert store.find_trial_run(client, experiment_id, "abc_00000", "another-sweep") is None
    assert store.find_trial_run(client, experiment_id, "other_00001", SWEEP_ID) is None
    assert store.find_trial_run(client, experiment_id, "it's", SWEEP_ID) is None  # quoted, not a syntax error
    run = client.get_run(run_id)
    assert run.info.run_name == "lora-r16-abc_00000"
    assert run.data.tags[TAG_PARENT] == parent and run.data.tags[TAG_TRIAL_ID] == "abc_00000"
    assert run.data.tags[TAG_ROLE] == "trial" and run.data.tags[TAG_STATUS] == "running"
    assert run.data.tags[TAG_SWEEP_ID] == SWEEP_ID
    assert run.data.params == {"method": "lora", "rank": "16", "target_modules": "q_proj,v_proj"}

    assert finish(client, {"cost_usd": 0.2}, "failed", error="Boom") == "updated"
    assert client.get_run(run_id).data.tags[TAG_ERROR] == "Boom"
    again = store.get_or_create_trial_run(client, experiment_id, parent, "abc_00000", SWEEP_ID, "ignored",
                                          "trial", {"method": "lora", "rank": 16, "steps": 40})
    assert again == run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[TAG_STATUS] == "running"
    assert TAG_ERROR not in run.data.tags  # the earlier attempt's error no longer describes the run
    assert run.data.params["steps"] == "40"
    assert len(client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'trial'")) == 1
    with pytest.raises(ValueError, match="role"):
        store.get_or_create_trial_run(client, experiment_id, parent, "x", SWEEP_ID, "x", "sweep", {})


def test_step_metrics_keep_only_finite_numbers(client):
    _, _, run_id = trial_run(client)
    store.log_step_metrics(client, run_id, {"train_loss": 2.5, "val_quality": np.float32(0.25),
                                            "tokens_trained": np.int64(512), "bad": math.nan, "inf": math.inf,
                                            "flag": True, "text": "x", "none": None}, step=3)
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {"train_loss": 2.5, "val_quality": 0.25, "tokens_trained": 512.0}
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [3]
    store.log_step_metrics(client, run_id, {"text": "only junk"}, step=4)  # nothing to log is no error


def test_finish_trial_run_finals_tags_artifacts(client, tmp_path):
    _, _, run_id = trial_run(client)
    for step, value in ((10, 0.3), (20, 0.5)):
        store.log_step_metrics(client, run_id, {"val_quality": value, "cost_usd": step / 100}, step)
    folder = tmp_path / "checkpoint"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps({"test_quality": 0.7}))
    (folder / "test_predictions.jsonl").write_text('{"expected": "1", "predicted": "1", "score": 1.0}\n')
    (folder / "optimizer.pt").write_text("not an artifact")
    final = {"test_quality": 0.7, "val_quality": 0.6, "n_test": 50, "cost_usd": 0.25, "steps_done": 15,
             "adapter_mb": 1.5, "status": "finished", "test_set_sha256": SHA, "metric": "exact_match",
             "method": "lora", "phase": "final", "learning_rate": 1e-4}
    assert finish(client, final, "finished", str(folder)) == "updated"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # The final value wins over the curve although steps_done (15) is below the curve's last step (20).
    assert run.data.metrics["val_quality"] == 0.6 and run.data.metrics["cost_usd"] == 0.25
    assert run.data.metrics["test_quality"] == 0.7 and "learning_rate" not in run.data.metrics
    assert run.data.tags[TAG_STATUS] == "finished" and run.data.tags[TAG_TEST_SHA] == SHA
    assert run.data.tags[TAG_METRIC] == "exact_match" and run.data.tags[TAG_METHOD] == "lora"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == [
        "adapter", "metrics.json", "test_predictions.jsonl"]
    assert [a.path for a in client.list_artifacts(run_id, "adapter")] == ["adapter/adapter_config.json"]
    assert finish(client, final, "finished", str(folder)) == "unchanged"  # idempotent
    with pytest.raises(ValueError, match="status: 'running'"):
        store.mlflow_status("running")


def test_failed_trial_run_keeps_error_tail(client):
    _, _, run_id = trial_run(client)
    error = "Traceback (most recent call last):\n" + "  frame\n" * 3000 + "RuntimeError: CUDA out of memory"
    finish(client, {"cost_usd": 0.05}, "failed", None, error)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATUS] == "failed"
    assert run.data.tags[TAG_ERROR].endswith("RuntimeError: CUDA out of memory")
    assert run.data.metrics == {"cost_usd": 0.05}


def test_finish_sweep_run_logs_totals_and_artifacts(client, tmp_path):
    parent = store.start_sweep_run(client, "demo", SWEEP_ID, {})
    (tmp_path / "leaderboard.csv").write_text("a,b\n")
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "index.html").write_text("<html/>")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        store.finish_sweep_run(client, parent, {}, [tmp_path / "nope.csv"])
    store.finish_sweep_run(client, parent, {"spent_usd": 4.5, "trials_done": 7},
                           [tmp_path / "leaderboard.csv", str(tmp_path / "board")])
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATUS] == "finished"
    assert run.data.metrics == {"spent_usd": 4.5, "trials_done": 7.0}
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["board", "leaderboard.csv"]


def test_leaderboard_reads_what_the_store_writes(client, tmp_path):
    _, _, run_id = trial_run(client, method="lora", rank=16, alpha=32, learning_rate=2e-4,
                             target_modules=["q_proj", "k_proj"])
    finish(client, {"test_quality": 0.8, "n_test": 20, "cost_usd": 0.4, "test_set_sha256": SHA,
                    "metric": "exact_match"}, "finished")
    df, _ = load_runs(["demo"], tracking_uri=client.tracking_uri)
    row = df.iloc[0]
    assert len(df) == 1 and row["trial_id"] == "abc_00000" and row["status"] == "finished"
    assert (row["rank"], row["alpha"], row["learning_rate"]) == (16, 32, 2e-4)
    assert row["target_modules"] == "q_proj,k_proj" and row["test_quality"] == 0.8 and row["cost_usd"] == 0.4


def test_retry_only_transient_errors(monkeypatch):
    monkeypatch.setattr(conn, "RETRY_DELAYS", (0.0, 0.0))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert conn.retry(flaky, "flaky") == "ok" and len(calls) == 3
    calls.clear()

    def locked() -> None:
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.raises(MlflowException, match="locked"):
        conn.retry(locked, "always locked")
    assert len(calls) == 3  # the first attempt and one per delay, then it gives up
    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise MlflowException("Run 'x503' not found")

    with pytest.raises(MlflowException, match="not found"):
        conn.retry(broken, "broken")
    assert len(calls) == 1


@pytest.mark.slow
def test_retry_survives_a_really_locked_sqlite_file(client, tmp_path, monkeypatch):
    """Another process holds the database past MLflow's own 20 s wait; the write goes through afterwards."""
    monkeypatch.setattr(conn, "RETRY_DELAYS", (0.5, 0.5))
    _, _, run_id = trial_run(client)
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(21.0, holder.rollback)
    release.start()
    started = time.monotonic()
    try:
        store.log_step_metrics(client, run_id, {"train_loss": 1.0}, step=1)
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - started > 20  # it really was locked, then retried
    assert client.get_run(run_id).data.metrics == {"train_loss": 1.0}


def test_fail_fast_tries_once_and_puts_the_http_settings_back(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    calls: list[int] = []

    def locked() -> None:
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with conn.fail_fast(timeout_s=7):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        with pytest.raises(MlflowException, match="locked") as raised:
            conn.retry(locked, "locked")
    assert len(calls) == 1  # no pauses, no second attempt: the caller keeps the write for later
    assert conn.is_transient(raised.value) and not conn.is_transient(MlflowException("Run 'x' not found"))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_a_server_that_went_away_fails_fast_until_it_answers_again(monkeypatch):
    monkeypatch.setattr(conn, "RETRY_DELAYS", (0.0,))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sock = held_port()
    port = sock.getsockname()[1]
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(conn.TrackingUnavailable, match=rf"127.0.0.1:{port} cannot be reached") as raised:
        store.ensure_experiment(client, "demo")
    assert raised.value.uri == client.tracking_uri and isinstance(raised.value, MlflowException)
    # Known to be down: the next call asks /health instead of MLflow's minutes of retries ("still down").
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    with pytest.raises(conn.TrackingUnavailable, match="still down"):
        store.log_step_metrics(client, "run-id", {"train_loss": 1.0}, step=1)
    # Something answers there again: calls go through to it (this one gets a 404 from a plain file server,
    # listening on the port the test held all along, so nothing else can have taken it).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = serve_on(sock)
    try:
        with pytest.raises(MlflowException) as answered:
            store.ensure_experiment(client, "demo")
        assert not isinstance(answered.value, conn.TrackingUnavailable)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(conn.TrackingUnavailable):  # gone again
        store.ensure_experiment(client, "demo")


def test_helpers_for_sync_read_and_write_only_what_is_asked(client, tmp_path):
    experiment_id, parent, run_id = trial_run(client)
    assert store.find_sweep_run(client, experiment_id, SWEEP_ID).info.run_id == parent
    assert store.find_sweep_run(client, experiment_id, "another-sweep") is None
    points = [("train_loss", 1.0 / step, step) for step in range(1, 1502)] + [("cost_usd", math.nan, 3)]
    store.log_metric_points(client, run_id, points)  # more than one batch; the NaN is left out
    assert store.metric_steps(client, run_id, "train_loss") == set(range(1, 1502))
    assert store.metric_steps(client, run_id, "cost_usd") == set()
    folder = tmp_path / "final"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "metrics.json").write_text("{}")
    assert store.trial_artifacts(folder) == ["metrics.json", "adapter"]
    store.log_trial_artifacts(client, run_id, folder, skip=["adapter"])
    assert store.artifact_names(client, run_id) == {"metrics.json"}
    store.log_trial_artifacts(client, run_id, folder, skip=store.artifact_names(client, run_id))
    assert store.artifact_names(client, run_id) == {"metrics.json", "adapter"}
    assert store.mlflow_status("pruned") == "FINISHED" and store.mlflow_status("failed") == "FAILED"
    assert store.mlflow_status("stopped") == "FINISHED" and store.mlflow_status("interrupted") == "KILLED"
    store.end_run(client, run_id, "KILLED")
    assert store.get_run(client, run_id).info.status == "KILLED"


def test_the_cli_recognises_a_tracking_outage_by_its_error_type() -> None:
    """The CLI turns TrackingUnavailable into exit code 3 and the sync advice; any other error is a crash."""
    from sweeps.cli import _tracking_down

    assert _tracking_down(conn.TrackingUnavailable("http://127.0.0.1:1", "metrics", "refused"))
    assert not _tracking_down(ValueError("something else"))
