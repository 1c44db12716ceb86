"""The MLflow layout every package agrees on: tag, param and metric names.

One experiment per sweep name; one parent run per sweep (role "sweep"); one child run per trial
(role "trial", or "baseline" for the base model evaluated with method "none").
"""

from __future__ import annotations

TAG_SWEEP = "sweepboard.sweep"  # sweep name (also the experiment name)
TAG_ROLE = "sweepboard.role"  # "sweep" | "trial" | "baseline"
TAG_TRIAL_ID = "sweepboard.trial_id"  # Ray Tune trial id, stable across resume
TAG_METHOD = "sweepboard.method"  # "none" | "lora" | "qlora" | "full"
TAG_STATUS = "sweepboard.status"  # see STATUSES
TAG_TEST_SHA = "sweepboard.test_set_sha256"
TAG_METRIC = "sweepboard.metric"  # "exact_match" | "token_f1" | "accuracy"
TAG_GIT_COMMIT = "sweepboard.git_commit"
TAG_ERROR = "sweepboard.error"  # reason of a failed trial
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag

ROLES = ("sweep", "trial", "baseline")
STATUSES = ("running", "finished", "pruned", "stopped", "failed")

# Params of a trial run (all strings in MLflow).
TRIAL_PARAMS = (
    "method",
    "rank",
    "alpha",
    "target_modules",
    "lora_dropout",
    "learning_rate",
    "steps",
    "batch_size",
    "model",
    "precision",
)

# Final metrics of a trial run. Step curves: "train_loss" and "val_quality" logged with step=training step.
FINAL_METRICS = (
    "test_quality",
    "val_quality",
    "n_test",
    "cost_usd",
    "device_hours",
    "wall_seconds",
    "tokens_per_second",
    "peak_memory_mb",
    "weights_mb",
    "trainable_params",
    "total_params",
    "adapter_mb",
    "steps_done",
)

# Artifacts of a trial run.
ARTIFACT_METRICS = "metrics.json"
# One JSON object per test example: expected, predicted, score.
ARTIFACT_PREDICTIONS = "test_predictions.jsonl"
ARTIFACT_ADAPTER_DIR = "adapter"

# Parent (sweep) run.
SWEEP_PARAMS = ("budget_usd", "price_per_hour", "max_trials", "concurrency", "space", "config")
SWEEP_METRICS = ("spent_usd", "trials_done", "trials_pruned", "trials_failed")
