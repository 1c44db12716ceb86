"""A real MLflow store laid out as tracking/names.py says, written the way the sweep writes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tracking.names import (
    ARTIFACT_PREDICTIONS,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

SHA = "5" * 64
OTHER_SHA = "9" * 64
LORA = {"rank": "16", "alpha": "32", "target_modules": "q_proj,k_proj,v_proj,o_proj", "lora_dropout": "0.05",
        "learning_rate": "0.0002"}


def log_sweep(client: MlflowClient, root: Path, name: str, metric: str, trials: list[dict[str, Any]],
              parent_sha: str | None = SHA, parent_params: dict[str, str] | None = None) -> None:
    """One experiment: a parent run (tagged with `parent_sha` unless None, with `parent_params`) and one child
    run per trial.

    A trial: name, method, metrics (finals), and optionally role, status, error, params, val (validation
    quality, default the test quality; logged at steps 5 and 10 as val/2 and val), curve (step -> validation
    quality instead: val_quality at each step, the finals at the last), sha (None: no test-set tag),
    trial_id, scores (written as test_predictions.jsonl, one line per example).
    """
    experiment_id = client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    parent_tags = {TAG_SWEEP: name, TAG_ROLE: "sweep"}
    if parent_sha is not None:
        parent_tags[TAG_TEST_SHA] = parent_sha
    parent = client.create_run(experiment_id, run_name=f"{name}-sweep", tags=parent_tags)
    if parent_params:
        client.log_batch(parent.info.run_id, params=[Param(k, v) for k, v in parent_params.items()])
    for i, trial in enumerate(trials):
        method = trial["method"]
        tags = {TAG_PARENT: parent.info.run_id, TAG_SWEEP: name, TAG_ROLE: trial.get("role", "trial"),
                TAG_TRIAL_ID: trial.get("trial_id", f"trial_{i:03d}"), TAG_METHOD: method,
                TAG_STATUS: trial.get("status", "finished"), TAG_METRIC: metric, TAG_GIT_COMMIT: "feedc0ffee1234"}
        sha = trial.get("sha", SHA)
        if sha is not None:
            tags[TAG_TEST_SHA] = sha
        if "error" in trial:
            tags[TAG_ERROR] = trial["error"]
        run = client.create_run(experiment_id, run_name=trial["name"], tags=tags)
        params = {"method": method, "steps": "40", "batch_size": "8", "model": "smollm2-135m",
                  "precision": "fp32", "rank": "", "alpha": "", **trial.get("params", {})}
        now = int(time.time() * 1000)
        finals = dict(trial["metrics"])
        val = trial.get("val", finals.get("test_quality"))
        curve = trial.get("curve", {} if val is None else {5: float(val) / 2, 10: float(val)})
        # Finals at the last step, after a validation curve: MLflow shows a metric's value at its highest step.
        last = max(curve, default=10)
        metrics = [Metric(k, float(v), now, last) for k, v in finals.items()]
        metrics += [Metric("val_quality", float(v), now, step) for step, v in curve.items()]
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()], metrics=metrics)
        if "scores" in trial:
            examples = [{"expected": "a", "predicted": "b", "score": s} for s in trial["scores"]]
            lines = "\n".join(json.dumps(example) for example in examples)
            client.log_text(run.info.run_id, lines + "\n", ARTIFACT_PREDICTIONS)
        client.set_terminated(run.info.run_id, "FAILED" if trial.get("status") == "failed" else "FINISHED")
    client.set_terminated(parent.info.run_id)


def final(quality: float | None, cost: float, n: int = 200, adapter: float | None = None,
          **extra: float) -> dict[str, float]:
    metrics = {"n_test": n, "cost_usd": cost, "device_hours": cost / 2.5, "peak_memory_mb": 900.0,
               "trainable_params": 1_843_200, "tokens_per_second": 135.0, **extra}
    if quality is not None:
        metrics["test_quality"] = quality
    if adapter is not None:
        metrics["adapter_mb"] = adapter
    return metrics


def hits(n: int, right: int) -> list[float]:
    """0/1 scores right on the first `right` of n examples (runs built this way are nested)."""
    return [1.0] * right + [0.0] * (n - right)
