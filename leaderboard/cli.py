"""`sweepboard leaderboard NAME [NAME ...]`: the subcommand, to be hooked into sweeps/cli.py with add_cli."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leaderboard import ranges as space_ranges
from leaderboard.decision import Decision, decide
from leaderboard.exports import FORMATS, export, export_all
from leaderboard.load import load_runs
from leaderboard.rank import DEFAULT_MARGIN, rank_runs
from search_spaces.rates import UNKNOWN_RANGE, RateRange


@dataclass
class Board:
    ranked: pd.DataFrame
    decision: Decision
    warnings: list[str]


def build(names: Sequence[str], tracking_uri: str | None = None, min_quality: float | None = None,
          margin: float = DEFAULT_MARGIN, ranges: dict[str, RateRange] | None = None) -> Board:
    """Load from MLflow, rank and decide: everything a caller needs to export.

    `ranges`: the search space's learning-rate range per method group, for the decision's rate brackets (a
    sweep passes its own space's); None reads the space named by the sweeps' parent runs (param "space"),
    and where that cannot be read the decision assumes UNKNOWN_RANGE.
    """
    df, warnings = load_runs(list(names), tracking_uri)
    ranked = rank_runs(df, min_quality=min_quality, margin=margin)
    if ranges is None:
        sources = list(df.attrs.get("spaces", []))
        ranges = space_ranges.from_sources(sources)
        if ranges is None and sources:
            warnings.append(f"cannot read the search space {sources[0]!r} of the sweep's parent run here: the "
                            f"learning-rate brackets assume the range {UNKNOWN_RANGE.low:g}..{UNKNOWN_RANGE.high:g} "
                            "for every method")
    decision = decide(ranked, margin, ranges)
    return Board(ranked, decision, warnings + list(ranked.attrs.get("warnings", [])))


def write_leaderboard(names: Sequence[str], out_dir: str | Path, tracking_uri: str | None = None,
                      min_quality: float | None = None, margin: float = DEFAULT_MARGIN,
                      ranges: dict[str, RateRange] | None = None) -> list[Path]:
    """For the end of a sweep: leaderboard.csv/.json/.md/.html in `out_dir`, to log to the parent run."""
    board = build(names, tracking_uri, min_quality, margin, ranges)
    return export_all(board.ranked, board.decision, out_dir, board.warnings)


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `leaderboard` on a subparsers object; the parsed args carry func=run(args) -> exit code."""
    parser = subparsers.add_parser(
        "leaderboard", help="rank the runs of one or more sweeps by quality per dollar",
        description="Rank the runs of one or more sweeps (read from MLflow) by test quality per dollar "
                    "among runs at or above a quality floor, mark the Pareto front, choose the best and the "
                    "recommended run on validation quality, and state the method decision (paired tests on "
                    "the per-example test scores).",
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="sweep name(s); several sweeps must share one locked test set")
    parser.add_argument("--format", choices=(*FORMATS, "all"), default="table",
                        help="output format (default: table); 'all' writes the four files into the "
                             "folder --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="file to write (a folder with --format all); default: the terminal")
    parser.add_argument("--min-quality", type=_quality, default=None,
                        help="quality floor in 0..1 (default: 0.9 x the best test quality)")
    parser.add_argument("--margin", type=_quality, default=DEFAULT_MARGIN,
                        help="how much full fine-tuning must beat the best LoRA/QLoRA run by to be "
                             "recommended, in quality units (default 0.02 = 2 points)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "all" and args.out is None:
        print("error: --format all needs --out FOLDER to write leaderboard.csv/.json/.md/.html into",
              file=sys.stderr)
        return 2
    try:
        board = build(args.names, args.tracking_uri, args.min_quality, args.margin)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in board.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format == "all":
        for path in export_all(board.ranked, board.decision, args.out, board.warnings):
            print(path)
    else:
        written = export(board.ranked, board.decision, args.format, args.out, board.warnings)
        if written is not None:
            print(written, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweepboard leaderboard")
    configure(parser)
    args = parser.parse_args(argv)
    return run(args)


def _quality(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a quality between 0 and 1 (0.02 = 2 points), got {value}"
        )
    return value

