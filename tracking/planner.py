"""`sweepboard plan`: memory, hours and dollars of one trial per method, before anything is spent.

hours = (startup + training FLOPs / achieved FLOP/s + evaluation time) / 3600, where achieved FLOP/s is the
device's datasheet peak (tracking/prices.yaml) x an achieved fraction (MFU) per method, and on CPU a FLOP
rate per thread measured on this project's recorded trials. Dollars = hours x the catalog price of what the
trial reserves. Memory (tracking/plan_model.py) against the device's memory says fits / needs N GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracking import calibration
from tracking import plan_model as pm
from tracking.prices import Catalog, DeviceInfo, gpu_by_key, price_per_hour

METHODS = ("none", "lora", "qlora", "full")

# Achieved fraction of the dense bf16 peak on a GPU, per method.
# lora: LLaMA-Factory's published 7B LoRA throughput, about 2,400 tokens/s on one A100 (the GPU as we read
#   their benchmark): 2,400 x 4 x 6.74e9 FLOPs/token = 6.5e13 FLOP/s = 0.21 of 312 TFLOPS.
# full: MosaicML llm-foundry's 7B training on A100-80GB at 64% MFU is a tuned pretraining stack (flash
#   attention, FSDP, packed 2,048-token sequences); plain transformers fine-tuning is nearer the LoRA stack,
#   so full gets the same 0.21 here and 0.64 stays the ceiling (FULL_MFU_CEILING, shown in the README).
# qlora: the lora figure x the QLoRA/LoRA training-rate ratio measured on this project's CPU trials
#   (CPU_TRAIN_FLOPS_PER_THREAD: 38.9 / 47.9 = 0.81, the NF4 dequantization each matmul pays): 0.21 x 0.81
#   = 0.17; no GPU figure for QLoRA is cited.
# torchtune's Llama 3.1 8B LoRA at about 4,700 tokens/s on an A6000 would be 4,700 x 4 x 8.0e9 = 1.5e14
#   FLOP/s, 97% of the A6000's 154.8 dense TFLOPS: more than any dense training reaches, so that figure
#   counts something else (several GPUs or packed tokens) and is not used.
GPU_MFU = {"lora": 0.21, "qlora": 0.17, "full": 0.21, "none": 0.21}
FULL_MFU_CEILING = 0.64
# On CPU: FLOP/s per thread, from bench/record/trials.jsonl (24 SmolLM2-135M trials, 1 thread, fp32, the
# quiet ones only: CPU seconds >= 0.85 x wall seconds); recomputed from the table by cpu_calibration() and
# checked against it by tests/tracking/test_planner.py.
CPU_TRAIN_FLOPS_PER_THREAD = {"lora": 47.9e9, "qlora": 38.9e9, "full": 51.4e9}
CPU_EVAL_FLOPS_PER_THREAD = 51.6e9
# Resident before any weight: python, torch, transformers, peft, bitsandbytes and the CLI's own imports. A
# `sweepboard train` of the tiny model (6 MB of weights) peaks at 0.86 GB here; a bare run_trial at 0.68.
CPU_RUNTIME_BYTES = 0.85e9
GPU_RUNTIME_BYTES = 1.0e9  # estimate: CUDA context and allocator slack, which the allocator's peak leaves out
# Per call on CPU, whatever the model's size: Python, autograd and the optimizer around each step (and each
# teacher-forced validation batch), and each generation call. A tiny-model trial, whose FLOPs are nothing,
# measured here on a quiet moment: 6 steps in 0.28 s, 2 validation batches in 0.15 s, 2 x 13 generation calls
# in 0.16 s (the same trial took 3-10x that while a test suite shared the 2 cores).
CPU_STEP_SECONDS = 0.05
CPU_DECODE_SECONDS = 0.006
STARTUP_SECONDS = 3.0  # data, tokenizer, model build: a tiny-model trial's load_seconds, 3.2-3.6 s here
LOAD_BYTES_PER_SECOND = 1e9  # reading and placing the weights
MEASURED_ROWS = 500  # rows tokenized to measure the data's example length; more changes the mean little


@dataclass(frozen=True)
class Device:
    key: str  # catalog key, or "cpu"
    name: str
    memory_gb: float  # of one GPU, or the machine's RAM
    flops: float  # peak per GPU (bf16 tensor), unused on CPU
    bandwidth: float  # bytes/s of one GPU's memory, unused on CPU
    bf16: bool  # whether weights are held in 16 bits, as the trainer's precision auto does
    # Per method: measured over planned seconds per phase on this device (tracking/calibration.py), and
    # how many finished trials they come from; a method without any is planned by the built-in rates.
    factors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return calibration.device_id(self.key, self.name, "bf16" if self.bf16 else "fp32")


@dataclass(frozen=True)
class Workload:
    """What one trial processes, from the trial config and the data's size."""

    cfg: Any  # trainers.config.TrialConfig: steps/epochs, batch, rank, targets, eval settings
    n_train: int
    n_val: int
    n_test: int
    tokens_per_example: float  # prompt + completion, capped at max_seq_len
    prompt_tokens: float


