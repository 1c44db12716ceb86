"""The planner's corrections, learned from finished trials: measured seconds over planned seconds, per device,
method and phase (startup, training, evaluation), kept in a JSON-lines file that `sweepboard plan` and the
sweep's admission read and every finished trial of a sweep appends to.

A factor of 1.6 on training says this device trained that method's tokens 1.6x slower than the planner's
FLOP model; the next plan multiplies its training seconds by the median of the last KEEP such factors. The
built-in rates (tracking/planner.py) are the starting point of a device that has measured nothing yet.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from statistics import median
from typing import Any

FILE_NAME = "calibration.jsonl"
KEEP = 20  # the newest factors per device and method: a machine that changed forgets its past in a sweep
PHASES = ("startup", "train", "evaluate")


def path() -> Path:
    """SWEEPBOARD_CALIBRATION, else calibration.jsonl beside the model cache (SWEEPBOARD_CACHE, .cache)."""
    given = os.environ.get("SWEEPBOARD_CALIBRATION")
    return Path(given) if given else Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / FILE_NAME


def device_id(key: str, name: str, precision: str) -> str:
    """What a factor is valid for: a catalog GPU (its key) or this CPU model, and the precision it computed in.
    CPUs differ (bf16 is native on some and emulated on others), so a CPU is named by its model."""
    return f"{key}|{name}|{precision}" if key == "cpu" else f"{key}|{precision}"


def measured(planned: Mapping[str, float], final: Mapping[str, Any]) -> dict[str, float] | None:
    """Measured over planned seconds per phase, from a trial's final metrics (sweepboard's trial metrics:
    wall, load, step, validate and test seconds) and the plan of that same trial; None when the trial did not
    run all its steps (a pruned or budget-stopped trial is not the trial the plan describes)."""
    if final.get("steps_done") != final.get("steps") or not final.get("wall_seconds"):
        return None
    evaluate = float(final["validate_seconds"]) + float(final["test_seconds"])
    train = float(final["step_seconds"])
    startup = float(final["wall_seconds"]) - train - evaluate  # loading, checkpoints, writing the result
    seconds = {"startup": startup, "train": train, "evaluate": evaluate}
    return {p: seconds[p] / planned[p] for p in PHASES if planned.get(p, 0) > 0 and seconds[p] > 0}


def append(entry: Mapping[str, Any], file: Path | None = None) -> None:
    """Add one trial's factors (device, method, factors, and what identifies the trial: sweep and trial id).
    A trial already in the file is not added again (a resumed sweep reports a finished trial once more)."""
    file = file or path()
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two sweeps may finish trials at once
        f.seek(0)
        text = f.read()
        key = (entry.get("sweep_id"), entry.get("trial_id"))
        if entry.get("trial_id") is not None and any((e.get("sweep_id"), e.get("trial_id")) == key for e in _parse(text)):
            return
        f.seek(0, os.SEEK_END)
        if text and not text.endswith("\n"):
            f.write("\n")  # end a line a killed writer left half-written, so this entry is not glued onto it
        f.write(json.dumps({**entry, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}) + "\n")


def load(file: Path | None = None) -> list[dict[str, Any]]:
    file = file or path()
    return _parse(file.read_text(encoding="utf-8")) if file.is_file() else []


def factors(device: str, entries: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Per method: the median factor of each phase over the newest KEEP trials of `device`, and their count."""
    by_method: dict[str, list[dict[str, float]]] = {}
    for e in load() if entries is None else entries:
        if e.get("device") == device and isinstance(e.get("factors"), dict):
            by_method.setdefault(str(e["method"]), []).append(e["factors"])
    out: dict[str, dict[str, Any]] = {}
    for method, rows in by_method.items():
        rows = rows[-KEEP:]
        phase = {p: float(median(r[p] for r in rows if p in r)) for p in PHASES if any(p in r for r in rows)}
        out[method] = {**phase, "trials": len(rows)}
    return out


def _parse(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process: the others still count
        if isinstance(row, dict):
            rows.append(row)
    return rows
