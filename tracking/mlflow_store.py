"""Write sweeps and trials to MLflow in the layout of tracking/names.py, idempotently and with retries.

Every write goes through here, from one process (the Ray driver): many writers on one SQLite file
end in "database is locked". Runs are found again by their tags, never by an in-memory map, so a
resumed sweep writes into the runs it already has instead of opening new ones. No ray import.

Each write goes through tracking/mlflow_conn.py's retry: a server that is gone fails fast with
TrackingUnavailable. A sweep's results then stay in Ray's storage, and `sweepboard sync NAME` copies them
in later (sweeps/sync.py), through the read helpers at the bottom.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from tracking.mlflow_conn import retry
from tracking.names import (
    ARTIFACT_ADAPTER_DIR,
    ARTIFACT_METRICS,
    ARTIFACT_PREDICTIONS,
    EXPERIMENT_KIND,
    SHARED_VIEW_KEY,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SHARED_VIEW,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TRIAL_ID,
)
from tracking.record import param_value

log = logging.getLogger(__name__)

# The runs table as the shared view shows it (MLflow's column keys, type.`name`): trial and baseline runs, the
# best on validation first.
RUNS_VIEW = {
    # Only child runs have a trial id; the UI applies a shared view's filter when it also names a sort key.
    "searchFilter": f"tags.`{TAG_TRIAL_ID}` LIKE '%'",
    "orderByKey": "metrics.`val_quality`",
    "orderByAsc": False,
    "selectedColumns": ["attributes.`Dataset`", "metrics.`test_quality`", "metrics.`val_quality`",
                        "metrics.`cost_usd`", "params.`method`", "params.`rank`", "params.`learning_rate`",
                        "params.`target_modules`", f"tags.`{TAG_STATUS}`"],
}

# Statuses that end a run (tracking/names.py STATUSES), and the MLflow run status each one maps to.
_TERMINAL = {"finished": "FINISHED", "pruned": "FINISHED", "stopped": "FINISHED", "failed": "FAILED",
             "interrupted": "KILLED"}


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment called `name` (the sweep name), created if missing, of the kind that MLflow's
    UI opens on its runs table and with the runs view of ui_path (an experiment made before sweeps set these
    gets them too)."""
    tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND, TAG_SHARED_VIEW: json.dumps(RUNS_VIEW)}

    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, tags=tags)
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} at {client.tracking_uri} is deleted; restore it "
                             f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                             "or choose another sweep name")
        for key, value in tags.items():
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return str(experiment.experiment_id)

    return retry(get_or_create, f"experiment {name!r}", client)


def ui_path(experiment_id: str) -> str:
    """Where MLflow's UI shows a sweep's runs table with quality and cost (append it to the UI's address).

    MLflow 3.17's UI opens the GenAI view unless told otherwise (workflowType), and shows no metric columns
    by default: the experiment's shared view (RUNS_VIEW) names them."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SHARED_VIEW_KEY}"


def start_sweep_run(client: MlflowClient, sweep: str, sweep_id: str, params: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> str:
    """The parent run of the sweep with id `sweep_id`: its existing one (resume, reopened) or a new one; never
    a second one, and never the parent of an earlier sweep that had the same name."""
    experiment_id = ensure_experiment(client, sweep)

    def get_or_create() -> str:
        found = _search(client, experiment_id, _sweep_filter(sweep_id))
        if found:
            run_id = found.info.run_id
            _reopen(client, found)
        else:
            tags = {TAG_SWEEP: sweep, TAG_SWEEP_ID: sweep_id, TAG_ROLE: "sweep", TAG_STATUS: "running"}
            run_id = client.create_run(experiment_id, run_name=f"{sweep}-sweep", tags=tags).info.run_id
        return run_id

    run_id = retry(get_or_create, f"parent run of sweep {sweep!r}", client)
    log_params_and_tags(client, run_id, params, {**(tags or {}), TAG_SWEEP: sweep, TAG_STATUS: "running"})
    return run_id


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str, sweep_id: str) -> str | None:
    """The run of a Ray Tune trial (by tags sweepboard.trial_id and sweepboard.sweep_id), or None."""
    found = retry(lambda: _search(client, experiment_id, _trial_filter(trial_id, sweep_id)),
                  f"search for trial {trial_id}", client)
    return found.info.run_id if found else None


def get_or_create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str,
                            sweep_id: str, run_name: str, role: str, params: Mapping[str, Any],
                            tags: Mapping[str, str] | None = None) -> str:
    """The run of `trial_id` of sweep `sweep_id` under the parent run: found by tags and reopened, or created."""
    if role not in ("trial", "baseline"):
        raise ValueError(f"role: {role!r}: a trial run has role 'trial' or 'baseline'")
    filter_string = _trial_filter(trial_id, sweep_id)

    # Search and create as one retried unit: a create whose answer was lost is found by the next search.
    def get_or_create() -> str:
        found = _search(client, experiment_id, filter_string)
        if found:
            _reopen(client, found)
            return found.info.run_id
        return client.create_run(experiment_id, run_name=run_name, tags={
            TAG_PARENT: parent_run_id, TAG_ROLE: role, TAG_TRIAL_ID: trial_id, TAG_SWEEP_ID: sweep_id,
            TAG_STATUS: "running",
        }).info.run_id

    run_id = retry(get_or_create, f"run of trial {trial_id}", client)
    log_params_and_tags(client, run_id, params, {**(tags or {}), TAG_ROLE: role, TAG_STATUS: "running"})
    return run_id


def log_step_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """Log the numeric, finite values of `metrics` at `step`; anything else is left out."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items() if _is_number(value)]
    if batch:
        retry(lambda: client.log_batch(run_id, metrics=batch), f"metrics of run {run_id}", client)


