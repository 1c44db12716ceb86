"""Write sweeps and trials to MLflow in the layout of tracking/names.py, idempotently and with retries.

Every write goes through here, from one process (the Ray driver): many writers on one SQLite file
end in "database is locked". Runs are found again by their tags, never by an in-memory map, so a
resumed sweep writes into the runs it already has instead of opening new ones. No ray import.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from tracking.names import (
    ARTIFACT_ADAPTER_DIR,
    ARTIFACT_METRICS,
    ARTIFACT_PREDICTIONS,
    FINAL_METRICS,
    TAG_ERROR,
    TAG_METHOD,
    TAG_METRIC,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Pauses between attempts. SQLite already waits 20 s (MLflow's busy_timeout) before "database is locked",
# and MLflow's HTTP client retries connections itself, so a few extra attempts are enough.
RETRY_DELAYS = (1.0, 2.0, 4.0)
_TRANSIENT = ("database is locked", "database table is locked", "connection refused", "connectionerror",
              "max retries exceeded", "timed out", "timeout exception", "temporarily unavailable",
              "error code 502", "error code 503", "error code 504")
# Statuses that end a run, and the MLflow run status each one maps to.
_TERMINAL = {"finished": "FINISHED", "pruned": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}


def tracking_uri(explicit: str | None = None) -> str:
    """The URI to log to: `explicit`, else MLFLOW_TRACKING_URI, else ./mlflow.db as an absolute path.

    Relative SQLite paths are made absolute so that the driver and every Ray worker mean the same file.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] != ":memory:":
        uri = prefix + str(Path.cwd() / uri[len(prefix):])
    return uri


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Raise ValueError naming `uri` and the fix when nothing could be logged there."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # it answered: a server is there (a proxy may not serve /health)
        except (urllib.error.URLError, OSError) as exc:
            raise ValueError(
                f"tracking URI {uri}: no MLflow server answers ({getattr(exc, 'reason', exc)}); start one "
                "(mlflow server --host 127.0.0.1 --port 5000) or set --tracking-uri / MLFLOW_TRACKING_URI"
            ) from exc
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])  # the database file
    elif uri.startswith("file://") or "://" not in uri:
        path = Path(uri.removeprefix("file://"))  # a folder store
    else:
        return  # another database or a hosted service: MLflow reports its own errors
    fix = "or point --tracking-uri / MLFLOW_TRACKING_URI elsewhere"
    # MLflow creates the file (or folder) itself, but not the folder it lies in.
    if not path.parent.is_dir():
        raise ValueError(f"tracking URI {uri}: folder {path.parent} does not exist; create it {fix}")
    writable = path if path.exists() else path.parent
    if not os.access(writable, os.W_OK):
        raise ValueError(f"tracking URI {uri}: {writable} is not writable; fix its permissions {fix}")


def retry(call: Callable[[], T], what: str) -> T:
    """`call()`, again after a pause when it fails with a transient store or network error."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except (MlflowException, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}".lower()
            if delay is None or not any(marker in text for marker in _TRANSIENT):
                raise
            log.warning("MLflow: %s failed (%s); retrying in %.1f s", what, str(exc).splitlines()[0], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment called `name` (the sweep name), created if missing."""

    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} at {client.tracking_uri} is deleted; restore it "
                             f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                             "or choose another sweep name")
        return str(experiment.experiment_id)

    return retry(get_or_create, f"experiment {name!r}")


def start_sweep_run(client: MlflowClient, sweep: str, params: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> str:
    """The parent run of `sweep`: the existing one (resume, reopened) or a new one; never a second one."""
    experiment_id = ensure_experiment(client, sweep)

    def get_or_create() -> str:
        found = _search(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep'")
        if found:
            run_id = found.info.run_id
            _reopen(client, found)
        else:
            tags = {TAG_SWEEP: sweep, TAG_ROLE: "sweep", TAG_STATUS: "running"}
            run_id = client.create_run(experiment_id, run_name=f"{sweep}-sweep", tags=tags).info.run_id
        return run_id

    run_id = retry(get_or_create, f"parent run of sweep {sweep!r}")
    _log_params_and_tags(client, run_id, params, {**(tags or {}), TAG_SWEEP: sweep, TAG_STATUS: "running"})
    return run_id


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str) -> str | None:
    """The run of a Ray Tune trial (by tag sweepboard.trial_id), or None."""
    found = retry(lambda: _search(client, experiment_id, f"tags.`{TAG_TRIAL_ID}` = '{_quote(trial_id)}'"),
                  f"search for trial {trial_id}")
    return found.info.run_id if found else None


def get_or_create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str,
                            run_name: str, role: str, params: Mapping[str, Any],
                            tags: Mapping[str, str] | None = None) -> str:
    """The run of `trial_id` under the parent run: found by tag and reopened, or created."""
    if role not in ("trial", "baseline"):
        raise ValueError(f"role: {role!r}: a trial run has role 'trial' or 'baseline'")
    filter_string = f"tags.`{TAG_TRIAL_ID}` = '{_quote(trial_id)}'"

    # Search and create as one retried unit: a create whose answer was lost is found by the next search.
    def get_or_create() -> str:
        found = _search(client, experiment_id, filter_string)
        if found:
            _reopen(client, found)
            return found.info.run_id
        return client.create_run(experiment_id, run_name=run_name, tags={
            TAG_PARENT: parent_run_id, TAG_ROLE: role, TAG_TRIAL_ID: trial_id, TAG_STATUS: "running",
        }).info.run_id

    run_id = retry(get_or_create, f"run of trial {trial_id}")
    _log_params_and_tags(client, run_id, params, {**(tags or {}), TAG_ROLE: role, TAG_STATUS: "running"})
    return run_id


