"""The baseline: the base model, no fine-tuning, evaluated once per sweep on the locked test set.

It runs as a Ray task on the resources of method `none` (a GPU where the config gives it one), not in the
driver: the driver may sit on a CPU head node, where a 7B model's evaluation would take hours. The task only
runs the trial and returns its metrics; the driver stays MLflow's one writer.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from sweeps import config as sweep_config
from sweeps import storage
from sweeps.runtime import git_commit
from tracking import names
from tracking.prices import reservation

console = Console(highlight=False)
TASK_NAME = "sweepboard-baseline"


def run_baseline(cfg: sweep_config.SweepConfig, base: dict[str, Any], client: Any, parent: str, identity: str,
                 quote: Any) -> float:  # fmt: skip
    """Its cost in US dollars. Once per sweep (also across resumes; never an earlier sweep's of the same
    name: its run is found by this sweep's id). Ray must be initialised; `base` holds absolute paths."""
    from sweeps.reconcile import Outcome, failed, reconcile
    from sweeps.sync import BASELINE_ID, baseline_record
    from tracking import mlflow_store

    experiment = mlflow_store.ensure_experiment(client, cfg.name)
    record = baseline_record(cfg.name, identity, base, git_commit())
    run_id = mlflow_store.find_trial_run(client, experiment, record.trial_id, identity)
    if run_id is not None:
        run = client.get_run(run_id)
        if run.data.tags.get(names.TAG_STATUS) == "finished":
            return float(run.data.metrics.get("cost_usd", 0.0))
    console.print("baseline: evaluating the base model without fine-tuning on the locked test set…")
    # Resolved here: a Ray worker may run in another working directory, or on another node.
    root = storage.sweep_folder(cfg.storage, cfg.name, cfg.storage_endpoint)
    out = root / BASELINE_ID
    found = storage.remote_of(root)  # object storage: the task writes its folder through to the bucket
    need = cfg.resources["none"]
    # One torch thread per CPU Ray reserves, as for trials: more threads than cores spin against each other.
    threads = max(1, int(need.cpus))
    settings = {
        **base,
        "method": "none",
        "out": str(out),
        **reservation(quote),  # priced on the node the task runs on, as trials are
        "threads": threads,
    }
    mlflow_store.get_or_create_trial_run(client, experiment, parent, record.trial_id, identity, record.run_name,
                                         record.role, record.params, record.tags)  # fmt: skip
    try:
        metrics = on_ray(settings, need.cpus, need.gpus, found[0] if found else None)
        storage.pull(root, BASELINE_ID)  # the task may have run on another node
    except KeyboardInterrupt:
        record.outcome = Outcome("interrupted", {}, None, False)
        reconcile(client, experiment, parent, record, identity)
        raise
    except Exception as exc:
        record.outcome = failed({}, f"{type(exc).__name__}: {exc}")
        reconcile(client, experiment, parent, record, identity)
        raise
    record.outcome, record.folder = Outcome("finished", metrics, None, True), out
    reconcile(client, experiment, parent, record, identity)
    console.print(f"baseline: test quality {metrics['test_quality']:.3f} at ${metrics['cost_usd']:.4f}")
    return float(metrics["cost_usd"])


def on_ray(settings: dict[str, Any], cpus: float, gpus: float,
          remote: storage.Remote | None = None) -> dict[str, Any]:  # fmt: skip
    """run_trial(settings) in a Ray task holding `cpus` and `gpus`; its error is the trial's own, not Ray's
    wrapper (whose text carries the remote traceback, kept as the cause)."""
    import ray

    _warn_if_unplaceable(cpus, gpus)
    # max_calls=1: the worker exits after the task and frees the model's memory (RAM, or a GPU's CUDA
    # context) before the trials need it. max_retries=0: run_trial bills only the attempt that returns, so a
    # retry after a lost worker would leave the first attempt unpaid; the sweep fails, and a resume reruns it.
    task = ray.remote(max_calls=1, max_retries=0)(evaluate)
    task = task.options(name=TASK_NAME, num_cpus=cpus, num_gpus=gpus)
    ref = task.remote(settings, remote)
    try:
        metrics: dict[str, Any] = ray.get(ref)
        return metrics
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise
    except KeyboardInterrupt:
        # Ctrl-C reaches the driver; the worker would evaluate on, unseen. A Ray already going down with
        # the interrupt may refuse the cancel: the interrupt is what is reported either way.
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
        raise


def evaluate(settings: dict[str, Any], remote: storage.Remote | None = None) -> dict[str, Any]:
    """The task's body. What it prints also goes to the baseline folder's trial.log, as a trial's does: the
    sweep runs Ray with log_to_driver off. On object storage (`remote`) the folder then goes to the bucket."""
    import ray

    from sweeps.trainable import LOG_FILE, output_to
    from trainers import run_trial

    with output_to(Path(settings["out"]) / LOG_FILE):
        # Ray names its own log files of a worker by its pid: this line leads from ours to those, and says
        # what the task holds (method none's resources).
        held = ", ".join(
            f"{k} {v:g}" for k, v in sorted(ray.get_runtime_context().get_assigned_resources().items())
        )
        print(f"sweepboard: baseline in Ray worker pid {os.getpid()} on {ray.util.get_node_ip_address()}, "
              f"holding {held}", flush=True)  # fmt: skip
        try:
            metrics: dict[str, Any] = run_trial(settings)
        except Exception:
            traceback.print_exc()
            raise
    if remote is not None:
        storage.upload(remote, Path(settings["out"]), Path(settings["out"]).name)
    return metrics


def _warn_if_unplaceable(cpus: float, gpus: float) -> None:
    """A task that asks more than the cluster has waits for it silently (an autoscaler may still add it)."""
    import ray

    have = ray.cluster_resources()
    if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
        console.print(f"baseline: waiting for {cpus:g} CPUs and {gpus:g} GPUs (resources.none); the cluster "
                      f"has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")  # fmt: skip
