"""`sweepboard sync NAME`: copy a sweep's results from Ray's storage into MLflow, idempotently.

For a sweep that MLflow missed part of (a tracking server that went away, a store that stayed locked):
Ray's storage, runs/sweeps/NAME, still holds all a run needs. Ray's experiment state gives each trial's
config, status and error; its result.json every result it reported; its last checkpoint (or work/) the
final files: metrics.json, test_predictions.jsonl, adapter/; baseline/ holds the base model's evaluation.

Each trial's run is found by its sweepboard.trial_id tag (created when missing, never twice) and compared
with that record; only what it lacks is written: curve points at steps it has no point at (one per step,
the last value reported there), final metrics whose latest value differs, tags, artifacts, the end status.
A run that holds everything is not touched, so a second sync changes nothing. Run it once the sweep's
driver has ended: while it runs, the driver is the writer.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from sweeps.ledger import sweep_spent
from sweeps.mlflow_callback import (
    CURVE_METRICS,
    INTERRUPTED,
    Outcome,
    completed,
    failed,
    run_name,
    trial_params,
)
from tracking import mlflow_conn as conn
from tracking import mlflow_store as store
from tracking.names import (
    ARTIFACT_METRICS,
    FINAL_METRICS,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TEST_SHA,
)
from trainers.config import ConfigError


@dataclass
class TrialRecord:
    """What Ray's storage says one trial (or the baseline) should look like in MLflow."""

    trial_id: str
    run_name: str
    role: str  # trial | baseline
    params: dict[str, Any]
    tags: dict[str, str]
    curves: list[tuple[str, float, int]]  # (key, value, step)
    outcome: Outcome
    folder: Path | None  # the final files, to log as artifacts

    def cost(self) -> float:
        """What the trial cost: its final cost, else the last one it reported (as the sweep sums it)."""
        if _is_number(self.outcome.final.get("cost_usd")):
            return float(self.outcome.final["cost_usd"])
        costs = [(step, value) for key, value, step in self.curves if key == "cost_usd"]
        return max(costs)[1] if costs else 0.0


def sync(name: str, storage: str = "runs/sweeps", tracking_uri: str | None = None) -> int:
    """Bring sweep `name`'s MLflow experiment up to date with its folder in `storage`; print what changed."""
    from sweeps.sweep import STATE_FILE

    root = Path(storage).resolve() / name
    state_file = root / STATE_FILE
    if not state_file.is_file():
        known = sorted(p.name for p in root.parent.glob("*") if (p / STATE_FILE).is_file())
        raise ConfigError([f"sweep {name!r}: nothing to sync in {root}; known sweeps: "
                           f"{', '.join(known) or 'none'} (give --storage if the sweep lives elsewhere)"])
    state = json.loads(state_file.read_text())
    uri = conn.tracking_uri(tracking_uri or state["config"].get("tracking_uri"))
    conn.check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = store.ensure_experiment(client, name)
    parent = store.find_sweep_run(client, experiment_id)
    git = parent.data.tags.get(TAG_GIT_COMMIT) if parent else None
    records = [*baseline_records(root, name, state, git), *trial_records(root, name, git)]
    if parent is None:
        params = {key: state["config"].get(key) for key in ("max_trials", "concurrency")}
        params.update(budget_usd=state.get("budget_usd"), space=state.get("space_source"),
                      config=state["config"].get("source"))
        parent_id = store.start_sweep_run(client, name, params)
    else:
        parent_id = parent.info.run_id
    counts = Counter(sync_run(client, experiment_id, parent_id, record) for record in records)
    spent = sweep_spent(root)  # the one figure: the parent's spent_usd and the ledger file say the same
    parent_changed = sync_parent(client, parent_id, spent, bool(counts["created"] + counts["updated"]), root,
                                 name, uri)  # fmt: skip
    print(f"sync {name}: {len(records)} run(s) from {root} into {uri} (experiment {name!r}): "
          f"{counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged; "
          f"parent run {'updated' if parent_changed or parent is None else 'unchanged'}, spent ${spent:.4f}")
    return 0


