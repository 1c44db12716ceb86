"""Sweeps on object storage: `storage: s3://bucket/prefix` against a real S3-compatible server (moto's server
mode on 127.0.0.1, tests/sweeps/s3_server.py), through the CLI as a user runs them, with real Ray Tune,
MLflow (SQLite) and the tiny model. The sweep's node-local mirror is kept in the test's folder
(SWEEPBOARD_MIRROR) and deleted before sync and export, so what they read comes from the bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server
from test_sweep_e2e import children, kill_node, runs_of, smoke_config, sweep_env

from tracking import names

STORAGE = "s3://sweeps-bucket/team"
PREFIX = "team"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    server.create_bucket()
    try:
        yield server
    finally:
        server.stop()


def env_of(tmp_path: Path, s3: S3Server) -> dict[str, str]:
    return {**sweep_env(tmp_path), **s3.env, "SWEEPBOARD_MIRROR": str(tmp_path / "mirror")}


def cli(tmp_path: Path, s3: S3Server, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=tmp_path, env=env_of(tmp_path, s3),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def start(tmp_path: Path, s3: S3Server, cfg: Path, fault: str | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
    env = {**env_of(tmp_path, s3), **({"SWEEPBOARD_FAULT": fault} if fault else {})}
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def wait_for(ready: Any, proc: subprocess.Popen[str], timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := ready()):
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the driver ended early (exit {proc.returncode}): {output[-3000:]}")
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.3)
    return found


def training_checkpoints(s3: S3Server, sweep: str) -> list[str]:
    """Checkpoint objects in the bucket that hold a trial's weights (the whole training state)."""
    return [k for k in s3.keys(f"{PREFIX}/{sweep}/") if "/checkpoint_" in k and k.endswith("/trainable.pt")]


def remove(folder: Path) -> None:
    """rmtree, again while the killed driver's last processes (SIGKILLed, not yet reaped) still write."""
    for _ in range(50):
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.2)
    shutil.rmtree(folder)


def checkpointed_results(s3: S3Server, sweep: str) -> bool:
    """Whether a trial's result.json in the bucket records a training report with a checkpoint."""
    for key in s3.keys(f"{PREFIX}/{sweep}/trial_"):
        if key.endswith("/result.json"):
            for line in s3.read(key).decode().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("checkpoint_dir_name"):
                        return True
    return False


def state_names_a_checkpoint(s3: S3Server, sweep: str) -> bool:
    """Whether Tune's experiment state in the bucket (what a resume restores) names a trial's checkpoint."""
    states = [k for k in s3.keys(f"{PREFIX}/{sweep}/") if "/experiment_state-" in k and k.endswith(".json")]
    return any(b"checkpoint_000000" in s3.read(k) for k in states)


def trial_ids_in_bucket(s3: S3Server, sweep: str) -> set[str]:
    keys = s3.keys(f"{PREFIX}/{sweep}/trial_")
    return {k.split("/")[2].removeprefix("trial_") for k in keys if k.endswith("/result.json")}


def bucket_json(s3: S3Server, sweep: str, rel: str) -> Any:
    return json.loads(s3.read(f"{PREFIX}/{sweep}/{rel}"))


