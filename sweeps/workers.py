"""A trial of several workers: Ray Train's TorchTrainer, started from inside the Tune trial (Ray 2.x's
Train-in-Tune pattern), for a method whose resources say `workers: N`.

Ray Train reserves the N workers (each with the method's cpus and gpus) as one placement group, starts
torch.distributed on them (gloo on CPU, NCCL on GPUs) and runs `run_trial` on each; the trial itself
decides what that means per method (trainers/distributed.py: DDP for adapters, FSDP for full). Rank 0's
reports reach Tune through Ray's TuneReportCallback, so ASHA, the budget and MLflow see one trial as for a
single worker. Checkpoints stay where the single-process path keeps them, in the trial's own folder, so a
lost worker (Ray Train restarts the group) and a resumed sweep (Tune restarts the trial) both continue
from the newest step.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

WORKER_RESTARTS = 2  # a lost worker restarts the group this often before the trial fails (then Tune retries)


def run(settings: dict[str, Any], spec: dict[str, Any], sweep: str, log: Path) -> dict[str, Any]:
    """Run the trial on spec["workers"] workers and return rank 0's metrics (its metrics.json)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    out = Path(settings["out"])
    gpu = spec["gpus"] > 0
    per_worker = {"CPU": spec["cpus"], **({"GPU": spec["gpus"]} if gpu else {})}
    print(f"sweepboard: starting {spec['workers']} Ray Train workers of {per_worker} each", flush=True)
    trainer = TorchTrainer(
        _per_worker,
        train_loop_config={"settings": {**settings, "threads": max(1, int(spec["cpus"]))}, "sweep": sweep,
                           "log": str(log)},  # fmt: skip
        scaling_config=ScalingConfig(num_workers=spec["workers"], use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(
            # A new Train run per attempt: the trial's checkpoint lives in `out`, not in Train's storage.
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(out.parent / "ray_train"),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # a Train V2 callback
            failure_config=FailureConfig(max_failures=WORKER_RESTARTS),
        ),
    )
    trainer.fit()
    return json.loads((out / "metrics.json").read_text())


def _per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from sweeps.budget import trial_should_stop
    from sweeps.trainable import output_to
    from trainers import run_trial

    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool:
        ray.train.report(metrics)  # every worker reports (Train waits for all); Tune gets rank 0's
        return rank == 0 and trial_should_stop(config["sweep"])

    # Rank 0 speaks for the trial in its log, as a single-process trial does.
    with output_to(Path(config["log"])) if rank == 0 else contextlib.nullcontext():
        run_trial(config["settings"], report=report)
