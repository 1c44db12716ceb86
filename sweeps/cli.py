"""`sweepboard`: the console script. Subcommands: train, lock, sweep, resume, sync, leaderboard, export, plan.

Heavy imports (torch, ray, mlflow) happen inside the subcommand that needs them, so `--help` and input
errors answer at once.

Exit codes: 0 done; 2 bad input (named, with the fix); 3 the MLflow tracking server stopped answering:
nothing trained is lost (it is in Ray's storage), and the message names the `sweepboard sync` to run
once the server answers again; 4 the object store (storage: s3://...) stopped taking writes: what it
acknowledged is kept, and the message names the `sweepboard resume` to run once it answers; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_TRACKING_DOWN = 3
EXIT_STORAGE_DOWN = 4
# MLflow's HTTP client retries a request for about 4 minutes by default (7 retries, growing pauses).
# tracking/mlflow_store.py retries transient errors itself, so a server that is gone shows in seconds.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweepboard", description="Budget-capped fine-tuning sweeps ranked by quality per dollar."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_lock(sub)
    _add_sweep(sub)
    _add_sync(sub)
    from sweeps import export, plan_cli

    plan_cli.add(sub)

    export.add(sub)
    from leaderboard import add_cli

    add_cli(sub)
    args = parser.parse_args(argv)
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nsweepboard: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # our input errors are ValueErrors that name the problem and the fix
        print(f"sweepboard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        diverged = getattr(sys.modules.get("trainers.train"), "Diverged", None)  # no torch import for it here
        if diverged is not None and isinstance(exc, diverged):  # `train` at a rate too high: a result
            print(f"sweepboard {args.command}: diverged: {exc}", file=sys.stderr)
            return 3
        lost = _storage_down(exc)
        if lost is not None:
            print(f"sweepboard {args.command}: error: {lost}", file=sys.stderr)
            return EXIT_STORAGE_DOWN
        if not _tracking_down(exc):
            raise
        uri = str(getattr(exc, "uri", ""))
        print(f"sweepboard {args.command}: error: {exc}\n{_after_outage(args, uri)}", file=sys.stderr)
        return EXIT_TRACKING_DOWN


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="run one fine-tuning trial and write DIR/metrics.json")
    p.add_argument("--method", choices=["none", "lora", "qlora", "full"])
    p.add_argument(
        "--model", help="embedded default 'smollm2-135m', 'builtin:tiny', a local HF folder, or a hub id"
    )
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument(
        "--targets", dest="target_modules", help="attention | attention+mlp | all-linear | q_proj,v_proj,..."
    )
    p.add_argument("--dropout", dest="lora_dropout", type=float)
    p.add_argument("--lr", dest="learning_rate", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=float, help="passes over the training rows, instead of --steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data", help="builtin:dates or a .jsonl/.csv/.parquet file")
    p.add_argument("--price-per-hour", type=float, help="USD per hour; overrides the price catalog")
    p.add_argument("--config", help="YAML trial config (command-line options override it)")
    p.add_argument(
        "--out", required=True, help="output folder (metrics.json, test_predictions.jsonl, adapter/)"
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from trainers import config as config_mod
    from trainers.trial import run_trial

    keys = ("method", "model", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate", "steps",
            "epochs", "batch_size", "precision", "device", "price_per_hour", "out")  # fmt: skip
    overrides = {k: getattr(args, k) for k in keys}
    if args.config:
        cfg = config_mod.load(args.config, overrides)
    else:
        cfg = config_mod.from_dict({k: v for k, v in overrides.items() if v is not None})
    if args.data:
        cfg.data.source = args.data

    def progress(metrics: dict[str, Any], _ckpt: str | None) -> None:
        print(
            f"step {metrics['step']:>5}  train_loss {metrics['train_loss']:.4f}  "
            f"val_quality {metrics['val_quality']:.3f}  {metrics['elapsed_seconds']:.0f}s  "
            f"${metrics['cost_usd']:.4f}",
            flush=True,
        )

    metrics = run_trial(cfg, report=progress)
    shown = ("method", "steps", "test_quality", "val_quality", "n_test", "truncated_train", "truncated_test",
             "wall_seconds", "tokens_per_second", "peak_memory_mb", "trainable_params", "adapter_mb", "cost_usd",
             "status")  # fmt: skip
    print(json.dumps({k: metrics[k] for k in shown}, indent=2))
    print(f"wrote {cfg.out}/metrics.json")
    return 0


def _add_lock(sub: Any) -> None:
    p = sub.add_parser("lock", help="carve and lock the test set (done automatically on first use)")
    p.add_argument("--data", default="builtin:dates", help="builtin:dates or a .jsonl/.csv/.parquet file")
    p.add_argument("--format", choices=["auto", "plain", "chat"], default="auto",
                   help="plain: prompt/completion columns; chat: a messages column (default auto)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--test-source", help="your own held-out file: it becomes the locked test set as it is "
                   "(never split), and rows of --data that match it are removed from training")
    p.add_argument("--test-size", type=int, help="rows carved from --data for the test set (default 300; "
                   "not with --test-source)")
    p.add_argument("--val-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lock-dir", help="where the lock goes (default .cache/locks/<data name>)")
    p.set_defaults(func=_lock)


def _lock(args: argparse.Namespace) -> int:
    from trainers import config as config_mod
    from trainers import data as data_mod

    data = {"source": args.data, "format": args.format, "prompt_column": args.prompt_column,
            "completion_column": args.completion_column, "test_source": args.test_source,
            "test_size": args.test_size, "val_size": args.val_size, "seed": args.seed,
            "lock_dir": args.lock_dir}  # fmt: skip
    cfg = config_mod.from_dict({"data": {k: v for k, v in data.items() if v is not None}}).data
    splits = data_mod.prepare(cfg)
    print(data_mod.describe(splits))
    return 0


def _add_sweep(sub: Any) -> None:
    from sweeps import sweep_cli

    sweep_cli.add(sub)


def _add_sync(sub: Any) -> None:
    p = sub.add_parser("sync", help="copy a sweep's results from Ray's storage into MLflow (after MLflow was "
                       "down); writes only what MLflow lacks, so running it again changes nothing")
    p.add_argument("name", help="the sweep's name")
    p.add_argument("--storage", default="runs/sweeps", help="where sweeps live (default runs/sweeps)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep config's, else "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    from sweeps.sync import sync

    return sync(args.name, args.storage, args.tracking_uri)


def _storage_down(exc: BaseException) -> BaseException | None:
    """The object store's error behind `exc` (Tune may wrap what its callbacks raised), if there is one."""
    storage = sys.modules.get("sweeps.storage")
    seen: BaseException | None = exc
    while storage is not None and seen is not None:
        if isinstance(seen, storage.StorageError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tracking_down(exc: BaseException) -> bool:
    conn = sys.modules.get("tracking.mlflow_conn")  # loaded by whatever raised it; no mlflow import here
    return conn is not None and isinstance(exc, conn.TrackingUnavailable)


def _after_outage(args: argparse.Namespace, uri: str) -> str:
    """What to do after the tracking server went away during `args.command`."""
    if args.command == "sync":
        return "Nothing is lost; run the same command again once the server answers (it goes on from there)."
    if args.command not in ("sweep", "resume"):
        return f"Start the server or point --tracking-uri / MLFLOW_TRACKING_URI elsewhere ({uri})."
    name, storage = args.name, getattr(args, "storage", None)
    if args.command == "sweep":
        try:
            from sweeps import config as sweep_config

            cfg = sweep_config.load(args.config, {"name": args.name})
            name, storage = cfg.name, cfg.storage
        except Exception:  # noqa: BLE001  the message is still useful without the config's values
            name = name or "NAME"
    from sweeps.mlflow_callback import sync_command

    where = storage or "runs/sweeps"
    root = f"{where.rstrip('/')}/{name}" if "://" in where else str(Path(where).resolve() / name)
    command = sync_command(name, uri, root)
    return (f"Nothing trained is lost: every result, metric and artifact is in Ray's storage ({root}).\n"
            f"Once the server answers again, copy them into MLflow with: {command}\n"
            f"If the sweep did not finish, continue it with `sweepboard resume {name}`.")


if __name__ == "__main__":
    sys.exit(main())
