"""Sweep overhead and memory per method, from a real sweep on the embedded default.

A short sweep of the default config (the baseline, then the first points: the production-default LoRA,
the same as QLoRA, full fine-tuning) runs through the CLI like a user's. Afterwards each trial's wall
time, as the driver saw it (its MLflow run opens when Ray starts the trial and closes once its results
are logged), is split into compute (training steps, validation, test generation: from the trial's
metrics.json) and the rest: model loading, tokenisation, checkpoints, and Ray and MLflow (what is left).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPUTE = ("step_seconds", "validate_seconds", "test_seconds")
PARTS = ("load_seconds", "tokenize_seconds", "checkpoint_seconds")


def run_sweep(workdir: Path, trials: int = 3) -> tuple[Path, str, str, float]:
    """Run the default sweep, cut to `trials` trials, in `workdir`; return its folder, URI, name, wall."""
    raw = yaml.safe_load((REPO / "sweeps" / "configs" / "default.yaml").read_text())
    trial = raw["trial"]
    reports = math.ceil(int(trial["steps"]) / int(trial["eval_every"]))
    name = "bench-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    raw.update(
        name=name,
        max_trials=trials,
        storage=str(workdir / "sweeps"),
        tracking_uri=uri,
        # ASHA's only rung after the last validation: every trial runs to its test score, so each one's
        # memory and time are measured whole (the default sweep would prune the weaker ones at step 40).
        grace_period=reports + 1,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "30", "--config", str(config)],
                   cwd=REPO, env=env, check=True)  # fmt: skip
    return workdir / "sweeps" / name, uri, name, time.perf_counter() - started


def analyse(root: Path, uri: str, name: str, sweep_wall: float | None = None) -> dict[str, Any]:
    """Overhead and memory of a finished sweep, from its MLflow runs and its trials' metrics.json."""
    import mlflow

    from tracking import names

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ValueError(f"no MLflow experiment {name!r} at {uri}")
    trials, baseline, spans = [], None, []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        role = run.data.tags.get(names.TAG_ROLE)
        if role == "baseline":
            baseline = _load(root / "baseline" / "metrics.json")
        elif role == "trial" and run.info.end_time:
            work = root / f"trial_{run.data.tags[names.TAG_TRIAL_ID]}" / "work"
            metrics = _load(work / "metrics.json") or _stopped(work)
            if metrics is not None:
                trials.append(_breakdown(metrics, (run.info.end_time - run.info.start_time) / 1000))
                spans.append((run.info.start_time / 1000, run.info.end_time / 1000))
    if not trials:
        raise ValueError(f"sweep {name!r} has no finished trial with a metrics.json under {root}")
    wall = sum(t["wall_seconds"] for t in trials)
    compute = sum(t["compute_seconds"] for t in trials)
    # From the first trial's start to the last one's end: with one trial at a time this also counts the
    # gaps between trials (a new Ray worker starting, the searcher, MLflow logging the last one).
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    concurrent = wall > span * 1.05
    result: dict[str, Any] = {
        "compute_share": compute / (wall if concurrent else span),
        "compute_share_in_trials": compute / wall,
        "trials": len(trials),
        "trials_span_seconds": span,
        "trial_wall_seconds": wall,
        "seconds": {
            part: sum(t[part] for t in trials)
            for part in ("compute_seconds", *PARTS, "ray_mlflow_other_seconds")
        },
        "per_trial": trials,
    }
    if sweep_wall is not None:
        result["sweep_wall_seconds"] = sweep_wall
        result["sweep_compute_share"] = (compute + (baseline or {}).get("test_seconds", 0.0)) / sweep_wall
    measured = [t for t in trials if t["peak_memory_mb"] is not None]
    memory = {f"{t['method']}_mb": t["peak_memory_mb"] for t in measured}
    memory.update({f"{t['method']}_weights_mb": t["weights_mb"] for t in measured})
    if baseline is not None:
        memory["none_mb"] = baseline["peak_memory_mb"]
        memory["none_weights_mb"] = baseline["weights_mb"]
    if "lora_weights_mb" in memory and "qlora_weights_mb" in memory:
        memory["qlora_over_lora_weights"] = memory["qlora_weights_mb"] / memory["lora_weights_mb"]
    return {"overhead": result, "memory": memory, "disk": disk(root)}


def disk(root: Path) -> dict[str, Any]:
    """What the sweep left on disk, by kind: its trials run to their end here (no pruning), each leaving
    its final model once and no optimizer state, so this bounds what `make sweep` leaves from above."""
    files = [f for f in root.rglob("*") if f.is_file() and not f.is_symlink()]
    size = sum(f.stat().st_size for f in files)
    models = sum(f.stat().st_size for f in files if f.parent.name in ("adapter", "model"))
    training = sum(f.stat().st_size for f in files if f.name in ("trainable.pt", "optim.pt"))
    return {"default_sweep_gb": size / 1e9, "final_models_gb": models / 1e9,
            "training_state_gb": training / 1e9, "files": len(files)}  # fmt: skip


def _stopped(work: Path) -> dict[str, Any] | None:
    """A trial ASHA stopped has no metrics.json; its checkpoint's state has its step and validation time."""
    state = _load(work / "checkpoint" / "state.json")
    if state is None:
        return None
    return {"method": "stopped", "step_seconds": state.get("train_seconds", 0.0),
            "validate_seconds": state.get("validate_seconds", 0.0),
            "checkpoint_seconds": state.get("checkpoint_seconds", 0.0)}  # fmt: skip


def _breakdown(metrics: dict[str, Any], wall: float) -> dict[str, Any]:
    compute = sum(float(metrics.get(k, 0.0)) for k in COMPUTE)
    parts = {k: float(metrics.get(k, 0.0)) for k in PARTS}
    return {
        "method": metrics["method"],
        "wall_seconds": wall,
        "compute_seconds": compute,
        **parts,
        "ray_mlflow_other_seconds": max(0.0, wall - compute - sum(parts.values())),
        "compute_share": compute / wall if wall else 0.0,
        "peak_memory_mb": metrics.get("peak_memory_mb"),
        "weights_mb": metrics.get("weights_mb"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "test_quality": metrics.get("test_quality"),
    }


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.overhead SWEEP_DIR NAME`: analyse a finished sweep (e.g. runs/sweeps/default)."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) < 1:
        print("usage: python -m bench.overhead SWEEP_DIR [NAME] [TRACKING_URI]", file=sys.stderr)
        return 2
    root = Path(args[0])
    name = args[1] if len(args) > 1 else root.name
    uri = args[2] if len(args) > 2 else os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    print(json.dumps(analyse(root, uri, name), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