def finish_sweep_run(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                     artifacts: Iterable[str | Path] = (), status: str = "finished") -> None:
    """Log the sweep's totals and artifacts (files or folders) on the parent run and end it: FINISHED when
    the sweep finished, KILLED when it was interrupted (Ctrl-C), FAILED when it crashed."""
    if status not in ("finished", "interrupted", "failed"):
        raise ValueError(f"status: {status!r}: a sweep ends as finished, interrupted or failed")
    log_step_metrics(client, run_id, metrics, 0)
    for artifact in map(Path, artifacts):
        if artifact.is_dir():
            retry(partial(client.log_artifacts, run_id, str(artifact), artifact.name), f"artifact {artifact}",
                  client)
        elif artifact.is_file():
            retry(partial(client.log_artifact, run_id, str(artifact)), f"artifact {artifact}", client)
        else:
            raise FileNotFoundError(f"sweep artifact {artifact} does not exist")
    log_params_and_tags(client, run_id, {}, {TAG_STATUS: status})
    end_run(client, run_id, _TERMINAL[status])


# Read helpers and single writes for `sweepboard sync`, which compares what a run holds with Ray's record
# of the trial and writes only what is missing.

def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of sweep `sweep_id` in `experiment_id`, or None."""
    return retry(lambda: _search(client, experiment_id, _sweep_filter(sweep_id)), "parent run", client)


def get_run(client: MlflowClient, run_id: str) -> Run:
    return retry(lambda: client.get_run(run_id), f"run {run_id}", client)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which `key` has a point in the run."""
    history = retry(partial(client.get_metric_history, run_id, key), f"history of {key}", client)
    return {int(m.step) for m in history}


def log_metric_points(client: MlflowClient, run_id: str, points: Iterable[tuple[str, float, int]]) -> None:
    """Log (key, value, step) points, finite numbers only, in batches MLflow accepts."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, int(step)) for key, value, step in points if _is_number(value)]
    for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
        chunk = batch[start:start + MAX_METRICS_PER_BATCH]
        retry(partial(client.log_batch, run_id, metrics=chunk), f"metrics of run {run_id}", client)


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    """The top-level artifact names of a run (files and folders)."""
    listed = retry(lambda: client.list_artifacts(run_id), f"artifacts of run {run_id}", client)
    return {Path(info.path).name for info in listed}


def mlflow_status(status: str) -> str:
    """The MLflow run status that a trial's final sweepboard status ends its run with."""
    if status not in _TERMINAL:
        raise ValueError(f"status: {status!r}: a finished trial is one of {', '.join(_TERMINAL)}")
    return _TERMINAL[status]


