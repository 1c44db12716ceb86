"""The baseline as a sweep runs it (real Ray, real MLflow in SQLite, the tiny model): a Ray task holding
method none's resources, out of the driver's process; the driver records it in MLflow, once per sweep, and
a failure is the trial's own error."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from test_sweep_e2e import REPO, smoke_config

from sweeps import config as sweep_config
from sweeps.baseline import run_baseline
from sweeps.runtime import new_sweep_id
from sweeps.tune_run import prepare, trial_base
from tracking import mlflow_store, names
from tracking.prices import detect_device, method_quotes

pytestmark = pytest.mark.slow  # a real Ray and the tiny model
WORKER_LINE = re.compile(r"sweepboard: baseline in Ray worker pid (\d+) on \S+, holding (.*)")


def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **trial: Any) -> dict[str, Any]:
    """What tune_run hands run_baseline: the config (method none on 2 CPUs), absolute trial settings, the
    client, the parent run, the sweep's id and method none's price."""
    monkeypatch.setenv("SWEEPBOARD_CACHE", str(REPO / ".cache"))  # the tiny model, built once and shared
    # The driver works in tmp_path, Ray's workers where Ray started: only paths made absolute here reach them.
    monkeypatch.chdir(tmp_path)
    path = smoke_config(tmp_path, name, price_per_hour=36.0, resources={"none": {"cpus": 2}}, trial=trial)
    cfg = sweep_config.load(str(path))
    assert cfg.storage == "runs/sweeps"  # relative: resolved in the driver
    base = trial_base(cfg)
    prepare(base)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    identity = new_sweep_id()
    parent = mlflow_store.start_sweep_run(client, name, identity, {})
    quote = method_quotes(cfg.resources, detect_device(), cfg.price_per_hour, cfg.gpu)["none"]
    return dict(cfg=cfg, base=base, client=client, parent=parent, identity=identity, quote=quote)


def baseline_run(sweep: dict[str, Any]) -> Any:
    client, name = sweep["client"], sweep["cfg"].name
    experiment = mlflow_store.ensure_experiment(client, name)
    run_id = mlflow_store.find_trial_run(client, experiment, f"{name}-baseline", sweep["identity"])
    assert run_id is not None, "no baseline run"
    return client.get_run(run_id)


def test_the_baseline_runs_as_a_ray_task_on_method_nones_resources_once(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = start(tmp_path, monkeypatch, "bl")
    cost = run_baseline(**sweep)
    folder = tmp_path / "runs" / "sweeps" / "bl" / "baseline"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert cost == pytest.approx(metrics["cost_usd"]) and cost > 0
    # Its output is in its folder, written by a Ray worker: another process, holding method none's 2 CPUs.
    log = (folder / "trial.log").read_text()
    (worker,) = WORKER_LINE.findall(log)
    assert int(worker[0]) != os.getpid() and worker[1] == "CPU 2", log[:2000]
    run = baseline_run(sweep)
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_STATUS] == "finished"
    assert run.data.metrics["test_quality"] == pytest.approx(metrics["test_quality"])
    assert run.data.tags[names.TAG_PARENT] == sweep["parent"]

    # A resumed sweep finds its finished baseline and does not evaluate it again.
    assert run_baseline(**sweep) == pytest.approx(cost)
    assert len(WORKER_LINE.findall((folder / "trial.log").read_text())) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="device: cuda fails only where there is no CUDA")
def test_a_failed_baseline_is_the_trials_own_error_in_its_run_and_its_log(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = start(tmp_path, monkeypatch, "blfail", device="cuda")
    with pytest.raises(ValueError, match="no CUDA device") as raised:
        run_baseline(**sweep)
    assert type(raised.value) is ValueError  # not Ray's wrapper: the CLI names it as an input error
    run = baseline_run(sweep)
    assert run.info.status == "FAILED" and run.data.tags[names.TAG_STATUS] == "failed"
    error = "ValueError: device: 'cuda': no CUDA device is visible; use device: auto or cpu"
    assert run.data.tags[names.TAG_ERROR] == error
    log = (tmp_path / "runs" / "sweeps" / "blfail" / "baseline" / "trial.log").read_text()
    assert "Traceback" in log and error in log
