"""The CPU default trial, run on a CUDA GPU for each method: throughput, memory, cost at the catalog price.

    python -m bench.gpu --out bench/gpu_results.json [--shape-from DIR] [--work DIR]

The model has the embedded default's shape (config.json and tokenizer of SmolLM2-135M-Instruct) with random
weights, so tokens/s, memory and cost match the default's while the weights need not travel to the GPU machine.
Quality of random weights means nothing, so none is recorded. Settings come from the `trial:` block of
sweeps/configs/default.yaml; CI has no GPU, so the result is committed as data (bench/gpu_results.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "sweeps" / "configs" / "default.yaml"
METHODS = ("none", "lora", "qlora", "full")
SETTINGS = (
    "steps",
    "batch_size",
    "eval_every",
    "eval_batch_size",
    "max_seq_len",
    "max_new_tokens",
    "precision",
)
SHAPE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
               "chat_template.jinja")  # fmt: skip
# What a trial reports that this benchmark keeps: speed, memory, size and money, never quality.
KEEP = (
    "tokens_per_second", "wall_seconds", "load_seconds", "train_seconds", "eval_seconds", "step_seconds",
    "validate_seconds", "test_seconds", "checkpoint_seconds", "tokens_trained", "steps_done",
    "peak_memory_mb", "weights_mb", "precision", "trainable_params", "total_params", "adapter_mb",
    "device", "device_name", "usd_per_hour", "price_source", "cost_usd", "device_hours", "learning_rate",
    "rank", "alpha", "target_modules", "status",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA device is visible; run it on a GPU machine", file=sys.stderr)
        return 2
    from trainers import run_trial
    from trainers.config import load, to_dict

    work = Path(args.work or tempfile.mkdtemp(prefix="sweepboard-gpu-"))
    model_dir = _random_model(_shape_dir(args.shape_from), work / "model")
    base = to_dict(load(DEFAULT_SWEEP))
    base.update(model=str(model_dir), device="cuda", precision="auto")
    base["data"]["lock_dir"] = str(work / "lock")

    # Warm-up, not recorded: CUDA context, cuBLAS handles, bitsandbytes' library and kernels.
    warm = {**base, "method": "qlora", "steps": 2, "eval_every": 2, "out": str(work / "warmup")}
    warm["data"] = {**base["data"], "lock_dir": str(work / "lock-warmup"), "test_size": 32, "val_size": 32}
    run_trial(warm)

    results: dict[str, Any] = {}
    for method in args.methods:
        shutil.rmtree(work / method, ignore_errors=True)  # a checkpoint left there would resume, not rerun
        metrics = run_trial({**base, "method": method, "learning_rate": None, "out": str(work / method)})
        results[method] = {k: metrics.get(k) for k in KEEP}
        print(f"bench.gpu: {method}: {json.dumps(results[method])}", flush=True)

    report = {
        "what": "the CPU default trial (sweeps/configs/default.yaml `trial:`) on one GPU, per method",
        "model": "SmolLM2-135M-Instruct shape (its config.json and tokenizer), random weights",
        "quality": "not reported: the weights are random",
        "settings": {k: base[k] for k in SETTINGS}
        | {"data": {k: base["data"][k] for k in ("source", "metric", "test_size", "val_size")}},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device(),
        "versions": _versions(),
        "methods": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench.gpu: wrote {args.out}", flush=True)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--shape-from", help="folder with the default's config.json and tokenizer files "
                   "(default: the converted embedded default in .cache/models)")  # fmt: skip
    p.add_argument("--work", help="folder for the random model and trial outputs (default: a temp folder)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    return p.parse_args(argv)


def _shape_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    from trainers import model as model_mod
    from trainers.config import from_dict

    return Path(model_mod.resolve(from_dict({})))  # converts the embedded default once if needed


def _random_model(shape: Path, out: Path) -> Path:
    """A model with the shape's config and tokenizer, random weights (seed 0), saved like the default."""
    from transformers import AutoConfig, AutoModelForCausalLM

    missing = [f for f in SHAPE_FILES[:3] if not (shape / f).is_file()]
    if missing:
        raise SystemExit(f"--shape-from {shape}: missing {missing}; give the default model's folder")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape), dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in SHAPE_FILES:  # the tokenizer as the default has it, byte for byte
        if (shape / name).is_file():
            shutil.copy(shape / name, out / name)
    return out


def _device() -> dict[str, Any]:
    from tracking.prices import detect_device

    props = torch.cuda.get_device_properties(0)
    info = detect_device()
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gb": round(props.total_memory / 1e9, 1),
        "multiprocessors": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "gpus_visible": info.gpus,
        "cpus": info.cpus,
        "driver": _driver(),
    }


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()),
    }
    for package in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


if __name__ == "__main__":
    raise SystemExit(main())
