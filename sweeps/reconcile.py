"""The one writer of a trial's MLflow run: what Ray says the trial is, reconciled into its run, idempotently.

The live Tune callback (sweeps/mlflow_callback.py) and `sweepboard sync` (sweeps/sync.py) both build a
TrialRecord from Ray (a Trial object, or Ray's storage read back) and hand it to `reconcile`, which writes
only what the run lacks: params, tags, curve points at steps it has no point at, final metrics whose latest
value differs, dataset inputs, artifacts, the end status. A run that holds everything is not touched.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from tracking import mlflow_store as store
from tracking import record as run_record
from tracking.names import (
    ARTIFACT_METRICS,
    FINAL_METRICS,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TEST_SHA,
)

# Step curves taken from each intermediate result (logged at result["step"]).
CURVE_METRICS = ("train_loss", "val_quality", "val_loss", "tokens_trained", "cost_usd")
FINAL_PHASE = "final"  # result["phase"] of the one result a trial reports after its test evaluation
# The searched settings, at the top of a Tune config (sweeps/trainable.py merges them over the fixed ones).
SEARCHED = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
NOT_PARAMS = ("out", "cache_dir")  # where a trial writes, not what shaped it
ADAPTER_ONLY = ("rank", "alpha", "target_modules", "lora_dropout")
TRAINING_ONLY = ("learning_rate", "steps", "epochs", "batch_size", "grad_accum", "warmup_steps", "weight_decay",
                 "eval_every", "seed")  # fmt: skip


class Outcome(NamedTuple):
    """How a trial ended, as its MLflow run records it."""

    status: str  # finished | stopped | pruned | failed | interrupted (tracking/names.py STATUSES)
    final: dict[str, Any]  # final metrics
    error: str | None
    artifacts: bool  # its last checkpoint holds metrics.json, test_predictions.jsonl, adapter/


def completed(result: Mapping[str, Any]) -> Outcome:
    """A trial Tune completed: with its final report (finished, or stopped early by the budget and still
    evaluated), or ended before it by a scheduler (ASHA) or a stopper."""
    if result.get("phase") == "failed":
        # Its failure report arrived, then a stopper ended the sweep before Tune recorded the error.
        return failed(result, str(result.get("error") or "trial failed"))
    if result.get("phase") != FINAL_PHASE:
        return Outcome("pruned", spent(result), None, False)
    error = result.get("error") if isinstance(result.get("error"), str) and result.get("error") else None
    return Outcome(str(result.get("status") or "finished"), dict(result), error, True)


def failed(result: Mapping[str, Any], error: str) -> Outcome:
    return Outcome("failed", spent(result), error, False)


def interrupted(result: Mapping[str, Any]) -> Outcome:
    """Left before its final evaluation (Ctrl-C, a lost driver): run KILLED until a resume finishes it."""
    return Outcome("interrupted", spent(result), None, False)


def spent(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial that ended without its final report cost, from its last report."""
    unmeasured = ("test_quality", "n_test")  # only the final report has a test evaluation
    return {key: result[key] for key in FINAL_METRICS if key in result and key not in unmeasured}


@dataclass
class TrialRecord:
    """What Ray says one trial (or the baseline) should look like in MLflow."""

    trial_id: str
    run_name: str
    role: str  # trial | baseline
    params: dict[str, Any]
    tags: dict[str, str]
    outcome: Outcome | None = None  # None while it runs
    curves: tuple[tuple[str, float, int], ...] = ()  # (key, value, step); the callback logs them as they come
    folder: Path | None = None  # the final files, to log as artifacts

    def cost(self) -> float:
        """What the trial cost: its final cost, else the last one it reported (as the sweep sums it)."""
        if self.outcome and _is_number(self.outcome.final.get("cost_usd")):
            return float(self.outcome.final["cost_usd"])
        costs = [(step, value) for key, value, step in self.curves if key == "cost_usd"]
        return max(costs)[1] if costs else 0.0


