"""A finished trial keeps its final files and no training state, wherever that state was written.

Training state is a checkpoint's trainable weights and optimizer (for full fine-tuning 16 bytes a
parameter: the largest thing a trial writes). A trial deletes its own once its test evaluation is done, and
Ray drops its older checkpoints (num_to_keep=1), but neither covers a copy written by an attempt the driver
never recorded: after a driver is killed, a trial's worker can outlive it for a moment, save a newer
checkpoint and upload it (on object storage, into `checkpoint_00000N` of the bucket) before it dies. The
resumed trial then continues from that newer checkpoint in its folder, and Ray, restored from a snapshot
that never saw the upload, writes the trial's final checkpoint into the same `checkpoint_00000N`: the
final files land beside the orphan's weights and optimizer, and Ray, which deletes only checkpoints older
than its newest, keeps them. So at a finished trial's end, at the sweep's end and in `sync`, every
checkpoint of a finished trial loses its training state, in the sweep's folder and in its bucket.

A finished trial is one with a final result (metrics.json) in its work/ folder or in one of Ray's
checkpoints of it. Failed or stopped trials are not touched here (sweeps/cleanup.py decides for those).
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path

from sweeps import storage

TRAINING_STATE = ("trainable.pt", "optim.pt", "shards")  # what a training checkpoint holds beyond state.json
FINISHED_MARK = "metrics.json"  # a trial's final result: written only after its test evaluation
log = logging.getLogger(__name__)


def drop_finished(root: Path, trial: str | None = None) -> list[str]:
    """Delete the training state of the finished trials of the sweep at `root` (only `trial`, a folder
    name such as trial_ab12, when given), locally and in its bucket; what was deleted, as paths or keys.
    A bucket that does not answer keeps the files, with a warning: that costs storage, not results."""
    deleted = _drop_local(root, trial)
    found = storage.remote_of(root)
    if found is not None:
        try:
            deleted += _drop_remote(found[0], trial)
        except Exception as exc:  # noqa: BLE001  any failure of the store: keep the files, say so
            log.warning("could not delete finished trials' training state from %s: %s", found[0].uri, exc)
    return deleted


def is_training_state(rel: str) -> bool:
    """Whether `rel` (a path in a sweep's folder, trial_x/checkpoint_000001/optim.pt) is training state in
    one of a trial's checkpoints."""
    parts = rel.split("/")
    return any(p.startswith("checkpoint") for p in parts[:-1]) and any(p in TRAINING_STATE for p in parts[1:])


def _drop_local(root: Path, only: str | None) -> list[str]:
    deleted = []
    for folder in sorted(root.glob(only or "trial_*")):
        checkpoints = [*folder.glob("checkpoint_*"), folder / "work" / "checkpoint"]
        finished = (folder / "work" / FINISHED_MARK).is_file() or any(
            (c / FINISHED_MARK).is_file() for c in checkpoints
        )
        if not finished:
            continue
        for checkpoint in checkpoints:
            for name in TRAINING_STATE:
                path = checkpoint / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.is_file():
                    path.unlink(missing_ok=True)
                else:
                    continue
                deleted.append(str(path))
    return deleted


def _drop_remote(remote: storage.Remote, only: str | None) -> list[str]:
    import pyarrow.fs as pafs

    fs, base = remote.fs()
    top = f"{base}/{only}" if only else base
    infos = fs.get_file_info(pafs.FileSelector(top, recursive=True, allow_not_found=True))
    by_trial: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1:]
        if rel.startswith("trial_") and "/" in rel:
            by_trial[rel.split("/", 1)[0]].append(rel)
    deleted = []
    for keys in by_trial.values():
        finished = any(k.endswith(f"/{FINISHED_MARK}") and "/checkpoint_" in k for k in keys)
        if not finished:
            continue
        for rel in keys:
            if is_training_state(rel):
                fs.delete_file(f"{base}/{rel}")
                deleted.append(f"{remote.uri.rstrip('/')}/{remote.name}/{rel}")
    return deleted