def device(catalog: Catalog, key: str | None, calibrated: bool = True) -> Device:
    """The planned device: a catalog GPU by key (an unknown key lists the known ones), or this CPU; with the
    calibration this device's finished trials left (`calibrated`), else the built-in rates alone."""
    dev = _device(catalog, key)
    if not calibrated:
        return dev
    return Device(dev.key, dev.name, dev.memory_gb, dev.flops, dev.bandwidth, dev.bf16, calibration.factors(dev.id))


def _device(catalog: Catalog, key: str | None) -> Device:
    if key is None or key == "cpu":
        from tracking.prices import detect_device
        from trainers.memory import device_memory_bytes
        from trainers.trial import cpu_has_native_bf16

        ram = device_memory_bytes("cpu") / 1e9
        return Device("cpu", detect_device().name, ram, 0.0, 0.0, cpu_has_native_bf16())
    gpu = gpu_by_key(catalog, key)
    if "peak_tflops_bf16" not in gpu.specs or "memory_bandwidth_gb_s" not in gpu.specs:
        raise ValueError(f"--gpu {key}: its catalog entry has no peak_tflops_bf16/memory_bandwidth_gb_s; add "
                         f"them (datasheet figures, with spec_source) to {catalog.path}")  # fmt: skip
    return Device(key, gpu.name, gpu.memory_gb, gpu.specs["peak_tflops_bf16"] * 1e12,
                  gpu.specs["memory_bandwidth_gb_s"] * 1e9, True)  # fmt: skip


