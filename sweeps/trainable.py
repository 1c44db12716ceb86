"""The Ray Tune trainable: a thin wrapper that turns a Tune config into a trial and Tune's report into ours.

Everything a trial does lives in trainers.run_trial; this file only bridges to Ray: where the trial writes,
how a restored trial finds its checkpoint, how intermediate and final results and checkpoints reach Tune,
and how the budget tells a running trial to stop training and evaluate.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from trainers import run_trial

SEARCHED = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
FINAL_FILES = ("metrics.json", "test_predictions.jsonl")


def trial_config(config: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The fixed trial settings plus this trial's searched values (Optuna's "lora.rank" names dropped)."""
    searched = {k: config[k] for k in SEARCHED if k in config and config[k] is not None}
    if searched.get("method") == "full":
        searched.update(rank=None, alpha=None)
    return {**base, **searched}


def trainable(config: dict[str, Any]) -> None:
    from sweeps.budget import trial_should_stop

    sweep = config["sweepboard_sweep"]
    settings = trial_config(config, config["sweepboard_trial"])
    # A stable folder per trial under the sweep's root, not Ray's per-session working dir: after a killed
    # driver, Ray's last experiment snapshot may predate the trial's newest checkpoint, and this folder
    # still holds it, so the trial continues instead of training those steps again.
    out = Path(config["sweepboard_root"]) / f"trial_{tune.get_context().get_trial_id()}" / "work"
    restored = tune.get_checkpoint()
    if restored is not None:
        # A restored trial (resume, or a retried worker) continues from its last reported checkpoint.
        # Whichever is newer wins: Ray's copy (another node, a retried worker) or the one in `out`.
        with restored.as_directory() as path:
            source = Path(path) / "checkpoint" if (Path(path) / "checkpoint").is_dir() else Path(path)
            if _step(source) > _step(out / "checkpoint"):
                shutil.rmtree(out / "checkpoint", ignore_errors=True)
                shutil.copytree(source, out / "checkpoint")
    settings["out"] = str(out)
    # One torch thread per CPU Ray gave the trial: more threads than cores makes OpenMP threads spin against
    # each other (measured here: a 2-thread matmul ran ~10x slower with a second busy process).
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    settings["threads"] = max(1, int(cpus))

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)
        return trial_should_stop(sweep)

    metrics = run_trial(settings, report=report)
    # The final checkpoint carries what MLflow logs as artifacts: metrics, per-example test scores, adapter.
    final = Path(tempfile.mkdtemp(prefix="final-", dir=out))
    for name in FINAL_FILES:
        shutil.copy2(out / name, final / name)
    if (out / "adapter").is_dir():
        shutil.copytree(out / "adapter", final / "adapter")
    # The training checkpoint travels too, so a restore after this point does not train again.
    if (out / "checkpoint").is_dir():
        shutil.copytree(out / "checkpoint", final / "checkpoint")
    tune.report({**_numeric_or_text(metrics), "phase": "final", "step": metrics["steps_done"]},
                checkpoint=tune.Checkpoint.from_directory(str(final)))  # fmt: skip


def _numeric_or_text(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in metrics.items()}


def _step(checkpoint: Path) -> int:
    state = checkpoint / "state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else -1