def identity(trial_id: str, config: Mapping[str, Any], sweep: str, sweep_id: str,
             git: str | None) -> TrialRecord:  # fmt: skip
    """A trial's record before it ends: its run's name, role, params and tags, from its Tune config."""
    method = str(config.get("method") or (config.get("sweepboard_trial") or {}).get("method") or "unknown")
    tags = {TAG_SWEEP: sweep, TAG_SWEEP_ID: sweep_id, TAG_METHOD: method, **({TAG_GIT_COMMIT: git} if git else {})}
    return TrialRecord(trial_id, run_name(config, trial_id), "baseline" if method == "none" else "trial",
                       trial_params(config), tags)  # fmt: skip


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that shaped the trial: the fixed ones (config["sweepboard_trial"], defaults filled in)
    with the searched ones over them, nested data settings as data.*; not where it writes, not settings its
    method does not use, and None for none. Settings resolved only when it runs (precision auto, steps from
    epochs) come from its metrics.json at the end (resolved_params)."""
    from trainers.config import ConfigError, TrialConfig, from_dict, to_dict

    base = dict(config.get("sweepboard_trial") or {})
    searched = {key: config[key] for key in SEARCHED if config.get(key) is not None}
    if searched.get("method") == "full":
        searched.update(rank=None, alpha=None)
    given = run_record.flatten({**base, **searched})
    try:
        flat = run_record.flatten(to_dict(from_dict({**base, **searched})))  # the defaults shaped it too
    except ConfigError:  # the trial fails on it and says why; log what it was given over the defaults
        flat = {**run_record.flatten(to_dict(TrialConfig())), **given}
    method = flat.get("method")
    drop = set(NOT_PARAMS) | (set() if method in ("lora", "qlora") else set(ADAPTER_ONLY))
    drop |= set(TRAINING_ONLY) if method == "none" else set()
    if flat.get("precision") == "auto":
        drop.add("precision")
    if flat.get("gradient_checkpointing") == "auto":
        drop.add("gradient_checkpointing")  # logged as what auto resolved to, from the final metrics
    if flat.get("epochs") is not None:
        drop.add("steps")
    return {key: value for key, value in flat.items() if key not in drop and value is not None}


def resolved_params(params: Mapping[str, Any], final: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a trial resolved as it ran, from its final metrics: the precision it trained in, the
    dtypes its weights were held and computed in, whether it checkpointed activations, and the steps its
    epochs came to (the config said "auto" / gave epochs)."""
    method = params.get("method")
    keys = ["precision", "weight_dtype", "compute_dtype", "attn_implementation"]
    if method not in ("none", None):
        keys += ["steps", "gradient_checkpointing"]
    return {key: final[key] for key in keys if key not in params and final.get(key) not in (None, "")}


def run_name(config: Mapping[str, Any], trial_id: str) -> str:
    """A name to tell runs apart in the MLflow UI; the trial id keeps it unique."""
    method = str(config.get("method", "trial"))
    if method == "none":
        return f"baseline-{trial_id}"
    if config.get("rank") is not None:
        return f"{method}-r{config['rank']}-{trial_id}"
    if config.get("learning_rate") is not None:
        return f"{method}-lr{float(config['learning_rate']):.0e}-{trial_id}"
    return f"{method}-{trial_id}"


def error_text(trial: Any, folder: Path | None = None) -> str:
    """Why a trial failed: the driver's copy of Ray's error.txt, else the copy in Ray's storage."""
    path = trial.error_file
    if path and Path(path).is_file():
        return _plain(Path(path).read_text(encoding="utf-8", errors="replace").strip())
    error = trial.get_error()
    if error:
        return _plain(str(error).strip())
    if folder is not None and (folder / "error.txt").is_file():
        return _plain((folder / "error.txt").read_text(errors="replace").strip())
    return "trial failed without an error message"