def test_the_lock_object_refuses_a_live_driver_and_takes_over_a_dead_one(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps import driver_lock, storage

    for key, value in {**s3.env, "SWEEPBOARD_MIRROR": str(tmp_path / "mirror")}.items():
        monkeypatch.setenv(key, value)
    root = storage.sweep_folder(STORAGE, "locked")
    remote = storage.Remote(STORAGE, "locked", s3.url)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live driver of this host (a pid that runs) whose heartbeat is fresh: refused
        driver_lock.remote_lock.write(remote, {"pid": other.pid, "host": socket.gethostname(), "command": "x"})
        with pytest.raises(driver_lock.DriverBusy, match=f"pid {other.pid} on host"), \
                driver_lock.hold(root, "resume locked"):  # fmt: skip
            pass
        assert driver_lock.holder(root)["pid"] == other.pid  # type: ignore[index]
    finally:
        other.kill()
        other.wait()
    # Its pid is gone now (a kill -9): the next driver takes over at once, and its end is recorded.
    with driver_lock.hold(root, "resume locked") as record:
        assert json.loads(s3.read(f"{PREFIX}/locked/driver.lock"))["pid"] == record["pid"] == os.getpid()
    assert json.loads(s3.read(f"{PREFIX}/locked/driver.lock"))["ended"]
    assert driver_lock.holder(root) is None


def test_a_stopped_trials_weights_are_deleted_from_the_bucket_and_its_state_json_kept(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.tune import Checkpoint

    from sweeps.cleanup import drop_stored_state
    from sweeps.storage import filesystem

    for name in ("state.json", "trainable.pt", "optim.pt"):
        s3.client().put_object(Bucket=s3.bucket, Key=f"{PREFIX}/x/trial_1/checkpoint_000001/{name}", Body=b"1")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    fs, _ = filesystem(STORAGE)
    drop_stored_state(Checkpoint(f"{s3.bucket}/{PREFIX}/x/trial_1/checkpoint_000001", filesystem=fs))
    objects = [k for k in s3.keys(f"{PREFIX}/x/") if not k.endswith("/")]  # pyarrow keeps folder markers
    assert objects == [f"{PREFIX}/x/trial_1/checkpoint_000001/state.json"]


def test_a_finished_trials_training_state_is_deleted_from_every_checkpoint_in_the_bucket(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps import storage
    from sweeps.training_state import drop_finished

    # trial_done: an attempt the driver never recorded uploaded checkpoint_000001 with its weights, and the
    # resumed trial's final files went into the same folder; trial_live has not finished.
    layout = {"trial_done/checkpoint_000001": ("state.json", "trainable.pt", "optim.pt", "metrics.json"),
              "trial_done/checkpoint_000000": ("state.json", "shards/0.pt"),
              "trial_live/checkpoint_000000": ("state.json", "trainable.pt")}  # fmt: skip
    for folder, files in layout.items():
        for name in files:
            s3.client().put_object(Bucket=s3.bucket, Key=f"{PREFIX}/done/{folder}/{name}", Body=b"1")
    for key, value in {**s3.env, "SWEEPBOARD_MIRROR": str(tmp_path / "mirror")}.items():
        monkeypatch.setenv(key, value)
    deleted = drop_finished(storage.sweep_folder(STORAGE, "done"))
    assert len(deleted) == 3, deleted
    objects = sorted(k for k in s3.keys(f"{PREFIX}/done/") if not k.endswith("/"))
    assert objects == [f"{PREFIX}/done/trial_done/checkpoint_000000/state.json",
                       f"{PREFIX}/done/trial_done/checkpoint_000001/metrics.json",
                       f"{PREFIX}/done/trial_done/checkpoint_000001/state.json",
                       f"{PREFIX}/done/trial_live/checkpoint_000000/state.json",
                       f"{PREFIX}/done/trial_live/checkpoint_000000/trainable.pt"]  # fmt: skip


def test_object_storage_refuses_what_it_cannot_do_yet(tmp_path: Path) -> None:
    from sweeps import config as sweep_config
    from trainers.config import ConfigError

    raw = {"storage": STORAGE, "resources": {"full": {"cpus": 1, "workers": 2}}, "trial": {"batch_size": 4}}
    with pytest.raises(ConfigError, match="resources.full.workers: multi-worker trials need a storage folder"):
        sweep_config.build(raw, "cfg.yaml")
    with pytest.raises(ConfigError, match="storage: 'nosuch://b/p': no filesystem for this URI"):
        sweep_config.build({"storage": "nosuch://b/p"}, "cfg.yaml")


@pytest.mark.slow
def test_a_sweep_on_s3_survives_kill_9_and_syncs_and_exports_from_the_bucket(
    tmp_path: Path, s3: S3Server
) -> None:
    # Training checkpoints at steps 5 and 10 of 10; the first driver's trials hold before step 6 (a fault
    # drill, not set for the resume), so the node dies between a trial's step-5 checkpoint and its next
    # one. Without the pause the tiny model reaches step 10 in well under a second, and a kill after the
    # driver recorded the step-10 checkpoint (deleting step 5's) but before its next snapshot of the
    # experiment state resumes the trial at a checkpoint that no longer exists (docs/production.md; 1 run of
    # 10 here), which is not what this test is about.
    cfg = smoke_config(tmp_path, "ons3", storage=STORAGE, max_trials=2, concurrency=1, grace_period=2,
                       trial={"steps": 10, "eval_every": 5})  # fmt: skip
    proc = start(tmp_path, s3, cfg, fault="pause@step=6")
    try:
        # Killed once a trial's checkpoint in the bucket holds its weights (the state a resume continues
        # from), and Ray's record of it is there too: its result.json, and the experiment state naming the
        # checkpoint (uploaded after result.json: a kill before it restarts the trial from step 0).
        carried = wait_for(lambda: training_checkpoints(s3, "ons3") and checkpointed_results(s3, "ons3")
                           and state_names_a_checkpoint(s3, "ons3"), proc)  # fmt: skip
    finally:
        kill_node(proc)  # the driver and everything it started, mid-trial
    assert any(k.endswith("/optim.pt") for k in s3.keys(f"{PREFIX}/ons3/")), carried
    # As if resumed on another machine: nothing of the sweep here but what is in the bucket.
    remove(tmp_path / "mirror")

    resumed = cli(tmp_path, s3, "resume", "ons3", "--storage", STORAGE)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"taking over sweep 'ons3' from a driver that is gone (pid {proc.pid}" in resumed.stderr
    # The interrupted trial went on from the bucket's checkpoint, not from step 0.
    logs = " ".join(log.read_text() for log in (tmp_path / "mirror").glob("*/ons3/trial_*/trial.log"))
    assert "sweepboard: resuming from step" in logs, logs[-3000:]

    assert not (tmp_path / "runs").exists(), "the sweep wrote under a local runs/"
    trials = trial_ids_in_bucket(s3, "ons3")
    assert len(trials) == 2
    kids = children(runs_of(tmp_path, "ons3"))
    trial_runs = [r for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]
    assert sorted(r.data.tags[names.TAG_TRIAL_ID] for r in trial_runs) == sorted(trials)  # one run per trial
    assert all(r.data.tags[names.TAG_STATUS] == "finished" for r in trial_runs)
    # sweepboard's own files are in the bucket, and the bucket's ledger is the sweep's one spent figure.
    state = bucket_json(s3, "ons3", "sweepboard.json")
    assert state["ended"] == "finished"
    assert bucket_json(s3, "ons3", "baseline/metrics.json")["method"] == "none"
    parent = next(r for r in runs_of(tmp_path, "ons3") if r.data.tags.get(names.TAG_ROLE) == "sweep")
    ledger = bucket_json(s3, "ons3", "budget.json")
    assert ledger["spent_usd"] == pytest.approx(parent.data.metrics["spent_usd"], rel=1e-9)
    board = bucket_json(s3, "ons3", "leaderboard/leaderboard.json")
    assert {row["trial_id"] for row in board["rows"] if row.get("role") == "trial"} == trials
    # A finished trial keeps its final files in the bucket, and no training state.
    finals = [k for k in s3.keys(f"{PREFIX}/ons3/trial_") if k.endswith("/metrics.json")]
    assert len(finals) == 2 and not training_checkpoints(s3, "ons3"), "\n".join(s3.keys(f"{PREFIX}/ons3/trial_"))

    remove(tmp_path / "mirror")  # from here on, only the bucket has the sweep
    synced = cli(tmp_path, s3, "sync", "ons3", "--storage", STORAGE)
    assert synced.returncode == 0, synced.stdout[-3000:] + synced.stderr[-3000:]
    assert "0 created" in synced.stdout, synced.stdout
    run = trial_runs[0]
    out = tmp_path / "export"
    shipped = cli(tmp_path, s3, "export", "ons3", "--run", run.info.run_id, "--storage", STORAGE,
                  "--out", str(out))  # fmt: skip
    assert shipped.returncode == 0, shipped.stdout[-3000:] + shipped.stderr[-3000:]
    assert "building the leaderboard from MLflow" not in shipped.stdout  # the bucket's leaderboard.json
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_store_stopped_mid_sweep_is_a_clear_error_and_keeps_what_it_acknowledged(
    tmp_path: Path, s3: S3Server
) -> None:
    cfg = smoke_config(tmp_path, "outage", storage=STORAGE, max_trials=1, concurrency=1, baseline=False,
                       grace_period=4, trial={"steps": 12})  # fmt: skip
    proc = start(tmp_path, s3, cfg)
    try:
        wait_for(lambda: training_checkpoints(s3, "outage"), proc)
        acknowledged = bucket_json(s3, "outage", "budget.json")
        s3.stop()
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (tmp_path / "outage.log").write_text(output)
    assert proc.returncode == 4, output[-3000:]  # sweeps/cli.py EXIT_STORAGE_DOWN
    assert "object storage: could not write" in output and STORAGE in output, output[-3000:]
    assert f"sweepboard resume outage --storage {STORAGE}" in output

    s3.start()  # the same server again: what it had acknowledged is there, and the sweep goes on from it
    kept = bucket_json(s3, "outage", "budget.json")
    for trial_id, entry in acknowledged["trials"].items():
        now = kept["trials"][trial_id]
        assert now["cost"] + now["carried"] >= entry["cost"] + entry["carried"]
    resumed = cli(tmp_path, s3, "resume", "outage", "--storage", STORAGE)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trial_runs = [r for r in children(runs_of(tmp_path, "outage")) if r.data.tags[names.TAG_ROLE] == "trial"]
    assert [r.data.tags[names.TAG_TRIAL_ID] for r in trial_runs] == sorted(trial_ids_in_bucket(s3, "outage"))
    assert trial_runs[0].data.tags[names.TAG_STATUS] == "finished"
    final = bucket_json(s3, "outage", "budget.json")
    assert final["spent_usd"] >= acknowledged["spent_usd"]
