"""Log every Ray Tune trial of a sweep to MLflow from the driver: one child run per trial, also across resume.

The driver is the only writer (trials never talk to MLflow), so a SQLite store is not hit by many
processes at once. Ray's MLflowLoggerCallback does not fit: it keeps its trial-to-run map in memory
only (a restored sweep opens new runs) and has no parent run. Here a run is found by its
sweepboard.trial_id tag; the in-memory map is only a cache.

What Ray 2.60 does on Tuner.restore (seen by hand, asserted in tests/sweeps/test_mlflow_callback.py):
the callback comes back unpickled from tuner.pkl as it was constructed (a new object, empty cache);
on_trial_start is called again for every resumed trial (on_trial_restore is not), with
trial.last_result and trial.checkpoint as last saved; results after the restored checkpoint are
reported again, so a curve may hold two points at one step. On Ctrl+C (SIGINT/SIGUSR1) Tune stops,
saves, and calls on_experiment_end with the interrupted trials TERMINATED, but no on_trial_complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial

from tracking import mlflow_store as store
from tracking.names import FINAL_METRICS, TAG_GIT_COMMIT, TAG_METHOD, TAG_SWEEP, TRIAL_PARAMS

# Step curves taken from each intermediate result (logged at result["step"]).
CURVE_METRICS = ("train_loss", "val_quality", "val_loss", "tokens_trained", "cost_usd")
FINAL_PHASE = "final"  # result["phase"] of the one result a trial reports after its test evaluation


class MLflowTrialLogger(Callback):
    """A Tune callback writing each trial into its own MLflow run under the sweep's parent run."""

    def __init__(self, tracking_uri: str, sweep_name: str, parent_run_id: str, git_commit: str | None = None,
                 extra_tags: Mapping[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        self.parent_run_id = parent_run_id
        self.git_commit = git_commit
        self.extra_tags = dict(extra_tags or {})
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id; a cache of the tag lookup
        self._ended: set[str] = set()  # trial ids whose run this process has ended

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the callback into tuner.pkl; a client and a cache must not travel with it.
        state = self.__dict__.copy()
        state.update(_client=None, _experiment_id=None, _runs={}, _ended=set())
        return state

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._connect()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended.discard(trial.trial_id)  # a trial restarted after an error or a resume runs again
        self._run_of(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if "step" not in result:
            return
        curves = {key: result[key] for key in CURVE_METRICS if key in result}
        store.log_step_metrics(self._connect(), self._run_of(trial), curves, int(result["step"]))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get("phase") != FINAL_PHASE:
            # Completed without its final report: a scheduler (ASHA) or a stopper ended it early.
            self._finish(trial, _spent(result), "pruned", None, None)
            return
        error = result.get("error") if isinstance(result.get("error"), str) else None
        status = str(result.get("status") or "finished")
        checkpoint = trial.checkpoint
        if checkpoint is None:
            self._finish(trial, result, status, None, error)
            return
        # as_directory: the folder itself on local storage, a download on cloud storage.
        with checkpoint.as_directory() as folder:
            self._finish(trial, result, status, folder, error)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, _spent(trial.last_result or {}), "failed", None, _error_text(trial))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Trials left running (Ctrl+C, a driver stopped early) end as "stopped"; a resume reopens them.
        for trial in trials:
            run_id = self._runs.get(trial.trial_id)
            if run_id is not None and trial.trial_id not in self._ended:
                store.interrupt_trial_run(self._connect(), run_id)
                self._ended.add(trial.trial_id)

    def _connect(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self._experiment_id = store.ensure_experiment(self._client, self.sweep_name)
        return self._client

    def _run_of(self, trial: Trial) -> str:
        """The run of `trial`: cached, else found by tag (resume), else created."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            return run_id
        client = self._connect()
        assert self._experiment_id is not None
        config = trial.config or {}
        method = str(config.get("method", "unknown"))
        tags = {**self.extra_tags, TAG_SWEEP: self.sweep_name, TAG_METHOD: method}
        if self.git_commit:
            tags[TAG_GIT_COMMIT] = self.git_commit
        run_id = store.get_or_create_trial_run(
            client, self._experiment_id, self.parent_run_id, trial.trial_id, run_name(config, trial.trial_id),
            "baseline" if method == "none" else "trial", trial_params(config), tags,
        )
        self._runs[trial.trial_id] = run_id
        return run_id

    def _finish(self, trial: Trial, final: Mapping[str, Any], status: str, folder: str | None,
                error: str | None) -> None:
        store.finish_trial_run(self._connect(), self._run_of(trial), final, status, folder, error)
        self._ended.add(trial.trial_id)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's settings worth a param: the plain keys (Optuna's "lora.rank" copies are left out)."""
    return {key: config[key] for key in TRIAL_PARAMS if key in config and config[key] is not None}


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


def _spent(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial that ended without its final report cost, from its last report."""
    unmeasured = ("test_quality", "n_test")  # only the final report has a test evaluation
    return {key: result[key] for key in FINAL_METRICS if key in result and key not in unmeasured}


def _error_text(trial: Trial) -> str:
    path = trial.error_file  # the driver's local copy; get_error reads the storage copy
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    text = trial.get_error()
    return str(text).strip() if text else "trial failed without an error message"
