"""The Ray Tune trainable: a thin wrapper that turns a Tune config into a trial and Tune's report into ours.

Everything a trial does lives in trainers.run_trial; this file only bridges to Ray: where the trial writes,
how a restored trial finds its checkpoint, how intermediate and final results and checkpoints reach Tune,
how the budget tells a running trial to stop training and evaluate, and what a failed trial cost.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from trainers import faults, run_trial
from trainers.train import Diverged

SEARCHED = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
FINAL_FILES = ("metrics.json", "test_predictions.jsonl")  # metrics.json first: it marks a finished trial
ADAPTER = "adapter"
MODEL = "model"  # full fine-tuning's final model, in the trial's work/ folder
LOG_FILE = "trial.log"  # in the trial's folder: what it printed, over all its attempts


def trial_config(config: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The fixed trial settings plus this trial's searched values (Optuna's "lora.rank" names dropped),
    and what Ray reserves for its method (config["sweepboard_reserved"]), which the trial prices."""
    searched = {k: config[k] for k in SEARCHED if k in config and config[k] is not None}
    if searched.get("method") == "full":
        searched.update(rank=None, alpha=None)
    reserved = (config.get("sweepboard_reserved") or {}).get(searched.get("method") or base.get("method") or "lora")
    return {**base, **searched, **(reserved or {})}


def trainable(config: dict[str, Any]) -> None:
    started = time.monotonic()
    # A stable folder per trial under the sweep's root, not Ray's per-session working dir: after a killed
    # driver, Ray's last experiment snapshot may predate the trial's newest checkpoint, and this folder
    # still holds it, so the trial continues instead of training those steps again.
    folder = Path(config["sweepboard_root"]) / f"trial_{tune.get_context().get_trial_id()}"
    attempt: dict[str, Any] = {"prior_seconds": 0.0, "prior_step": -1, "last": {}, "settings": {}}
    with output_to(folder / LOG_FILE):
        try:
            _run(config, folder / "work", attempt)
        except Diverged as exc:
            # Its loss ran away at its first report: the trial ends there as failed, one rung's cost, and is
            # not retried (the same rate diverges again); the searcher counts the rate as the worst tried.
            print(f"sweepboard: diverged: {exc}", flush=True)
            tune.report(failure_result(exc, attempt, time.monotonic() - started))
        except Exception as exc:
            traceback.print_exc()  # into the trial's log, next to what it printed before
            # Tune keeps a raising trial's last report as its result, and that is what the ledger, MLflow
            # and the sweep's spend count: report what the trial cost up to the failure first, then fail
            # as before (Tune records the error and retries the trial per its FailureConfig).
            tune.report(failure_result(exc, attempt, time.monotonic() - started))
            raise


def _run(config: dict[str, Any], out: Path, attempt: dict[str, Any]) -> None:
    from sweeps.budget import trial_should_stop

    sweep = config["sweepboard_sweep"]
    settings = trial_config(config, config["sweepboard_trial"])
    remote = bool(config.get("sweepboard_remote"))  # object storage: checkpoints carry the whole state
    restored = tune.get_checkpoint()
    # A trial that had finished its test evaluation keeps no training checkpoint: nothing to restore.
    if restored is not None and not (out / FINAL_FILES[0]).is_file():
        # A restored trial (resume, or a retried worker) continues from its newest checkpoint, the one in
        # `out`: Ray's copy of a training checkpoint is only its state.json (see _pointer). A final
        # checkpoint (metrics, predictions, adapter) in Ray's storage is the trial's result; a Ray copy
        # with weights (a sweep started by an earlier sweepboard) is used when it is the newer one.
        with restored.as_directory() as path:
            source = Path(path) / "checkpoint" if (Path(path) / "checkpoint").is_dir() else Path(path)
            if (source / FINAL_FILES[0]).is_file():
                _copy_final(source, out)  # a final checkpoint from another node: the trial's result
                if (source / MODEL).is_dir() and not (out / MODEL).is_dir():
                    shutil.copytree(source / MODEL, out / MODEL)
            elif _step(source) > _step(out / "checkpoint") and _has_weights(source):
                shutil.rmtree(out / "checkpoint", ignore_errors=True)
                shutil.copytree(source, out / "checkpoint")
    if (out / FINAL_FILES[0]).is_file():
        # The trial had finished its test evaluation (the driver died before Tune recorded its end): its
        # training checkpoint is gone by then, and its result is final, so report that result again.
        print("sweepboard: the trial had finished; reporting its result again", flush=True)
        _report_final(out, json.loads((out / FINAL_FILES[0]).read_text()), with_model=remote)
        return
    # Where this attempt starts: the time and steps of the checkpoint it continues from.
    attempt["prior_seconds"], attempt["prior_step"] = _elapsed(out / "checkpoint"), _step(out / "checkpoint")
    settings["out"] = str(out)
    attempt["settings"] = settings
    # One torch thread per CPU Ray gave the trial: more threads than cores makes OpenMP threads spin against
    # each other (measured here: a 2-thread matmul ran ~10x slower with a second busy process).
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    settings["threads"] = max(1, int(cpus))

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool:
        attempt["last"] = metrics
        if checkpoint_dir is None:
            tune.report(metrics)
        elif remote:
            # Object storage: no folder every node sees, so Ray's copy (uploaded to the bucket during the
            # report) is the whole training state, and a restored trial on any node continues from it.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            with _pointer(Path(checkpoint_dir)) as pointer:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(pointer)))
        return trial_should_stop(sweep)

    spec = (config.get("sweepboard_workers") or {}).get(settings.get("method") or "lora")
    if spec:  # several workers: Ray Train runs them, and rank 0's reports reach Tune without `report`
        from sweeps import workers

        metrics = workers.run(settings, spec, sweep, out.parent / LOG_FILE)
    else:
        metrics = run_trial(settings, report=report)
    if metrics["steps_done"] == metrics["steps"]:
        # A drill at step steps + 1: a worker lost after the test evaluation, before the final report.
        faults.inject(int(metrics["steps"]) + 1, str(metrics["method"]), out)
    _report_final(out, metrics, with_model=remote)


