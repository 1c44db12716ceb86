"""Log every Ray Tune trial of a sweep to MLflow from the driver: one child run per trial, also across resume.

The driver is the only writer (trials never talk to MLflow), so a SQLite store is not hit by many
processes at once. Ray's MLflowLoggerCallback does not fit: it keeps its trial-to-run map in memory
only (a restored sweep opens new runs) and has no parent run. Here a run is found by its
sweepboard.trial_id and sweepboard.sweep_id tags; the in-memory map is only a cache. Curve points are
logged as they come; a trial's end goes through sweeps/reconcile.py, the writer `sweepboard sync` uses too.

What Ray 2.60 does on Tuner.restore (seen by hand, asserted in tests/sweeps/test_mlflow_callback.py):
the callback comes back unpickled from tuner.pkl as it was constructed (a new object, empty cache);
on_trial_start is called again for every resumed trial (on_trial_restore is not), with
trial.last_result and trial.checkpoint as last saved; results after the restored checkpoint are
reported again, so a curve may hold two points at one step. On Ctrl+C (SIGINT/SIGUSR1) Tune stops,
saves, and calls on_experiment_end with the interrupted trials TERMINATED, but no on_trial_complete.

When MLflow goes away (a server that stops answering, a store that stays locked): Tune aborts a sweep
whose callback raises, and it waits for its callbacks before it takes a trial's next result, so no MLflow
call here may raise or hang. Each write is queued per trial and written at once if MLflow answers; if it
does not, the queue is kept, trials train on, and the queued writes go out, in order, at a later hook once
it answers again (tried after 5 s, then less often, up to every 60 s). What is still queued when the sweep
ends is named in a message with the command that copies it in from Ray's storage (`sweepboard sync`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial

from sweeps import reconcile as rec
from tracking import mlflow_conn as conn
from tracking import mlflow_store as store

log = logging.getLogger(__name__)

RETRY_AFTER_S = (5.0, 10.0, 30.0, 60.0)  # pauses before trying an unreachable MLflow again


class MLflowTrialLogger(Callback):
    """A Tune callback writing each trial into its own MLflow run under the sweep's parent run."""

    def __init__(self, tracking_uri: str, sweep_name: str, sweep_id: str, parent_run_id: str,
                 git_commit: str | None = None, extra_tags: Mapping[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        self.parent_run_id = parent_run_id
        self.git_commit = git_commit
        self.extra_tags = dict(extra_tags or {})
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id; a cache of the tag lookup
        self._ended: set[str] = set()  # trial ids whose end this process has queued
        self._queue: dict[str, deque[tuple[str, Callable[[], Any]]]] = {}  # trial id -> (what, write)
        self._dropped: dict[str, str] = {}  # trial id -> a write that failed for good (not an outage)
        self._down_since: float | None = None  # wall time MLflow stopped answering
        self._down_error = ""
        self._retry_at = 0.0  # monotonic time of the next attempt while it is down
        self._failures = 0
        self._storage: str | None = None  # the sweep's folder in Ray's storage, for the message

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the callback into tuner.pkl; a client, a cache and queued writes must not travel.
        return {key: self.__dict__[key] for key in
                ("tracking_uri", "sweep_name", "sweep_id", "parent_run_id", "git_commit", "extra_tags")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        pass  # connect lazily: a server that is down when the sweep (re)starts must not abort it

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended.discard(trial.trial_id)  # a trial restarted after an error or a resume runs again
        if self._storage is None and trial.path:
            self._storage = _sweep_folder(trial)
        self._write(trial, "run", lambda: self._run_of(trial))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if "step" not in result:
            return
        curves = {key: result[key] for key in rec.CURVE_METRICS if key in result}
        step = int(result["step"])
        self._write(trial, f"step {step}",
                    lambda: store.log_step_metrics(self._connect(), self._run_of(trial), curves, step))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        outcome = rec.completed(trial.last_result or {})
        # The checkpoint as of now: Tune may move on, but keeps the latest one (num_to_keep drops older).
        self._end(trial, outcome, trial.checkpoint if outcome.artifacts else None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, rec.failed(trial.last_result or {}, rec.error_text(trial)), None)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Trials left running (Ctrl+C, a driver stopped early) end "interrupted"; a resume reopens them.
        for trial in trials:
            started = trial.trial_id in self._runs or trial.trial_id in self._queue
            if started and trial.trial_id not in self._ended:
                self._end(trial, rec.interrupted(trial.last_result or {}), None)
        self._flush(force=True)
        message = self.unlogged_message()
        if message:
            print(message, file=sys.stderr, flush=True)

    def unlogged_message(self) -> str | None:
        """What could not be logged and how to get it into MLflow; None when everything was logged."""
        if not self._queue and not self._dropped:
            return None
        lines = []
        if self._queue:
            since = time.strftime("%H:%M:%S", time.localtime(self._down_since or time.time()))
            waiting = sum(len(queue) for queue in self._queue.values())
            lines.append(
                f"MLflow: {self.tracking_uri} has not answered since {since} ({self._down_error}); "
                f"{waiting} write(s) of {len(self._queue)} trial(s) were not logged: "
                f"{', '.join(self._queue)}."
            )
        for trial_id, what in self._dropped.items():
            lines.append(f"MLflow: trial {trial_id}: {what}")
        where = self._storage or "Ray's storage"
        lines.append(f"Training went on: every result, metric and artifact is in {where}.")
        command = sync_command(self.sweep_name, self.tracking_uri, self._storage)
        lines.append(f"Copy them into MLflow once it answers: {command}")
        return "\n".join(lines)

    def _end(self, trial: Trial, outcome: rec.Outcome, checkpoint: Any) -> None:
        self._ended.add(trial.trial_id)
        self._write(trial, f"end ({outcome.status})", lambda: self._finish(trial, outcome, checkpoint))

    def _write(self, trial: Trial, what: str, write: Callable[[], Any]) -> None:
        """Queue one write of `trial` behind its earlier ones, then write what MLflow takes now."""
        self._queue.setdefault(trial.trial_id, deque()).append((what, write))
        self._flush()

    def _flush(self, force: bool = False) -> None:
        waiting = self._down_since is not None and time.monotonic() < self._retry_at
        if not self._queue or (waiting and not force):
            return
        with conn.fail_fast():
            for trial_id in list(self._queue):
                queue = self._queue[trial_id]
                while queue:
                    what, write = queue[0]
                    try:
                        write()
                    except Exception as exc:  # noqa: BLE001  a logging failure must never abort a paid sweep
                        if conn.is_transient(exc):
                            self._went_down(exc)
                            return
                        # Not an outage (a bug, a rejected value): writing it again would fail again.
                        log.warning("MLflow: trial %s: %s not logged: %s", trial_id, what, exc)
                        self._dropped[trial_id] = f"{what} not logged: {conn.first_line(exc)}"
                    queue.popleft()
                del self._queue[trial_id]
        if self._down_since is not None:
            log.warning("MLflow: %s answers again; the queued results are logged", self.tracking_uri)
            self._down_since, self._failures = None, 0

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.time()
            self._down_error = conn.first_line(exc)
            log.warning("MLflow: %s does not answer (%s); trials keep training and their results are "
                        "queued until it does", self.tracking_uri, self._down_error)
        self._retry_at = time.monotonic() + RETRY_AFTER_S[min(self._failures, len(RETRY_AFTER_S) - 1)]
        self._failures += 1

    def _connect(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if self._experiment_id is None:
            self._experiment_id = store.ensure_experiment(self._client, self.sweep_name)
        return self._client

    def _record(self, trial: Trial) -> rec.TrialRecord:
        record = rec.identity(trial.trial_id, trial.config or {}, self.sweep_name, self.sweep_id,
                              self.git_commit)
        record.tags = {**self.extra_tags, **record.tags}
        return record

    def _run_of(self, trial: Trial) -> str:
        """The run of `trial`: cached, else found by tags (resume, reopened), else created."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            return run_id
        client = self._connect()
        assert self._experiment_id is not None
        record = self._record(trial)
        run_id = store.get_or_create_trial_run(
            client, self._experiment_id, self.parent_run_id, trial.trial_id, self.sweep_id, record.run_name,
            record.role, record.params, record.tags,
        )
        self._runs[trial.trial_id] = run_id
        return run_id

    def _finish(self, trial: Trial, outcome: rec.Outcome, checkpoint: Any) -> None:
        """The trial's end, through the writer `sweepboard sync` uses (its curves went out as they came)."""
        self._run_of(trial)
        record = self._record(trial)
        record.outcome = outcome
        assert self._experiment_id is not None
        if checkpoint is None:
            rec.reconcile(self._connect(), self._experiment_id, self.parent_run_id, record, self.sweep_id)
            return
        # as_directory: the folder itself on local storage, a download on cloud storage.
        with checkpoint.as_directory() as folder:
            record.folder = Path(folder)
            rec.reconcile(self._connect(), self._experiment_id, self.parent_run_id, record, self.sweep_id)


def _sweep_folder(trial: Trial) -> str:
    """The sweep's folder in Ray's storage: a path, or a URI (s3://bucket/prefix/NAME) on object storage."""
    folder = str(Path(str(trial.path)).parent)
    fs = getattr(getattr(trial, "storage", None), "storage_filesystem", None)
    kind = getattr(fs, "type_name", "local")
    return folder if kind == "local" else f"{kind}://{folder}"


def sync_command(sweep_name: str, tracking_uri: str, storage: str | None = None) -> str:
    """The command that copies a sweep from Ray's storage into MLflow (sweeps/sync.py)."""
    command = f"sweepboard sync {sweep_name} --tracking-uri {tracking_uri}"
    if storage and "://" in storage:  # object storage: the URI the sweep's folder is in
        command += f" --storage {storage.rsplit('/', 1)[0]}"
    elif storage and Path(storage).parent != Path("runs/sweeps").resolve():
        command += f" --storage {Path(storage).parent}"
    return f"{command}   (or: MLFLOW_TRACKING_URI={tracking_uri} make sync NAME={sweep_name})"
