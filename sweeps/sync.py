"""`sweepboard sync NAME`: copy a sweep's results from Ray's storage into MLflow, idempotently.

For a sweep that MLflow missed part of (a tracking server that went away, a store that stayed locked):
Ray's storage, runs/sweeps/NAME, still holds all a run needs. Ray's experiment state gives each trial's
config, status and error; its result.json every result it reported; its last checkpoint (or work/) the
final files: metrics.json, test_predictions.jsonl, adapter/; baseline/ holds the base model's evaluation.

Each trial's run is found by its sweepboard.trial_id and sweepboard.sweep_id tags (created when missing,
never twice) and reconciled with that record by sweeps/reconcile.py, the writer the live sweep uses too:
only what it lacks is written. A run that holds everything is not touched, so a second sync changes
nothing. Run it once the sweep's driver has ended: while it runs, the driver is the writer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from sweeps import driver_lock
from sweeps import reconcile as rec
from sweeps.ledger import sweep_spent
from sweeps.runtime import STATE_FILE, known_sweeps, open_sweep, sweep_id
from sweeps.storage import is_remote, pull, push
from sweeps.training_state import drop_finished, is_training_state
from tracking import mlflow_conn as conn
from tracking import mlflow_store as store
from tracking.names import ARTIFACT_METRICS, TAG_GIT_COMMIT, TAG_STATUS
from trainers.config import ConfigError

if TYPE_CHECKING:
    from search_spaces.rates import RateRange

BASELINE_ID = "baseline"  # the baseline's folder in the sweep's, and the end of its trial id


def sync(name: str, storage: str = "runs/sweeps", tracking_uri: str | None = None) -> int:
    """Bring sweep `name`'s MLflow experiment up to date with its folder in `storage`; print what changed."""
    root = open_sweep(storage, name)
    state_file = root / STATE_FILE
    if not state_file.is_file():
        known = known_sweeps(root.parent, storage)
        raise ConfigError([f"sweep {name!r}: nothing to sync in {storage if is_remote(storage) else root}; known sweeps: "
                           f"{', '.join(known) or 'none'} (give --storage if the sweep lives elsewhere)"])
    running = driver_lock.holder(root)
    if running is not None:  # one writer: while a driver runs, it is the one writing the sweep into MLflow
        raise ConfigError([f"sweep {name!r} is running now ({driver_lock.describe(running)}); its driver "
                           "writes MLflow: run sync once it has ended"])
    # Object storage: Ray's trial folders come into the mirror too, without training state (only the
    # final files are logged), so Ray's experiment state is read from there as from a folder.
    pull(root, only=lambda rel: not is_training_state(rel))
    # What a finished trial must not keep (sweeps/training_state.py), here and in the bucket: a sweep whose
    # driver died after a trial's end never ran its own cleanup.
    dropped = drop_finished(root)
    state = json.loads(state_file.read_text())
    uri = conn.tracking_uri(tracking_uri or state["config"].get("tracking_uri"))
    conn.check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = store.ensure_experiment(client, name)
    identity = sweep_id(root)
    parent = store.find_sweep_run(client, experiment_id, identity)
    git = parent.data.tags.get(TAG_GIT_COMMIT) if parent else None
    records = [*baseline_records(root, name, identity, state, git), *trial_records(root, name, identity, git)]
    if parent is None:
        params = {key: state["config"].get(key) for key in ("max_trials", "concurrency")}
        params.update(budget_usd=state.get("budget_usd"), space=state.get("space_source"),
                      config=state["config"].get("source"))
        parent_id = store.start_sweep_run(client, name, identity, params)
    else:
        parent_id = parent.info.run_id
    counts = Counter(rec.reconcile(client, experiment_id, parent_id, record, identity) for record in records)
    spent = sweep_spent(root)  # the one figure: the parent's spent_usd and the ledger file say the same
    parent_changed = sync_parent(client, parent_id, spent, bool(counts["created"] + counts["updated"]), root,
                                 name, uri)  # fmt: skip
    print(f"sync {name}: {len(records)} run(s) from {root} into {uri} (experiment {name!r}): "
          f"{counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged; "
          f"parent run {'updated' if parent_changed or parent is None else 'unchanged'}, spent ${spent:.4f}"
          + (f"; deleted {len(dropped)} training-state file(s) of finished trials" if dropped else ""))
    return 0


def trial_records(root: Path, sweep: str, identity: str, git: str | None) -> list[rec.TrialRecord]:
    """One record per trial in Ray's experiment state at `root` (none before Tune has saved one)."""
    if not any(root.glob("experiment_state-*.json")):
        return []
    from ray.tune import ExperimentAnalysis

    return [record for trial in ExperimentAnalysis(str(root)).trials
            if (record := trial_record(trial, sweep, identity, git)) is not None]  # fmt: skip


