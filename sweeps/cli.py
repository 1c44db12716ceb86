"""`sweepboard`: the console script. Subcommands: train, lock, sweep, resume, leaderboard.

Heavy imports (torch, ray, mlflow) happen inside the subcommand that needs them, so `--help` and input
errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweepboard", description="Budget-capped fine-tuning sweeps ranked by quality per dollar."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_lock(sub)
    _add_sweep(sub)
    from leaderboard import add_cli

    add_cli(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nsweepboard: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # our input errors are ValueErrors that name the problem and the fix
        print(f"sweepboard {args.command}: error: {exc}", file=sys.stderr)
        return 2


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
            "batch_size", "precision", "device", "price_per_hour", "out")  # fmt: skip
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
    shown = ("method", "test_quality", "val_quality", "n_test", "wall_seconds", "tokens_per_second",
             "peak_memory_mb", "trainable_params", "adapter_mb", "cost_usd", "status")  # fmt: skip
    print(json.dumps({k: metrics[k] for k in shown}, indent=2))
    print(f"wrote {cfg.out}/metrics.json")
    return 0


def _add_lock(sub: Any) -> None:
    p = sub.add_parser("lock", help="carve and lock the test set (done automatically on first use)")
    p.add_argument("--data", default="builtin:dates", help="builtin:dates or a .jsonl/.csv/.parquet file")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--test-size", type=int, default=300)
    p.add_argument("--val-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lock-dir", help="where the lock goes (default .cache/locks/<data name>)")
    p.set_defaults(func=_lock)


def _lock(args: argparse.Namespace) -> int:
    from trainers import data as data_mod
    from trainers.config import DataConfig

    cfg = DataConfig(
        source=args.data,
        prompt_column=args.prompt_column,
        completion_column=args.completion_column,
        test_size=args.test_size,
        val_size=args.val_size,
        seed=args.seed,
        lock_dir=args.lock_dir,
    )
    existed = (data_mod.lock_path(cfg) / "manifest.json").exists()
    splits = data_mod.prepare(cfg)
    verb = "verified existing" if existed else "created"
    print(f"{verb} lock {splits.lock_dir}: {len(splits.test)} test examples, sha256 {splits.sha256}")
    print(f"train {len(splits.train)}, validation {len(splits.val)} (carved from the rest)")
    return 0


def _add_sweep(sub: Any) -> None:
    from sweeps import sweep_cli

    sweep_cli.add(sub)


if __name__ == "__main__":
    sys.exit(main())