def reconcile(client: MlflowClient, experiment_id: str, parent_id: str, record: TrialRecord,
              sweep_id: str) -> str:  # fmt: skip
    """Write what the record's run lacks: 'created', 'updated' or 'unchanged' (nothing written)."""
    run_id = store.find_trial_run(client, experiment_id, record.trial_id, sweep_id)
    created = run_id is None
    if run_id is None:
        run_id = store.get_or_create_trial_run(client, experiment_id, parent_id, record.trial_id, sweep_id,
                                               record.run_name, record.role, record.params, record.tags)
    run = store.get_run(client, run_id)
    outcome = record.outcome
    final = outcome.final if outcome else {}
    wanted = {**record.params, **resolved_params(record.params, final)}
    params = {k: v for k, v in wanted.items() if k not in run.data.params and run_record.param_value(v)}
    tags = {k: v for k, v in final_tags(record).items() if run.data.tags.get(k) != v}
    changed = False
    if params or tags:
        store.log_params_and_tags(client, run_id, params, tags)
        changed = True
    if outcome and not outcome.error and TAG_ERROR in run.data.tags:
        client.delete_tag(run_id, TAG_ERROR)  # an earlier attempt's error; the trial recovered
        changed = True
    points = _missing_points(client, run, record.curves)
    if points:
        store.log_metric_points(client, run_id, points)
        run, changed = store.get_run(client, run_id), True  # the latest values may have moved
    logged = run.data.metrics
    finals = {key: final[key] for key in FINAL_METRICS
              if _is_number(final.get(key)) and not same(logged.get(key), final[key])}
    if finals:
        step = store.final_step(client, run_id, finals, final.get("steps_done"))
        store.log_step_metrics(client, run_id, finals, step)
        changed = True
    inputs = run_record.missing_inputs(run, run_record.dataset_inputs(wanted, final))
    if inputs:
        run_record.log_inputs(client, run_id, inputs)
        changed = True
    if record.folder is not None:
        have = store.artifact_names(client, run_id)
        if set(store.trial_artifacts(record.folder)) - have:
            store.log_trial_artifacts(client, run_id, record.folder, skip=have)
            changed = True
    if outcome is not None:
        end = store.mlflow_status(outcome.status)
        if run.info.status != end:
            store.end_run(client, run_id, end)
            changed = True
    return "created" if created else "updated" if changed else "unchanged"


def final_tags(record: TrialRecord) -> dict[str, str]:
    """The tags a run holds: its identity, and once it ended its status, test set, metric and error."""
    outcome = record.outcome
    if outcome is None:
        return dict(record.tags)
    tags = {**record.tags, TAG_STATUS: outcome.status}
    for key, tag in (("test_set_sha256", TAG_TEST_SHA), ("metric", TAG_METRIC), ("method", TAG_METHOD)):
        if outcome.final.get(key):
            tags[tag] = str(outcome.final[key])
    if outcome.error:
        tags[TAG_ERROR] = outcome.error[-MAX_TAG_VAL_LENGTH:]  # the end of a traceback names the cause
    return tags


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result a trial reported (Ray's result.json: one JSON object a line); a torn last line is
    skipped (a driver killed while writing)."""
    if not path.is_file():
        return []
    results = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return results


def curve_points(history: list[dict[str, Any]]) -> tuple[tuple[str, float, int], ...]:
    """One (key, value, step) per curve and step: the last value reported at that step (a resumed trial
    reports some steps again; the final report repeats the last step with the final values)."""
    last: dict[tuple[str, int], float] = {}
    for result in history:
        if not _is_number(result.get("step")):
            continue
        for key in CURVE_METRICS:
            if _is_number(result.get(key)):
                last[(key, int(result["step"]))] = float(result[key])
    return tuple((key, value, step) for (key, step), value in last.items())


def final_folder(trial_dir: Path, last: Mapping[str, Any]) -> Path | None:
    """The trial's final files: its last checkpoint, else its own output folder (trainable.py's work/)."""
    candidates = [trial_dir / str(last["checkpoint_dir_name"])] if last.get("checkpoint_dir_name") else []
    for folder in [*candidates, trial_dir / "work"]:
        if (folder / ARTIFACT_METRICS).is_file():
            return folder
    return None


def _missing_points(client: MlflowClient, run: Run,
                    curves: tuple[tuple[str, float, int], ...]) -> list[tuple[str, float, int]]:  # fmt: skip
    logged: dict[str, set[int]] = {}
    for key in {key for key, _, _ in curves}:
        logged[key] = store.metric_steps(client, run.info.run_id, key) if key in run.data.metrics else set()
    return [(key, value, step) for key, value, step in curves if step not in logged[key]]


def _plain(text: str) -> str:
    """Ray colours its error.txt for terminals; an MLflow tag is read in a browser."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def same(logged: Any, value: Any) -> bool:
    return _is_number(logged) and math.isclose(float(logged), float(value), rel_tol=1e-9, abs_tol=1e-12)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