def trial_records(root: Path, sweep: str, git: str | None) -> list[TrialRecord]:
    """One record per trial in Ray's experiment state at `root` (none before Tune has saved one)."""
    if not any(root.glob("experiment_state-*.json")):
        return []
    from ray.tune import ExperimentAnalysis

    return [record for trial in ExperimentAnalysis(str(root)).trials
            if (record := trial_record(trial, sweep, git)) is not None]  # fmt: skip


def trial_record(trial: Any, sweep: str, git: str | None) -> TrialRecord | None:
    folder = Path(trial.path)
    history = read_results(folder / "result.json")
    if trial.status == "PENDING" and not history:
        return None  # never started: the sweep made no run for it either
    last = trial.last_result or (history[-1] if history else {})
    if trial.status == "ERROR":
        outcome = failed(last, _error_text(trial, folder))
    elif trial.status == "TERMINATED":
        outcome = completed(last)
    else:
        outcome = INTERRUPTED
    config = trial.config or {}
    method = str(config.get("method", "unknown"))
    return TrialRecord(
        trial.trial_id, run_name(config, trial.trial_id), "baseline" if method == "none" else "trial",
        trial_params(config), _tags(sweep, method, git), curve_points(history), outcome,
        final_folder(folder, last) if outcome.artifacts else None,
    )  # fmt: skip


def baseline_records(root: Path, sweep: str, state: dict[str, Any], git: str | None) -> list[TrialRecord]:
    """The base model's evaluation, as the sweep logged it before Tune started (if it got that far)."""
    from sweeps.tune_run import BASELINE_ID

    folder = root / BASELINE_ID
    if not (folder / ARTIFACT_METRICS).is_file():
        return []
    metrics = json.loads((folder / ARTIFACT_METRICS).read_text())
    model = (state["config"].get("trial") or {}).get("model")
    if model and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    params = {"method": "none", "model": model}
    outcome = Outcome("finished", metrics, None, True)
    tags = _tags(sweep, "none", git)
    trial_id = f"{sweep}-{BASELINE_ID}"
    return [TrialRecord(trial_id, "baseline-none", "baseline", params, tags, [], outcome, folder)]


def sync_run(client: MlflowClient, experiment_id: str, parent_id: str, record: TrialRecord) -> str:
    """Write what the record's run lacks: 'created', 'updated' or 'unchanged' (nothing written)."""
    run_id = store.find_trial_run(client, experiment_id, record.trial_id)
    created = run_id is None
    if run_id is None:
        run_id = store.get_or_create_trial_run(client, experiment_id, parent_id, record.trial_id,
                                               record.run_name, record.role, record.params, record.tags)
    run = store.get_run(client, run_id)
    outcome = record.outcome
    changed = False
    params = {k: v for k, v in record.params.items() if k not in run.data.params and store.param_value(v)}
    tags = {k: v for k, v in _final_tags(record).items() if run.data.tags.get(k) != v}
    if params or tags:
        store.log_params_and_tags(client, run_id, params, tags)
        changed = True
    if not outcome.error and TAG_ERROR in run.data.tags:
        client.delete_tag(run_id, TAG_ERROR)  # an earlier attempt's error; the trial recovered
        changed = True
    points = _missing_points(client, run, record.curves)
    if points:
        store.log_metric_points(client, run_id, points)
        run, changed = store.get_run(client, run_id), True  # the latest values may have moved
    final, logged_metrics = outcome.final, run.data.metrics
    finals = {key: final[key] for key in FINAL_METRICS
              if _is_number(final.get(key)) and not _same(logged_metrics.get(key), final[key])}
    if finals:
        step = store.final_step(client, run_id, finals, final.get("steps_done"))
        store.log_step_metrics(client, run_id, finals, step)
        changed = True
    if record.folder is not None:
        logged = store.artifact_names(client, run_id)
        if set(store.trial_artifacts(record.folder)) - logged:
            store.log_trial_artifacts(client, run_id, record.folder, skip=logged)
            changed = True
    end = "KILLED" if outcome.interrupted else store.mlflow_status(outcome.status)
    if run.info.status != end:
        store.end_run(client, run_id, end)
        changed = True
    return "created" if created else "updated" if changed else "unchanged"


