"""Leaderboard: runs read back from MLflow, ranked by test quality per dollar above a quality floor; the best
and recommended runs and the method decision chosen on validation, with paired tests on the test examples.

Public API (plain functions): load_runs -> rank_runs -> decide -> export / export_all; `build` and
`write_leaderboard` chain them; `add_cli` / `main` are the `sweepboard leaderboard` subcommand.
"""

from leaderboard.cli import Board, add_cli, build, main, write_leaderboard
from leaderboard.decision import Decision, decide
from leaderboard.exports import FORMATS, export, export_all
from leaderboard.load import load_runs
from leaderboard.rank import COLUMNS, pareto_flags, rank_runs

__all__ = [
    "COLUMNS", "FORMATS", "Board", "Decision", "add_cli", "build", "decide", "export", "export_all",
    "load_runs", "main", "pareto_flags", "rank_runs", "write_leaderboard",
]