def end_run(client: MlflowClient, run_id: str, run_status: str) -> None:
    """End a run with an MLflow status (FINISHED, FAILED, KILLED)."""
    retry(lambda: client.set_terminated(run_id, run_status), f"end of run {run_id}", client)


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> Run | None:
    # Oldest first: if a race ever made two runs, everyone keeps writing to the same (first) one.
    runs = client.search_runs([experiment_id], filter_string, max_results=2,
                              order_by=["attributes.start_time ASC"])
    if len(runs) > 1:
        log.warning("MLflow: more than one run matches %s in experiment %s; using %s",
                    filter_string, experiment_id, runs[0].info.run_id)
    return runs[0] if runs else None


def _reopen(client: MlflowClient, run: Run) -> None:
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")
    if TAG_ERROR in run.data.tags:
        client.delete_tag(run.info.run_id, TAG_ERROR)  # the error of an earlier attempt no longer holds


def log_params_and_tags(client: MlflowClient, run_id: str, params: Mapping[str, Any],
                        tags: Mapping[str, str]) -> None:
    """Params are write-once in MLflow: on resume only new ones are logged, changed ones are warned about."""
    existing = retry(lambda: client.get_run(run_id), f"run {run_id}", client).data.params if params else {}
    new: list[Param] = []
    for key, raw in params.items():
        value = param_value(raw)
        if value is None:
            continue
        if key not in existing:
            new.append(Param(key, value))
        elif existing[key] != value:
            log.warning("MLflow run %s: param %s stays %r (params cannot change); new value %r not logged",
                        run_id, key, existing[key], value)
    run_tags = [RunTag(key, str(value)[:MAX_TAG_VAL_LENGTH]) for key, value in tags.items()]
    for start in range(0, max(len(new), len(run_tags)), MAX_PARAMS_TAGS_PER_BATCH):
        chunk_p = new[start:start + MAX_PARAMS_TAGS_PER_BATCH]
        chunk_t = run_tags[start:start + MAX_PARAMS_TAGS_PER_BATCH]
        retry(partial(client.log_batch, run_id, params=chunk_p, tags=chunk_t), f"params of run {run_id}",
              client)


def final_step(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], steps_done: Any) -> int:
    """Where final metrics go: MLflow shows a metric's value at its highest step, so at or after the last
    point of any curve of the same name."""
    logged = retry(lambda: client.get_run(run_id), f"run {run_id}", client).data.metrics
    step = int(steps_done) if _is_number(steps_done) else 0
    for key in metrics:
        if key in logged:
            history = retry(partial(client.get_metric_history, run_id, key), f"history of {key}", client)
            step = max([step, *(m.step for m in history)])
    return step


def trial_artifacts(folder: Path) -> list[str]:
    """The artifacts of a trial that `folder` (its final checkpoint or output folder) holds."""
    found = [name for name in (ARTIFACT_METRICS, ARTIFACT_PREDICTIONS) if (folder / name).is_file()]
    return found + ([ARTIFACT_ADAPTER_DIR] if (folder / ARTIFACT_ADAPTER_DIR).is_dir() else [])


def log_trial_artifacts(client: MlflowClient, run_id: str, folder: Path, skip: Iterable[str] = ()) -> None:
    """Log what trial_artifacts(folder) finds, except the names in `skip` (already logged)."""
    names = [name for name in trial_artifacts(folder) if name not in set(skip)]
    for name in names:
        if name != ARTIFACT_ADAPTER_DIR:
            retry(partial(client.log_artifact, run_id, str(folder / name)), f"artifact {name}", client)
    if ARTIFACT_ADAPTER_DIR in names:
        retry(lambda: client.log_artifacts(run_id, str(folder / ARTIFACT_ADAPTER_DIR), ARTIFACT_ADAPTER_DIR),
              f"artifact {ARTIFACT_ADAPTER_DIR}/", client)


def _is_number(value: Any) -> bool:
    # numbers.Real takes numpy scalars too; a bool is an int to Python but no metric.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _sweep_filter(sweep_id: str) -> str:
    return f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_ID}` = '{_quote(sweep_id)}'"


def _trial_filter(trial_id: str, sweep_id: str) -> str:
    return f"tags.`{TAG_TRIAL_ID}` = '{_quote(trial_id)}' and tags.`{TAG_SWEEP_ID}` = '{_quote(sweep_id)}'"


def _quote(value: str) -> str:
    return value.replace("'", "\\'")