def sync_parent(client: MlflowClient, parent_id: str, spent: float, children_changed: bool, root: Path,
                sweep: str, uri: str) -> bool:  # fmt: skip
    """The parent run's spend, leaderboard and end, as the sweep's end writes them; whether it wrote."""
    run = store.get_run(client, parent_id)
    changed = False
    if not _same(run.data.metrics.get("spent_usd"), spent):
        store.log_step_metrics(client, parent_id, {"spent_usd": spent}, 0)
        changed = True
    has_board = any(name.startswith("leaderboard.") for name in store.artifact_names(client, parent_id))
    stale = children_changed or changed or not has_board
    paths = write_board(sweep, uri, root / "leaderboard") if stale else []
    if paths or run.info.status != "FINISHED" or run.data.tags.get(TAG_STATUS) != "finished":
        store.finish_sweep_run(client, parent_id, {}, paths)
        changed = True
    return changed


def write_board(sweep: str, uri: str, out_dir: Path) -> list[Path]:
    """The leaderboard files, as at the end of a sweep; none (with a warning) if it cannot be built."""
    from leaderboard import build, export, export_all

    try:
        board = build([sweep], uri, None, 0.02)
        paths = export_all(board.ranked, board.decision, out_dir, board.warnings)
        export(board.ranked, board.decision, "table", None, board.warnings)
    except Exception as exc:  # noqa: BLE001  the runs are synced either way; say why the board is missing
        print(f"leaderboard not written: {exc}")
        return []
    print(f"leaderboard: {out_dir}/leaderboard.{{csv,json,md,html}}")
    return list(paths)


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


def curve_points(history: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """One (key, value, step) per curve and step: the last value reported at that step (a resumed trial
    reports some steps again; the final report repeats the last step with the final values)."""
    last: dict[tuple[str, int], float] = {}
    for result in history:
        if not _is_number(result.get("step")):
            continue
        for key in CURVE_METRICS:
            if _is_number(result.get(key)):
                last[(key, int(result["step"]))] = float(result[key])
    return [(key, value, step) for (key, step), value in last.items()]


def final_folder(trial_dir: Path, last: dict[str, Any]) -> Path | None:
    """The trial's final files: its last checkpoint, else its own output folder (trainable.py's work/)."""
    candidates = [trial_dir / str(last["checkpoint_dir_name"])] if last.get("checkpoint_dir_name") else []
    for folder in [*candidates, trial_dir / "work"]:
        if (folder / ARTIFACT_METRICS).is_file():
            return folder
    return None


def _final_tags(record: TrialRecord) -> dict[str, str]:
    """The tags a run ends with (mlflow_store.finish_trial_run / interrupt_trial_run write the same)."""
    outcome = record.outcome
    tags = {**record.tags, TAG_STATUS: outcome.status}
    for key, tag in (("test_set_sha256", TAG_TEST_SHA), ("metric", TAG_METRIC), ("method", TAG_METHOD)):
        if outcome.final.get(key):
            tags[tag] = str(outcome.final[key])
    if outcome.error:
        tags[TAG_ERROR] = outcome.error[-MAX_TAG_VAL_LENGTH:]
    return tags


def _missing_points(client: MlflowClient, run: Run,
                    curves: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    logged: dict[str, set[int]] = {}
    for key in {key for key, _, _ in curves}:
        logged[key] = store.metric_steps(client, run.info.run_id, key) if key in run.data.metrics else set()
    return [(key, value, step) for key, value, step in curves if step not in logged[key]]


def _tags(sweep: str, method: str, git: str | None) -> dict[str, str]:
    return {TAG_SWEEP: sweep, TAG_METHOD: method, **({TAG_GIT_COMMIT: git} if git else {})}


def _error_text(trial: Any, folder: Path) -> str:
    error = trial.get_error()
    if error:
        return str(error).strip()
    path = folder / "error.txt"
    if path.is_file():
        return path.read_text(errors="replace").strip()
    return "trial failed without an error message"


def _same(logged: Any, value: Any) -> bool:
    return _is_number(logged) and math.isclose(float(logged), float(value), rel_tol=1e-9, abs_tol=1e-12)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