def measured_tokens(cfg: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean tokens of prompt + completion and of the prompt, by the model's tokenizer where it has one
    here; otherwise every example is taken to fill max_seq_len."""
    from transformers import AutoTokenizer

    from trainers import model as model_mod
    from trainers.render import render

    seq = float(cfg.max_seq_len)
    try:
        tok = AutoTokenizer.from_pretrained(model_mod.resolve(cfg))
    except Exception:  # noqa: BLE001  no tokenizer, or a broken one (the sweep's own checks name what is wrong)
        return seq, seq - cfg.max_new_tokens
    rendered = render(rows[:MEASURED_ROWS], cfg.data, tok)
    prompts = [len(tok(r["prompt"])["input_ids"]) for r in rendered]
    whole = [min(seq, len(tok(r["prompt"] + r["completion"])["input_ids"]) + 1) for r in rendered]  # + eos
    return sum(whole) / len(whole), sum(prompts) / len(prompts)


def plan_method(shape: pm.Shape, method: str, work: Workload, dev: Device, gpus: int, cpus: float,
                catalog: Catalog) -> dict[str, Any]:  # fmt: skip
    """The plan of one method's trial on `gpus` x `dev` (0: the CPU) with `cpus` vCPUs."""
    cfg = work.cfg
    trained = _trained(shape, method, cfg)
    memory, checkpointing = _memory(shape, method, work, dev, trained)
    runtime = GPU_RUNTIME_BYTES if gpus else CPU_RUNTIME_BYTES
    states = memory["weights"] + memory["gradients"] + memory["optimizer"]
    per_device = states + memory["activations"] + runtime
    # Full fine-tuning shards weights, gradients and optimizer state over its workers (FSDP); LoRA and QLoRA
    # are data-parallel, each worker keeps the whole base. Workers split each step's batch.
    fit_on = lambda n: (states / n if method == "full" else states) + memory["activations"] / n + runtime  # noqa: E731
    needed = next((n for n in range(1, 65) if fit_on(n) <= dev.memory_gb * 1e9), None) if gpus else None
    if not gpus:
        fits = per_device <= dev.memory_gb * 1e9
        status, request = "fits" if fits else "does not fit", 0
    else:
        fits = needed is not None and needed <= gpus
        request = max(gpus, needed or gpus)
        status = "fits" if fits else (f"needs {needed} GPUs" if needed else "does not fit")
    seconds = _seconds(shape, method, work, dev, max(request, 1) if gpus else 0, cpus, checkpointing, memory)
    quote = price_per_hour(DeviceInfo("cpu", "cpu", 0, int(cpus)), request, cpus, catalog=catalog,
                           gpu_key=dev.key if request else None)  # fmt: skip
    hours = seconds["total"] / 3600
    usd = hours * quote.usd_per_hour
    return {
        "method": method,
        "fits": fits,
        "status": status,
        "gpus_needed": needed if gpus else 0,
        "memory_gb": pm.gb(fit_on(request) if gpus else per_device),
        "memory_breakdown_gb": {**{k: pm.gb(v) for k, v in memory.items()}, "runtime": pm.gb(runtime)},
        "gradient_checkpointing": checkpointing,
        "trained_params": trained,
        "tokens_to_train": round(seconds["train_tokens"]),
        "tokens_to_evaluate": round(seconds["eval_tokens"]),
        "tokens_per_second": round(seconds["train_tokens"] / seconds["train"], 1) if seconds["train"] else 0.0,
        "seconds": {p: round(seconds[p], 3) for p in calibration.PHASES},
        "calibrated_on_trials": int(dev.factors.get(method, {}).get("trials", 0)),
        "hours_per_trial": round(hours, 4),
        "usd_per_trial": round(usd, 6),
        "usd_per_hour": quote.usd_per_hour,
        "trials_affordable": None,  # set by the caller that has a budget (sweeps/plan_cli.py)
        "resources": {"gpus": request, "cpus": cpus, "gpu": dev.key if request else None},
    }


def _trained(shape: pm.Shape, method: str, cfg: Any) -> int:
    if method == "full":
        return shape.total_params()
    if method in ("lora", "qlora"):
        from search_spaces.targets import resolve_targets

        targets = resolve_targets(cfg.target_modules, set(shape.linear_dims()))
        return pm.lora_params(shape, targets, int(cfg.rank or 16))
    return 0


def _memory(shape: pm.Shape, method: str, work: Workload, dev: Device, trained: int) -> tuple[dict[str, float], bool]:
    """The memory parts, and whether checkpointing is on: the trainer's auto rule (trainers.memory), the
    activations of one micro-batch against a quarter of one device's memory."""
    from trainers.memory import BUDGET_FRACTION

    cfg = work.cfg
    # The trainer decides on max_seq_len; batches are grouped by length, so they hold about the mean.
    seq = min(cfg.max_seq_len, math.ceil(work.tokens_per_example))
    plain = pm.memory_bytes(shape, method, trained, cfg.batch_size, seq, dev.bf16, False)
    decided = pm.activation_bytes(shape, cfg.batch_size, cfg.max_seq_len, dev.bf16, False)
    choice = cfg.gradient_checkpointing
    on = choice == "true" or (choice == "auto" and decided > BUDGET_FRACTION * dev.memory_gb * 1e9)
    if method == "none" or not on:
        return plain, False
    return pm.memory_bytes(shape, method, trained, cfg.batch_size, seq, dev.bf16, True), True


def _seconds(shape: pm.Shape, method: str, work: Workload, dev: Device, gpus: int, cpus: float,
             checkpointing: bool, memory: dict[str, float]) -> dict[str, float]:  # fmt: skip
    cfg = work.cfg
    flops = trial_flops(shape, method, work, checkpointing)
    if gpus:
        rate = dev.flops * gpus * GPU_MFU[method]
        train, evaluate = flops["train"] / rate, flops["evaluate"] / rate
        # Each decoding step of a generation batch reads every weight once: memory-bound, not FLOP-bound.
        decode_steps = math.ceil(work.n_test / (cfg.eval_batch_size * gpus)) * cfg.max_new_tokens
        evaluate = max(evaluate, decode_steps * memory["weights"] / dev.bandwidth)
    else:
        train = flops["train"] / (CPU_TRAIN_FLOPS_PER_THREAD.get(method, 1.0) * cpus)
        train += cpu_overhead(flops)["train"]
        evaluate = flops["evaluate"] / (CPU_EVAL_FLOPS_PER_THREAD * cpus) + cpu_overhead(flops)["evaluate"]
    startup = STARTUP_SECONDS + memory["weights"] / LOAD_BYTES_PER_SECOND
    factor = dev.factors.get(method, {})  # this device's measured corrections, where it has any
    startup, train, evaluate = (factor.get(p, 1.0) * s for p, s in (("startup", startup), ("train", train),
                                                                   ("evaluate", evaluate)))  # fmt: skip
    return {"startup": startup, "train": train, "evaluate": evaluate, "total": startup + train + evaluate,
            "train_tokens": flops["train_tokens"], "eval_tokens": flops["eval_tokens"]}  # fmt: skip


def trial_flops(shape: pm.Shape, method: str, work: Workload, checkpointing: bool) -> dict[str, float]:
    """Training FLOPs, evaluation FLOPs (validation rounds teacher-forced, the test set's prompts and
    max_new_tokens generated per test example) and the tokens behind them."""
    from trainers.config import planned_steps

    cfg = work.cfg
    steps = planned_steps(cfg, work.n_train) if method != "none" else 0
    context = work.tokens_per_example
    train_tokens = steps * cfg.batch_size * cfg.grad_accum * work.tokens_per_example
    # Validation runs every eval_every steps and after the last; the baseline validates once.
    rounds = (steps // cfg.eval_every + (1 if steps % cfg.eval_every else 0)) if steps else 1
    eval_tokens = rounds * work.n_val * context + work.n_test * (work.prompt_tokens + cfg.max_new_tokens)
    batches = rounds * math.ceil(work.n_val / cfg.eval_batch_size)
    decodes = math.ceil(work.n_test / cfg.eval_batch_size) * (1 + cfg.max_new_tokens)
    return {"train": train_tokens * pm.train_flops_per_token(shape, method, context, checkpointing),
            "evaluate": eval_tokens * pm.forward_flops_per_token(shape, context),
            "train_tokens": train_tokens, "eval_tokens": eval_tokens,
            "steps": steps * cfg.grad_accum, "val_batches": batches, "decodes": decodes}  # fmt: skip


def cpu_overhead(flops: dict[str, float]) -> dict[str, float]:
    return {"train": flops["steps"] * CPU_STEP_SECONDS,
            "evaluate": flops["val_batches"] * CPU_STEP_SECONDS + flops["decodes"] * CPU_DECODE_SECONDS}  # fmt: skip


def cpu_calibration(rows: list[dict[str, Any]], shape: pm.Shape, tokens_per_example: float,
                    prompt_tokens: float) -> tuple[dict[str, float], float]:  # fmt: skip
    """FLOP/s per thread on CPU from recorded trials (bench/record.py rows): training per method from the
    step seconds, evaluation from the validation and test seconds, each less its per-call overhead
    (cpu_overhead); the median over the quiet trials."""
    from statistics import median

    from trainers.config import from_dict

    train: dict[str, list[float]] = {}
    evaluate: list[float] = []
    for row in rows:
        final = row["final"]
        if final["cpu_seconds"] < 0.85 * final["wall_seconds"]:
            continue  # recorded while the machine was busy: its wall time measures the wait too
        settings = {k: v for k, v in row["settings"].items() if k not in ("data", "model")}
        cfg = from_dict(settings)
        work = Workload(cfg, 0, int(row["settings"]["data"]["val_size"]), int(final["n_test"]),
                        tokens_per_example, prompt_tokens)  # fmt: skip
        flops = trial_flops(shape, cfg.method, work, False)
        per_token = flops["train"] / flops["train_tokens"]
        threads = float(row.get("threads", 1))
        tokens = float(row["curve"][-1]["tokens_trained"])
        overhead = cpu_overhead(flops)
        step_seconds = final["step_seconds"] - overhead["train"]
        train.setdefault(cfg.method, []).append(tokens * per_token / step_seconds / threads)
        eval_seconds = final["validate_seconds"] + final["test_seconds"] - overhead["evaluate"]
        evaluate.append(flops["evaluate"] / eval_seconds / threads)
    return {m: float(median(v)) for m, v in train.items()}, float(median(evaluate))