def log_step_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """Log the numeric, finite values of `metrics` at `step`; anything else is left out."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items() if _is_number(value)]
    if batch:
        retry(lambda: client.log_batch(run_id, metrics=batch), f"metrics of run {run_id}")


def finish_trial_run(client: MlflowClient, run_id: str, final: Mapping[str, Any], status: str,
                     artifacts_dir: str | None = None, error: str | None = None) -> None:
    """Log a trial's final metrics, status tags and artifacts, then end its run (FAILED if it failed)."""
    if status not in _TERMINAL:
        raise ValueError(f"status: {status!r}: a finished trial is one of {', '.join(_TERMINAL)}")
    metrics = {key: final[key] for key in FINAL_METRICS if key in final}
    # MLflow shows a metric's value at its highest step, so finals go at or after the last curve point.
    log_step_metrics(client, run_id, metrics, _last_step(client, run_id, metrics, final.get("steps_done")))
    tags = {TAG_STATUS: status}
    for key, tag in (("test_set_sha256", TAG_TEST_SHA), ("metric", TAG_METRIC), ("method", TAG_METHOD)):
        if final.get(key):
            tags[tag] = str(final[key])
    if error:
        tags[TAG_ERROR] = error[-MAX_TAG_VAL_LENGTH:]  # the end of a traceback names the cause
    _log_params_and_tags(client, run_id, {}, tags)
    if artifacts_dir:
        _log_trial_artifacts(client, run_id, Path(artifacts_dir))
    retry(lambda: client.set_terminated(run_id, _TERMINAL[status]), f"end of run {run_id}")


def interrupt_trial_run(client: MlflowClient, run_id: str) -> None:
    """End the run of a trial the sweep left unfinished (interrupted); a resume reopens it."""
    _log_params_and_tags(client, run_id, {}, {TAG_STATUS: "stopped"})
    retry(lambda: client.set_terminated(run_id, "KILLED"), f"end of run {run_id}")


def finish_sweep_run(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                     artifacts: Iterable[str | Path] = (), status: str = "finished") -> None:
    """Log the sweep's totals and artifacts (files or folders) on the parent run and end it."""
    if status not in _TERMINAL:
        raise ValueError(f"status: {status!r}: a sweep ends as one of {', '.join(_TERMINAL)}")
    log_step_metrics(client, run_id, metrics, 0)
    for artifact in map(Path, artifacts):
        if artifact.is_dir():
            retry(partial(client.log_artifacts, run_id, str(artifact), artifact.name), f"artifact {artifact}")
        elif artifact.is_file():
            retry(partial(client.log_artifact, run_id, str(artifact)), f"artifact {artifact}")
        else:
            raise FileNotFoundError(f"sweep artifact {artifact} does not exist")
    _log_params_and_tags(client, run_id, {}, {TAG_STATUS: status})
    retry(lambda: client.set_terminated(run_id, _TERMINAL[status]), f"end of run {run_id}")


def param_value(value: Any) -> str | None:
    """How a config value reads as an MLflow param; None for a value that is not set."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)  # target_modules read back as "q_proj,k_proj,..."
    return str(value)[:MAX_PARAM_VAL_LENGTH]


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


def _log_params_and_tags(client: MlflowClient, run_id: str, params: Mapping[str, Any],
                         tags: Mapping[str, str]) -> None:
    """Params are write-once in MLflow: on resume only new ones are logged, changed ones are warned about."""
    existing = retry(lambda: client.get_run(run_id), f"run {run_id}").data.params if params else {}
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
        retry(partial(client.log_batch, run_id, params=chunk_p, tags=chunk_t), f"params of run {run_id}")


def _last_step(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], steps_done: Any) -> int:
    logged = retry(lambda: client.get_run(run_id), f"run {run_id}").data.metrics
    step = int(steps_done) if _is_number(steps_done) else 0
    for key in metrics:
        if key in logged:
            history = retry(partial(client.get_metric_history, run_id, key), f"history of {key}")
            step = max([step, *(m.step for m in history)])
    return step


def _log_trial_artifacts(client: MlflowClient, run_id: str, folder: Path) -> None:
    for name in (ARTIFACT_METRICS, ARTIFACT_PREDICTIONS):
        if (folder / name).is_file():
            retry(partial(client.log_artifact, run_id, str(folder / name)), f"artifact {name}")
    if (folder / ARTIFACT_ADAPTER_DIR).is_dir():
        retry(lambda: client.log_artifacts(run_id, str(folder / ARTIFACT_ADAPTER_DIR), ARTIFACT_ADAPTER_DIR),
              f"artifact {ARTIFACT_ADAPTER_DIR}/")


def _is_number(value: Any) -> bool:
    # numbers.Real takes numpy scalars too; a bool is an int to Python but no metric.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _quote(value: str) -> str:
    return value.replace("'", "\\'")

