"""What a sweep's driver reads around it: the sweep's state file (and id), the git commit, a Ray to run on.

Used by sweeps/sweep.py (which starts a sweep) and sweeps/tune_run.py (which runs it) alike, so neither
imports the other for these.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from sweeps import storage

STATE_FILE = "sweepboard.json"  # what `resume` needs to rebuild the sweep: config, budget, price, sweep id
SWEEPBOARD_FILES = (STATE_FILE, "budget.json", "baseline", "leaderboard")  # ours, beside Ray's in the sweep folder


def known_sweeps(folder: Path, uri: str | None = None) -> list[str]:
    """The names of the sweeps in a storage folder, or under an object store URI (those with a state
    file), for "no such sweep" errors."""
    if uri is not None and storage.is_remote(uri):
        return storage.known_remote(uri, STATE_FILE)
    return sorted(p.name for p in folder.glob("*") if (p / STATE_FILE).is_file())


def open_sweep(uri: str, name: str) -> Path:
    """The folder of an existing sweep `name` in storage `uri` for resume, sync and export: on an object
    store its mirror, with sweepboard's own files brought in from the bucket (Ray's trial folders stay
    there: Ray reads them itself)."""
    root = storage.sweep_folder(uri, name)
    storage.pull(root, only=lambda rel: rel.split("/")[0] in SWEEPBOARD_FILES)
    return root


def new_sweep_id() -> str:
    """The id of a new sweep: what tells it from an earlier sweep of the same name in MLflow."""
    return uuid.uuid4().hex


def sweep_id(root: Path) -> str:
    """The id of the sweep in folder `root`. A folder from before sweeps had ids gets one, written back, so
    every later resume and sync of it agree."""
    path = root / STATE_FILE
    state: dict[str, Any] = json.loads(path.read_text())
    if not state.get("sweep_id"):
        state["sweep_id"] = new_sweep_id()
        path.write_text(json.dumps(state, indent=2, default=str))
        storage.push(path)
    return str(state["sweep_id"])


def record_end(root: Path, status: str) -> None:
    """Keep how the sweep's driver ended (finished, interrupted, failed) in its folder: `sweepboard sync`
    ends the parent run so when MLflow did not answer at the end."""
    path = root / STATE_FILE
    state = json.loads(path.read_text())
    state["ended"] = status
    path.write_text(json.dumps(state, indent=2, default=str))
    storage.push(path)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ray_init(cfg: Any) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # A fault drill (trainers/faults.py) must reach workers on other nodes too; a local Ray inherits it.
    fault = {k: v for k, v in os.environ.items() if k == "SWEEPBOARD_FAULT"}
    runtime_env = {"env_vars": fault} if fault else None
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)  # join the existing cluster
    else:
        # "local": always a Ray of our own, never a cluster someone started here with `ray start`.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
