"""How a sweep ends: whether Tune caught a Ctrl-C, what it spent, the leaderboard, and the parent run's end
(FINISHED when the sweep finished, KILLED when it was interrupted, FAILED when it crashed)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sweeps import config as sweep_config
from sweeps import storage
from sweeps.runtime import record_end
from tracking import names

if TYPE_CHECKING:
    from search_spaces.rates import RateRange

console = Console(highlight=False)


@contextlib.contextmanager
def tune_interrupts() -> Iterator[Callable[[], bool]]:
    """Whether Tune caught a Ctrl-C (or SIGUSR1) during fit(): it stops, saves and returns as if done.

    Tune's handler puts back the SIGINT handler it found when it fires, so a handler of ours still in place
    after fit() means that Tune caught one (a second Ctrl-C reaches ours: a KeyboardInterrupt, as always)."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER",
                                                                                   "0") != "0":
        yield lambda: False  # Tune catches nothing then; a Ctrl-C is a KeyboardInterrupt
        return
    previous = signal.getsignal(signal.SIGINT)

    def ours(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, ours)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, previous)


def finish(cfg: sweep_config.SweepConfig, client: Any, parent: str, books: dict[str, Any], root: Path,
           uri: str) -> None:  # fmt: skip
    """Close the sweep's books: its spend, the leaderboard, and the parent run's end as `books` says."""
    from leaderboard import build, export_all
    from tracking import mlflow_store

    status, grid, ledger = books["status"], books["grid"], books["ledger"]
    # An object store that stopped answering: the parent run is still ended, then its error is raised.
    lost: list[storage.StorageError] = []
    try:
        record_end(root, status)  # first: if MLflow does not answer now, `sweepboard sync` ends the parent so
    except storage.StorageError as exc:
        lost.append(exc)
    # A finished trial keeps no training state (sweeps/training_state.py): also what an attempt the driver
    # never recorded wrote into one of its checkpoints, here and in the bucket.
    from sweeps.training_state import drop_finished

    drop_finished(root)
    # The one spent figure (Ray's storage: every trial that reported, pruned, failed and lost attempts
    # included, plus the baseline); the ledger file is made to agree, and `sync` reports the same.
    from sweeps.ledger import close_books

    try:
        spent = close_books(root, ledger)
    except storage.StorageError as exc:
        lost.append(exc)
        spent = ledger.spent() if ledger is not None else 0.0
    out_dir = root / "leaderboard"
    paths: list[Path] = []
    try:
        board = build([cfg.name], uri, None, 0.02, ranges=rate_ranges(cfg))
        paths = export_all(board.ranked, board.decision, out_dir, board.warnings)
        from leaderboard import export

        export(board.ranked, board.decision, "table", None, board.warnings)
    except Exception as exc:  # the sweep's results are in MLflow either way; say why the board is missing
        console.print(f"[yellow]leaderboard not written: {exc}[/]")
    if paths:
        try:
            storage.push(out_dir)  # on object storage, into the bucket beside Ray's results
        except storage.StorageError as exc:
            lost.append(exc)
    mlflow_store.finish_sweep_run(client, parent, {"spent_usd": spent}, [str(p) for p in paths], status)
    budget = f" of ${ledger.budget_usd:.2f}" if ledger is not None else ""  # the ledger counts the baseline
    console.print(f"spent ${spent:.4f}{budget}" + ("" if status == "finished" else f" (sweep {status})"))
    failed = [r for r in grid if r.error] if grid is not None else []
    if failed:  # the sweep itself succeeded; say which trials did not and where to read why
        where = ", ".join(str(r.path) for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        console.print(f"[yellow]{len(failed)} trial(s) failed: why in MLflow (tag {names.TAG_ERROR}) and in "
                      f"error.txt and trial.log of {where}[/]")  # fmt: skip
    if paths:
        found = storage.remote_of(root)  # on object storage, where it is kept: the bucket
        where = f"{found[0].uri.rstrip('/')}/{cfg.name}/leaderboard" if found else str(out_dir)
        console.print(f"leaderboard: {where}/leaderboard.{{csv,json,md,html}}")
        from sweeps.export import export_hint

        hint = export_hint(cfg.name, board.decision.recommended, board.decision.reason, cfg.storage)
        if hint:
            console.print(hint, markup=False, soft_wrap=True)  # [MERGE=1] is text, not a style
    if status == "interrupted":
        console.print(f"continue it with `make resume NAME={cfg.name}` (sweepboard resume {cfg.name})")
    experiment = mlflow_store.ensure_experiment(client, cfg.name)
    console.print(f"MLflow: {uri} (experiment {cfg.name!r}); browse with `make ui`, then open "
                  f"http://127.0.0.1:5000{mlflow_store.ui_path(experiment)}")
    if lost and sys.exc_info()[1] is None:  # else what is raising already says it (the first failure)
        raise lost[0]


def rate_ranges(cfg: sweep_config.SweepConfig) -> dict[str, RateRange] | None:
    """The sweep's search space's learning-rate range per method group: where the decision's rate brackets
    may close at the edge of what the sweep could try. None (UNKNOWN_RANGE) when the space cannot be read."""
    from leaderboard.ranges import from_space

    return from_space(cfg.space)
