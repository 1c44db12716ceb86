"""Multi-worker trials in a real sweep: `resources.<method>.workers: 2` runs the trial as two Ray Train
workers (gloo, 1 CPU each, the tiny model) started from inside its Tune trial. That the two workers train
the same curve as one is tested without Ray in tests/trainers/test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_faults import finish, start_sweep, steps_logged, sweep_root, trial_log, trial_runs
from test_sweep_e2e import runs_of, smoke_config

from tracking import names

TWO = {"cpus": 1, "workers": 2}


def _metrics(tmp_path: Path, name: str) -> dict[str, dict[str, Any]]:
    """Each trial's metrics.json, by method."""
    found = {}
    for path in sweep_root(tmp_path, name).glob("trial_*/work/metrics.json"):
        metrics = json.loads(path.read_text())
        found[metrics["method"]] = metrics
    return found


@pytest.mark.slow
def test_two_worker_lora_and_full_trials_run_through_ray_train(tmp_path: Path) -> None:
    # The sweep's first points: the default LoRA, QLoRA, full fine-tuning. LoRA and full get 2 workers,
    # QLoRA one process; grace_period 4 prunes nothing; one trial at a time on this 2-core machine.
    cfg = smoke_config(tmp_path, "workers", max_trials=3, grace_period=4, concurrency=1, baseline=False,
                       resources={"default": {"cpus": 1}, "lora": TWO, "full": TWO})  # fmt: skip
    output = finish(start_sweep(tmp_path, cfg))
    banner = " ".join(output.split())
    assert "price lora $0.09/h for 2 vCPU" in banner and "price qlora $0.045/h for 1 vCPU" in banner

    metrics = _metrics(tmp_path, "workers")
    assert {m: metrics[m]["workers"] for m in metrics} == {"lora": 2, "qlora": 1, "full": 2}
    for method in ("lora", "full"):
        m = metrics[method]
        assert m["status"] == "finished" and m["steps_done"] == 6
        assert m["cost_usd"] == pytest.approx(m["wall_seconds"] * 0.09 / 3600)  # two workers' vCPUs
        assert m["device_hours"] == pytest.approx(2 * m["wall_seconds"] / 3600)
    runs = trial_runs(runs_of(tmp_path, "workers"))
    assert sorted(r.data.tags[names.TAG_METHOD] for r in runs) == ["full", "lora", "qlora"]
    for run in runs:
        assert run.data.tags[names.TAG_STATUS] == "finished"
        assert steps_logged(tmp_path, run) == [2, 4, 6]  # rank 0's reports reached Tune and MLflow, once
    lora = next(r for r in runs if r.data.tags[names.TAG_METHOD] == "lora")
    log = trial_log(tmp_path, "workers", lora.data.tags[names.TAG_TRIAL_ID])
    assert "starting 2 Ray Train workers" in log
    assert (sweep_root(tmp_path, "workers") / "leaderboard" / "leaderboard.json").is_file()


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_checkpoint_in_one_run(tmp_path: Path) -> None:
    """SIGKILL of a worker before step 3 (after the step-2 checkpoint): Ray Train restarts the pair, which
    continues from step 2; the trial stays one Tune trial and one MLflow run with one curve."""
    cfg = smoke_config(tmp_path, "killed", max_trials=1, grace_period=4, baseline=False,
                       resources={"default": {"cpus": 1}, "lora": TWO})  # fmt: skip
    finish(start_sweep(tmp_path, cfg, fault="kill@step=3,method=lora"))
    (run,) = trial_runs(runs_of(tmp_path, "killed"))
    assert run.data.tags[names.TAG_STATUS] == "finished"
    # Step 2's report may die with the worker before Ray Train collects it; the restarted pair reports
    # its checkpoint's point again, so the curve is whole (step 2 possibly twice, with the same values).
    steps = steps_logged(tmp_path, run)
    assert sorted(set(steps)) == [2, 4, 6] and steps.count(4) == steps.count(6) == 1, steps
    trial_id = run.data.tags[names.TAG_TRIAL_ID]
    log = trial_log(tmp_path, "killed", trial_id)
    assert "resuming from step 2" in log
    assert list((sweep_root(tmp_path, "killed") / f"trial_{trial_id}" / "work").glob("fault-kill-step3"))
    assert _metrics(tmp_path, "killed")["lora"]["steps_done"] == 6
