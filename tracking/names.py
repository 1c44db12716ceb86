"""The MLflow layout every package agrees on: tag, param and metric names.

One experiment per sweep name; one parent run per sweep (role "sweep"); one child run per trial
(role "trial", or "baseline" for the base model evaluated with method "none").
"""

from __future__ import annotations

TAG_SWEEP = "sweepboard.sweep"  # sweep name (also the experiment name)
TAG_SWEEP_ID = "sweepboard.sweep_id"  # the sweep's own id (sweepboard.json): a reused name never mixes sweeps
TAG_ROLE = "sweepboard.role"  # "sweep" | "trial" | "baseline"
TAG_TRIAL_ID = "sweepboard.trial_id"  # Ray Tune trial id, stable across resume
TAG_METHOD = "sweepboard.method"  # "none" | "lora" | "qlora" | "full"
TAG_STATUS = "sweepboard.status"  # see STATUSES
TAG_TEST_SHA = "sweepboard.test_set_sha256"
TAG_METRIC = "sweepboard.metric"  # "exact_match" | "token_f1" | "accuracy"
TAG_GIT_COMMIT = "sweepboard.git_commit"
TAG_ERROR = "sweepboard.error"  # reason of a failed trial
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
# MLflow 3's UI opens an experiment without this tag on its GenAI overview; this value opens the runs table
# ("Machine learning" in the UI's experiment-type selector).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A view of the runs table kept on the experiment (MLflow's shared views: a tag read by ?viewStateShareKey=):
# the trial and baseline runs with their quality, cost, method and datasets as columns.
SHARED_VIEW_KEY = "sweepboard"
TAG_SHARED_VIEW = f"mlflow.sharedViewState.{SHARED_VIEW_KEY}"
# The context of a dataset input (MLflow's own key): which split of the data a run used it as.
TAG_DATASET_CONTEXT = "mlflow.data.context"

# How a trial or a sweep ended. "stopped": a trial the budget told to stop training, evaluated on the test
# set (it has a test score); "interrupted": left before its final evaluation (Ctrl-C, a lost driver), its run
# KILLED until a resume finishes it; a sweep ends "finished", "interrupted" (Ctrl-C) or "failed" (a crash).
STATUSES = ("running", "finished", "pruned", "stopped", "interrupted", "failed")

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
    "n_train",
    "n_val",
    "truncated_train",
    "truncated_val",
    "truncated_test",
)

# Artifacts of a trial run.
ARTIFACT_METRICS = "metrics.json"
# One JSON object per test example: expected, predicted, score.
ARTIFACT_PREDICTIONS = "test_predictions.jsonl"
ARTIFACT_ADAPTER_DIR = "adapter"

# The Model Registry (tracking/registry.py): one registered model per sweep by default, one version per export,
# the alias on the version that `models:/NAME@champion` loads. Tags of a version, beside the test-set hash
# (TAG_TEST_SHA): what was exported, from which base, and how the run scored and what it cost.
ALIAS_CHAMPION = "champion"
TAG_EXPORT_KIND = "sweepboard.export_kind"  # "model" (full or merged) | "adapter" (PEFT)
TAG_BASE_MODEL = "sweepboard.base_model"  # an adapter's base model: a local folder or a hub id
TAG_TEST_QUALITY = "sweepboard.test_quality"
TAG_COST = "sweepboard.cost_usd"