def trial_record(trial: Any, sweep: str, identity: str, git: str | None) -> rec.TrialRecord | None:
    folder = Path(trial.path)
    history = rec.read_results(folder / "result.json")
    if trial.status == "PENDING" and not history:
        return None  # never started: the sweep made no run for it either
    last = trial.last_result or (history[-1] if history else {})
    if trial.status == "ERROR":
        outcome = rec.failed(last, rec.error_text(trial, folder))
    elif trial.status == "TERMINATED":
        outcome = rec.completed(last)
    else:
        outcome = rec.interrupted(last)
    record = rec.identity(trial.trial_id, trial.config or {}, sweep, identity, git)
    record.outcome, record.curves = outcome, rec.curve_points(history)
    record.folder = rec.final_folder(folder, last) if outcome.artifacts else None
    return record


def baseline_records(root: Path, sweep: str, identity: str, state: dict[str, Any],
                     git: str | None) -> list[rec.TrialRecord]:  # fmt: skip
    """The base model's evaluation, as the sweep logged it before Tune started (if it got that far)."""
    folder = root / BASELINE_ID
    if not (folder / ARTIFACT_METRICS).is_file():
        return []
    metrics = json.loads((folder / ARTIFACT_METRICS).read_text())
    record = baseline_record(sweep, identity, state["config"].get("trial") or {}, git)
    record.outcome, record.folder = rec.Outcome("finished", metrics, None, True), folder
    return [record]


def baseline_record(sweep: str, identity: str, base: dict[str, Any], git: str | None) -> rec.TrialRecord:
    """The baseline's record before it ends: its run's name, params and tags (sweeps/baseline.py logs it)."""
    model = base.get("model")
    if model and Path(model).expanduser().exists():
        base = {**base, "model": str(Path(model).expanduser().resolve())}
    record = rec.identity(f"{sweep}-{BASELINE_ID}", {"method": "none", "sweepboard_trial": base}, sweep,
                          identity, git)
    record.run_name = "baseline-none"
    return record


def sync_parent(client: MlflowClient, parent_id: str, spent: float, children_changed: bool, root: Path,
                sweep: str, uri: str) -> bool:  # fmt: skip
    """The parent run's spend, leaderboard and end, as the sweep's end writes them; whether it wrote.

    It ends as the driver ended (sweepboard.json "ended", written before the driver's own MLflow writes);
    with no end recorded the driver was lost (killed) or runs on: interrupted, `sweepboard resume` goes on."""
    run = store.get_run(client, parent_id)
    changed = False
    if not rec.same(run.data.metrics.get("spent_usd"), spent):
        store.log_step_metrics(client, parent_id, {"spent_usd": spent}, 0)
        changed = True
    has_board = any(name.startswith("leaderboard.") for name in store.artifact_names(client, parent_id))
    stale = children_changed or changed or not has_board
    paths = write_board(sweep, uri, root / "leaderboard", _rate_ranges(root)) if stale else []
    if paths:
        push(root / "leaderboard")
    status = json.loads((root / STATE_FILE).read_text()).get("ended") or "interrupted"
    if paths or run.info.status != store.mlflow_status(status) or run.data.tags.get(TAG_STATUS) != status:
        store.finish_sweep_run(client, parent_id, {}, paths, status)
        changed = True
    return changed


def _rate_ranges(root: Path) -> dict[str, RateRange] | None:
    """The learning-rate ranges of the sweep's search space (its source as saved in the sweep folder), for
    the decision's rate brackets; None when the folder or the space cannot be read."""
    from leaderboard.ranges import from_space

    state = json.loads((root / STATE_FILE).read_text()) if (root / STATE_FILE).is_file() else {}
    return from_space(state.get("space_source"))


def write_board(sweep: str, uri: str, out_dir: Path, ranges: dict[str, RateRange] | None) -> list[Path]:
    """The leaderboard files, as at the end of a sweep; none (with a warning) if it cannot be built."""
    from leaderboard import build, export, export_all

    try:
        board = build([sweep], uri, None, 0.02, ranges=ranges)
        paths = export_all(board.ranked, board.decision, out_dir, board.warnings)
        export(board.ranked, board.decision, "table", None, board.warnings)
    except Exception as exc:  # noqa: BLE001  the runs are synced either way; say why the board is missing
        print(f"leaderboard not written: {exc}")
        return []
    print(f"leaderboard: {out_dir}/leaderboard.{{csv,json,md,html}}")
    return list(paths)
