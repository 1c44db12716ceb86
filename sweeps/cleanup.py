"""What a trial that ended without finishing leaves behind: its training state goes, its record stays.

A trial ASHA stops (or the budget ends) never reaches its test evaluation, so its checkpoint's weights and
optimizer state (for full fine-tuning, 16 bytes a parameter) would only fill the disk: nothing resumes a
trial Tune has terminated, and the leaderboard does not rank it. Its state.json (step, times, validation)
and its log stay. A trial that errored keeps its checkpoint: Tune may retry it, and `resume` can restart it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeps.trainable import FINAL_FILES
from sweeps.training_state import TRAINING_STATE, drop_finished

log = logging.getLogger(__name__)


class DropUnfinishedState(Callback):
    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        root = (trial.config or {}).get("sweepboard_root")
        if root is None:
            return
        work = Path(root) / f"trial_{trial.trial_id}" / "work"
        if (work / FINAL_FILES[0]).is_file():
            # Finished: the trial removed its own training state after writing its final model; a copy
            # written by an attempt the driver never recorded may still sit in one of its checkpoints.
            drop_finished(Path(root), f"trial_{trial.trial_id}")
            return
        drop_training_state(work / "checkpoint")
        if (trial.config or {}).get("sweepboard_remote") and trial.checkpoint is not None:
            drop_stored_state(trial.checkpoint)  # on object storage, Ray's copy holds the whole state


def drop_stored_state(checkpoint: Any) -> None:
    """The training state in Ray's copy of a checkpoint (in the bucket on object storage); its state.json
    stays. A store that does not answer keeps the files: that costs storage, not the sweep."""
    import pyarrow.fs as pafs

    for name in TRAINING_STATE:
        path = f"{checkpoint.path}/{name}"
        try:
            kind = checkpoint.filesystem.get_file_info(path).type
            if kind == pafs.FileType.Directory:
                checkpoint.filesystem.delete_dir(path)
            elif kind == pafs.FileType.File:
                checkpoint.filesystem.delete_file(path)
        except OSError as exc:
            log.warning("could not delete %s of a stopped trial's checkpoint: %s", path, exc)


def drop_training_state(checkpoint: Path) -> None:
    for name in TRAINING_STATE:
        path = checkpoint / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
