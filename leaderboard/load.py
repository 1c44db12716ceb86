"""Read the runs of one or more sweeps back from MLflow, the source of truth, into one row per run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from leaderboard.curves import val_curve
from tracking.names import (
    ARTIFACT_PREDICTIONS,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

# MLflow's own run status, used when a run never got a sweepboard status tag (e.g. the process died).
_MLFLOW_STATUS = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished",
                  "FAILED": "failed", "KILLED": "interrupted"}

RAW_COLUMNS = (
    "sweep", "run_id", "run_name", "role", "trial_id", "method", "status", "rank", "alpha", "target_modules",
    "lora_dropout", "learning_rate", "steps", "batch_size", "model", "precision", "metric", "test_quality",
    "val_quality", "n_test", "cost_usd", "device_hours", "peak_memory_mb", "adapter_mb", "trainable_params",
    "tokens_per_second", "truncated_train", "truncated_val", "truncated_test", "git_commit",
    "test_set_sha256", "error", "start_time", "scores", "val_curve",
)
# Examples cut to max_seq_len, per split (metrics written by the trial; older runs have none).
TRUNCATION_METRICS = ("truncated_train", "truncated_val", "truncated_test")

FLOAT_COLUMNS = ("test_quality", "val_quality", "cost_usd", "device_hours", "learning_rate", "lora_dropout",
                 "peak_memory_mb", "adapter_mb", "tokens_per_second")
INT_COLUMNS = ("rank", "alpha", "n_test", "steps", "batch_size", "trainable_params", *TRUNCATION_METRICS)


def load_runs(names: list[str], tracking_uri: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial or baseline run of the named sweeps, restricted to one locked test set.

    The reference test set is the one the first sweep's parent run (that has one) is tagged with, or else the
    most common among runs that have a test quality. Each scored run's per-example test scores (its
    test_predictions.jsonl, one line per locked test row) come along in "scores", for the paired tests; each
    trial run's validation curve (val_quality by training step) in "val_curve", for the learning-rate
    brackets of the decision; the parent runs' search spaces (param "space") in `attrs["spaces"]`.
    Returns the rows and human-readable warnings about what was left out or is doubtful.
    Raises LookupError when a sweep has no experiment.
    """
    if not names:
        raise ValueError("give at least one sweep name")
    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        # MLflow would silently create an empty store there; a typo in the path deserves an error instead.
        raise LookupError(f"no MLflow database at {uri}; run from the folder of the sweep or pass "
                          "--tracking-uri (or set MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri=uri)
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    parent_shas: list[str] = []
    spaces: list[str] = []  # each parent run's search space (param "space"), for the decision's rate ranges
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(e.name for e in client.search_experiments())
            raise LookupError(
                f"no MLflow experiment named {name!r} at {client.tracking_uri}; "
                f"known experiments: {', '.join(known) or '(none)'}; check the sweep name or --tracking-uri"
            )
        runs = _newest_sweep(name, _all_runs(client, experiment.experiment_id), warnings)
        unknown = 0
        before = len(rows)
        for run in runs:
            role = run.data.tags.get(TAG_ROLE)
            if role == "sweep":
                sha = run.data.tags.get(TAG_TEST_SHA)
                if sha:
                    parent_shas.append(sha)
                if run.data.params.get("space"):
                    spaces.append(run.data.params["space"])
            elif role in ("trial", "baseline"):
                rows.append(_row(name, run))
                if role == "trial":  # every status: a pruned or diverged trial still bounds a learning rate
                    rows[-1]["val_curve"] = val_curve(client, run)
            else:
                unknown += 1
        if len(rows) == before:
            warnings.append(f"sweep {name!r} has no trial or baseline runs yet")
        if unknown:
            warnings.append(
                f"sweep {name!r}: ignored {unknown} run(s) without a {TAG_ROLE} tag of trial or baseline"
            )
    df = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    df, sha_warnings = _one_test_set(df, parent_shas[0] if parent_shas else None)
    warnings += sha_warnings
    warnings += _duplicate_trials(df)
    metrics = sorted({str(m) for m in df.loc[df["test_quality"].notna(), "metric"] if m})
    if len(metrics) > 1:
        warnings.append(f"runs are scored with different metrics ({', '.join(metrics)}): their qualities "
                        "are not directly comparable")
    _attach_scores(client, df, warnings)
    warnings += _truncation(df)
    df = normalise_dtypes(df.reset_index(drop=True))
    df.attrs["sweeps"] = list(names)
    df.attrs["spaces"] = spaces
    return df, warnings


def normalise_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Floats as float; counts as nullable integers (a LoRA rank is 16, not 16.0, in every export)."""
    for column in FLOAT_COLUMNS:
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    for column in INT_COLUMNS:
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").round().astype("Int64")
    return df


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _newest_sweep(name: str, runs: list[Run], warnings: list[str]) -> list[Run]:
    """The runs of the newest sweep under `name`. A sweep started again under a used name (its folder
    deleted) has a new sweep id and a new parent run; the old one's runs stay in the experiment but are not
    part of this board. Runs from before sweep ids existed (no parent has one) are all kept."""
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep" and r.data.tags.get(TAG_SWEEP_ID)]
    if not parents:
        return runs
    newest = max(parents, key=lambda r: r.info.start_time or 0).data.tags[TAG_SWEEP_ID]
    kept = [r for r in runs if r.data.tags.get(TAG_SWEEP_ID) == newest]
    if len(kept) < len(runs):
        earlier = len({r.data.tags.get(TAG_SWEEP_ID) for r in runs} - {newest})
        warnings.append(f"sweep {name!r}: left out {len(runs) - len(kept)} run(s) of {earlier} earlier sweep(s) "
                        f"under the same name (the board is the newest sweep, id {newest})")
    return kept


def _row(sweep: str, run: Run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    status = tags.get(TAG_STATUS) or _MLFLOW_STATUS.get(run.info.status, run.info.status.lower())
    return {
        "sweep": tags.get(TAG_SWEEP) or sweep,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or run.info.run_id,
        "role": tags.get(TAG_ROLE),
        "trial_id": tags.get(TAG_TRIAL_ID),
        "method": tags.get(TAG_METHOD) or params.get("method") or "unknown",
        "status": status,
        "rank": _int(params.get("rank")),
        "alpha": _int(params.get("alpha")),
        "target_modules": params.get("target_modules") or None,
        "lora_dropout": _float(params.get("lora_dropout")),
        "learning_rate": _float(params.get("learning_rate")),
        "steps": _int(params.get("steps")),
        "batch_size": _int(params.get("batch_size")),
        "model": params.get("model") or None,
        "precision": params.get("precision") or None,
        "metric": tags.get(TAG_METRIC) or None,
        "test_quality": metrics.get("test_quality"),
        "val_quality": metrics.get("val_quality"),
        "n_test": _int(metrics.get("n_test")),
        "cost_usd": metrics.get("cost_usd"),
        "device_hours": metrics.get("device_hours"),
        "peak_memory_mb": metrics.get("peak_memory_mb"),
        "adapter_mb": metrics.get("adapter_mb"),
        "trainable_params": _int(metrics.get("trainable_params")),
        "tokens_per_second": metrics.get("tokens_per_second"),
        **{name: metrics.get(name) for name in TRUNCATION_METRICS},
        "git_commit": tags.get(TAG_GIT_COMMIT) or None,
        "test_set_sha256": tags.get(TAG_TEST_SHA) or None,
        "error": tags.get(TAG_ERROR) or None,
        "start_time": run.info.start_time,
        "scores": None,
        "val_curve": None,
    }


def _int(value: object) -> int | None:
    number = _float(value)
    return None if number is None else int(round(number))


def _float(value: object) -> float | None:
    if value is None or value == "" or str(value).lower() in ("none", "null", "nan"):
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _one_test_set(df: pd.DataFrame, parent_sha: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Keep only runs measured on the reference locked test set."""
    if df.empty:
        return df, []
    has_quality = df["test_quality"].notna()
    reference = parent_sha
    if reference is None:
        # Most common hash among evaluated runs; Counter keeps first-seen order on ties (first sweep wins).
        counts = Counter(s for s in df.loc[has_quality, "test_set_sha256"] if s)
        reference = counts.most_common(1)[0][0] if counts else None
    if reference is None:
        return df, []
    sha = df["test_set_sha256"]
    other = sha.notna() & (sha != reference)
    # A run evaluated on an unknown test set cannot be compared either; one never evaluated (failed early)
    # still cost money, so it stays.
    unknown = sha.isna() & has_quality
    warnings = []
    if other.any():
        found = ", ".join(sorted({str(s)[:12] for s in sha[other]}))
        warnings.append(
            f"left out {int(other.sum())} run(s) evaluated on another locked test set (sha256 {found}...) "
            f"than the reference {reference[:12]}...: qualities on different test sets are not comparable"
        )
    if unknown.any():
        warnings.append(
            f"left out {int(unknown.sum())} run(s) with a test quality but no {TAG_TEST_SHA} tag: "
            "cannot tell which test set they were evaluated on"
        )
    return df[~(other | unknown)], warnings


def _duplicate_trials(df: pd.DataFrame) -> list[str]:
    ids = df.dropna(subset=["trial_id"]).groupby(["sweep", "trial_id"]).size()
    dupes = ids[ids > 1]
    if dupes.empty:
        return []
    listed = ", ".join(f"{sweep}/{trial}" for sweep, trial in dupes.index[:5])
    return [f"{len(dupes)} trial(s) have more than one MLflow run (all are listed): {listed}"]


def _attach_scores(client: MlflowClient, df: pd.DataFrame, warnings: list[str]) -> None:
    """Per-example test scores of every scored run: the paired tests (and token F1's bootstrap) need them."""
    missing: list[str] = []
    mismatched: list[str] = []
    for index in df.index[df["test_quality"].notna()]:
        with _quiet_downloads():
            scores = _read_scores(client, str(df.at[index, "run_id"]))
        n_test = _int(df.at[index, "n_test"])
        if scores is not None and n_test is not None and len(scores) != n_test:
            # Not one line per locked test row: pairing it example by example would compare wrong rows.
            mismatched.append(f"{df.at[index, 'run_name']} ({len(scores)} lines, n_test {n_test})")
            scores = None
        elif scores is None:
            missing.append(str(df.at[index, "run_name"]))
        df.at[index, "scores"] = scores
    if missing:
        warnings.append(
            f"{len(missing)} run(s) have no readable {ARTIFACT_PREDICTIONS} ({_names(missing)}): paired tests "
            "with them fall back to 95% interval overlap, and a token F1 interval to a normal approximation "
            "(ci_method 'normal-approx') instead of a bootstrap"
        )
    if mismatched:
        warnings.append(
            f"{len(mismatched)} run(s) have a {ARTIFACT_PREDICTIONS} that is not one line per locked test row "
            f"({_names(mismatched)}): their per-example scores are not used (interval overlap instead of a "
            "paired test)"
        )


def _truncation(df: pd.DataFrame) -> list[str]:
    """One warning naming every run whose examples were cut to max_seq_len, with the counts per split."""
    cut = []
    for row in df.itertuples(index=False):
        counts = [(name.removeprefix("truncated_"), _int(getattr(row, name))) for name in TRUNCATION_METRICS]
        shown = [f"{split} {n}" for split, n in counts if n]
        if shown:
            cut.append(f"{row.run_name} ({', '.join(shown)})")
    if not cut:
        return []
    return [f"{len(cut)} run(s) cut examples to max_seq_len ({_names(cut)}): a cut training example loses "
            "(part of) its answer and a cut test prompt is scored on less than the question, so these scores "
            "understate the method; raise trial.max_seq_len in the sweep config (or the trial config) to fit "
            "the longest prompt plus answer"]


def _names(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", and {len(items) - limit} more" if len(items) > limit else "")


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per run (one file each, dozens of runs); a user's own setting is kept."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _read_scores(client: MlflowClient, run_id: str) -> list[float] | None:
    try:
        if not any(f.path == ARTIFACT_PREDICTIONS for f in client.list_artifacts(run_id)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(run_id, ARTIFACT_PREDICTIONS, tmp))
            lines = local.read_text(encoding="utf-8").splitlines()
        scores = [float(json.loads(line)["score"]) for line in lines if line.strip()]
    except Exception:  # a malformed file or an unreachable artifact store must not break the leaderboard
        return None
    return scores or None
