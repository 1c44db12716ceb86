"""The `sweep` and `resume` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def add(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a budget-capped sweep (Ray Tune + Optuna + ASHA, logged to MLflow)")
    # Not argparse-required: a missing budget is reported with the fix, beside any other problem found.
    p.add_argument("--budget", help="the most the sweep may spend, in US dollars, e.g. 30 (required)")
    p.add_argument("--config", help="sweep config: a YAML path or a built-in name (default, smoke)")
    p.add_argument("--space", help="search space: a YAML path or a built-in name (default, smoke)")
    p.add_argument(
        "--name", help="sweep name: MLflow experiment and runs/sweeps/<name> (default: the config's)"
    )
    p.add_argument("--max-trials", type=int, help="stop after this many trials (the baseline is extra)")
    p.add_argument("--concurrency", type=int, help="trials running at once")
    p.add_argument("--price-per-hour", type=float, help="USD per trial-hour; overrides the price catalog")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    p.set_defaults(func=_sweep)

    r = sub.add_parser("resume", help="continue an interrupted sweep where it stopped")
    r.add_argument("name", help="the sweep's name")
    r.add_argument("--storage", default="runs/sweeps", help="where sweeps live (default runs/sweeps)")
    r.set_defaults(func=_resume)


def _sweep(args: argparse.Namespace) -> int:
    from sweeps.sweep import run

    overrides = {
        "name": args.name,
        "space": args.space,
        "max_trials": args.max_trials,
        "concurrency": args.concurrency,
        "price_per_hour": args.price_per_hour,
        "tracking_uri": args.tracking_uri,
    }
    return run(args.budget, args.config, overrides)


def _resume(args: argparse.Namespace) -> int:
    from sweeps.sweep import resume

    return resume(args.name, args.storage)
