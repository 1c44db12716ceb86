"""A trial ASHA stops keeps no training state; one that finishes or errors is left alone. Real Ray Tune and
ASHA; the trials write their checkpoint folder as trainers/checkpoint.py does (the real trial's disk is
checked in tests/sweeps/test_sweep_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from sweeps.cleanup import DropUnfinishedState


def checkpointing_trial(config: dict[str, Any]) -> None:
    work = Path(config["sweepboard_root"]) / f"trial_{tune.get_context().get_trial_id()}" / "work"
    ckpt = work / "checkpoint"
    for step in range(1, 5):
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "trainable.pt").write_bytes(b"w" * 1000)
        (ckpt / "optim.pt").write_bytes(b"o" * 2000)
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
        if config["kind"] == "fails" and step == 2:
            raise RuntimeError("boom")
        tune.report({"step": step, "val_quality": config["quality"] * step})
    (work / "metrics.json").write_text("{}")  # a finished trial writes its final files, then drops its state
    for name in ("trainable.pt", "optim.pt"):
        (ckpt / name).unlink()


def test_pruned_trials_lose_their_training_state_and_keep_their_step(tmp_path: Path, ray_session: None) -> None:
    root = tmp_path / "sweep"
    kinds = [("best", 0.9), ("pruned", 0.2), ("pruned", 0.1), ("fails", 1.0)]  # "fails" passes rung 1
    space = {"sweepboard_root": str(root), "case": tune.grid_search(list(range(len(kinds))))}
    asha = ASHAScheduler(metric="val_quality", mode="max", time_attr="step", max_t=10, grace_period=1,
                         reduction_factor=2)  # fmt: skip

    def trial(config: dict[str, Any]) -> None:
        kind, quality = kinds[config["case"]]
        checkpointing_trial({**config, "kind": kind, "quality": quality})

    results = tune.Tuner(
        trial,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=asha, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), callbacks=[DropUnfinishedState()]),
    ).fit()
    by_kind: dict[str, list[Path]] = {}
    for result in results:
        kind = kinds[result.config["case"]][0]
        folder = root / f"trial_{result.metrics['trial_id']}" / "work" / "checkpoint"
        by_kind.setdefault(kind, []).append(folder)
    assert len(by_kind["pruned"]) == 2
    for ckpt in by_kind["pruned"]:
        assert sorted(p.name for p in ckpt.iterdir()) == ["state.json"]  # its step stays, the weights go
        assert json.loads((ckpt / "state.json").read_text())["step"] < 4
    (failed,) = by_kind["fails"]
    assert sorted(p.name for p in failed.iterdir()) == ["optim.pt", "state.json", "trainable.pt"]  # retryable
    (best,) = by_kind["best"]
    assert sorted(p.name for p in best.iterdir()) == ["state.json"]


def test_a_finished_trial_loses_training_state_an_unrecorded_attempt_left_in_its_checkpoints(tmp_path: Path) -> None:
    from sweeps.training_state import drop_finished

    root = tmp_path / "sweep"

    def checkpoint(trial: str, name: str, files: tuple[str, ...]) -> Path:
        folder = root / trial / name
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_bytes(b"x")
        return folder

    # Finished: its final files landed in the checkpoint an orphaned attempt had filled with its state.
    mixed = checkpoint("trial_done", "checkpoint_000001", ("metrics.json", "state.json", "trainable.pt", "optim.pt"))
    (mixed / "shards").mkdir()
    (mixed / "shards" / "0.pt").write_bytes(b"s")
    # Still training (no final result anywhere): its checkpoint is what it resumes from, so it stays.
    live = checkpoint("trial_live", "checkpoint_000000", ("state.json", "trainable.pt", "optim.pt"))
    # Finished by its work/ folder's final result, with a stale training checkpoint there too.
    work = checkpoint("trial_work", "work/checkpoint", ("state.json", "trainable.pt"))
    (work.parent / "metrics.json").write_text("{}")

    deleted = drop_finished(root)
    assert sorted(p.name for p in mixed.iterdir()) == ["metrics.json", "state.json"]
    assert sorted(p.name for p in live.iterdir()) == ["optim.pt", "state.json", "trainable.pt"]
    assert sorted(p.name for p in work.iterdir()) == ["state.json"]
    assert len(deleted) == 4 and drop_finished(root) == []  # the second pass finds nothing