def _report_final(out: Path, metrics: dict[str, Any], with_model: bool = False) -> None:
    """The final report's checkpoint carries what MLflow logs as artifacts (metrics, per-example test
    scores, the adapter), not the training state: run_trial deleted that, and a restore after this point
    reports this result again instead of training. Ray copies the folder into its storage during the
    report, so the staging copy is removed after it; with num_to_keep=1 Ray then drops the trial's last
    training checkpoint, and a finished trial keeps no optimizer state. A full fine-tuning model stays in
    `out/model` only (written once; MLflow does not log it), except on object storage (`with_model`),
    where the bucket is the only place every node (and `export`) reads: there it travels in the checkpoint."""
    final = Path(tempfile.mkdtemp(prefix="final-", dir=out))
    try:
        _copy_final(out, final)
        if with_model and (out / MODEL).is_dir():
            shutil.copytree(out / MODEL, final / MODEL)
        tune.report({**_numeric_or_text(metrics), "phase": "final", "step": metrics["steps_done"]},
                    checkpoint=tune.Checkpoint.from_directory(str(final)))  # fmt: skip
    finally:
        shutil.rmtree(final, ignore_errors=True)


@contextlib.contextmanager
def _pointer(checkpoint: Path) -> Iterator[Path]:
    """What Tune keeps of a training checkpoint: its state.json (step, elapsed time, validation), a few
    hundred bytes, not a second copy of the weights and optimizer state. The checkpoint itself is written
    once, in the trial's folder under the sweep's storage (a path every node sees), which is where a
    restored trial continues from; Tune's copy tells Tune, ASHA and the budget which step that is. Ray
    copies the folder into its storage during the report, so the staging copy goes afterwards."""
    staging = Path(tempfile.mkdtemp(prefix="pointer-", dir=checkpoint.parent))
    try:
        shutil.copy2(checkpoint / "state.json", staging / "state.json")
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _has_weights(checkpoint: Path) -> bool:
    return (checkpoint / "trainable.pt").is_file() or (checkpoint / "shards").is_dir()


def _copy_final(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FINAL_FILES:
        shutil.copy2(source / name, dest / name)
    if (source / ADAPTER).is_dir():
        shutil.copytree(source / ADAPTER, dest / ADAPTER)


def failure_result(exc: BaseException, attempt: dict[str, Any], attempt_seconds: float) -> dict[str, Any]:
    """The result a trial reports when it raises: its cost so far (earlier attempts up to the checkpoint
    this one started from, plus this attempt), the error, and val_quality NaN, which Tune requires in
    every result and which neither ASHA (nanpercentile, NaN < cutoff is False) nor Optuna ranks."""
    last = attempt["last"]
    seconds = attempt["prior_seconds"] + attempt_seconds
    result = {
        "phase": "failed",
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "val_quality": math.nan,
        "elapsed_seconds": seconds,
        "wall_seconds": seconds,
        "cost_usd": seconds * _usd_per_hour(last, attempt["settings"]) / 3600,
    }
    steps = last.get("step", attempt["prior_step"])
    if steps >= 0:
        result["steps_done"] = steps
    return result


def _usd_per_hour(last: dict[str, Any], settings: dict[str, Any]) -> float:
    """The trial's own price: from its last report, else (it failed before one) as trainers.trial prices
    it. 0 when even that fails: the trial's error matters more than its cost, and Tune must get it."""
    if last.get("elapsed_seconds") and isinstance(last.get("cost_usd"), (int, float)):
        return float(last["cost_usd"]) * 3600 / float(last["elapsed_seconds"])
    try:
        import torch

        from tracking.prices import detect_device, price_per_hour

        cuda = settings.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
        gpus = settings.get("reserved_gpus", int(cuda))
        cpus = settings.get("reserved_cpus", settings.get("threads") or torch.get_num_threads())
        return price_per_hour(
            detect_device(), gpus, cpus, settings.get("price_per_hour"), gpu_key=settings.get("gpu")
        ).usd_per_hour
    except Exception:
        return 0.0


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """The trial's stdout and stderr also go to `path`, appended across attempts. The sweep runs Ray with
    log_to_driver off, and Ray's worker logs are scattered over its session folders: this file is where
    an operator reads what a failed or retried trial did ("sweepboard: resuming from step N")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", encoding="utf-8", buffering=1) as log,
        contextlib.redirect_stdout(_Tee(sys.stdout, log)),
        contextlib.redirect_stderr(_Tee(sys.stderr, log)),
    ):
        yield


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _numeric_or_text(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars only: Tune's loggers reject lists (accuracy's label set); metrics.json keeps everything."""
    return {k: ("" if v is None else v) for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _step(checkpoint: Path) -> int:
    state = checkpoint / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else -1


def _elapsed(checkpoint: Path) -> float:
    state = checkpoint / "state.json"
    return float(json.loads(state.read_text()).get("elapsed_seconds", 0.0)) if state.is_file() else 0.0
