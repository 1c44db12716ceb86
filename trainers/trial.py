"""One trial, top to bottom: config -> data -> model -> train -> evaluate on the locked test set -> metrics.

`run_trial` imports neither ray nor mlflow. The sweep passes `report` (a wrapper around Ray Tune's report);
standalone (`sweepboard train`) it prints progress instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tracking.cost import device_hours
from tracking.prices import PriceQuote, detect_device, price_per_hour
from trainers import data as data_mod
from trainers import distributed, evaluate, model_id, render
from trainers import model as model_mod
from trainers.config import ConfigError, TrialConfig, batch_problem, from_dict, planned_steps
from trainers.memory import checkpointing_on, weight_dtype
from trainers.metrics import choose_labels, scorer
from trainers.train import Report, encode, train


def run_trial(config: TrialConfig | dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    cfg = config if isinstance(config, TrialConfig) else from_dict(config)
    out = Path(cfg.out or Path("runs") / "trials" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # A resumed trial carries its earlier wall time: cost is for all of it, not just this attempt.
    prior_seconds = _prior_seconds(out)
    memory = PeakMemory()

    # Config -> device, precision, price.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    autocast = _autocast_dtype(cfg.precision, device)
    quote = _quote(cfg, device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    def elapsed() -> float:
        return prior_seconds + time.perf_counter() - started

    # Data: the locked test set is created on first use and verified on every later one. Rows stay raw until
    # rendered for the model (render.py), the same way for training, validation and test.
    splits = data_mod.prepare(cfg.data)
    # What would fail later (too few rows, no chat template) is refused here, before the model is loaded.
    plan = _plan(cfg, splits)
    cfg = dataclasses.replace(cfg, steps=plan["steps"])

    # Model.
    t0 = time.perf_counter()
    path = model_mod.resolve(cfg)
    checkpointing = cfg.method != "none" and checkpointing_on(
        cfg.gradient_checkpointing, model_mod.config_of(path, cfg), cfg.batch_size, cfg.max_seq_len, device,
        autocast,
    )  # fmt: skip
    tok, model = model_mod.load(path, cfg, device, base_dtype(cfg.method, autocast), checkpointing)
    trainable, total = model_mod.count_params(model)
    weights_mb = model_mod.weights_bytes(model) / 2**20
    # On several workers (torch.distributed set up by whoever started them): DDP or FSDP, see distributed.
    world = distributed.current()
    net = distributed.wrap(model, cfg.method, world, device)
    load_seconds = time.perf_counter() - t0
    memory.start()

    # Train.
    t0 = time.perf_counter()
    state: dict[str, Any] = {"step": 0, "tokens": 0, "val": {}, "stopped_early": False, "train_seconds": 0.0}
    val_enc = encode(tok, render.render(splits.val, cfg.data, tok), cfg.max_seq_len)
    train_enc = None
    if cfg.method != "none":
        train_enc = encode(tok, render.render(splits.train, cfg.data, tok), cfg.max_seq_len)
    tokenize_seconds = time.perf_counter() - t0
    if world.main:
        _warn_truncated(train_enc.truncated if train_enc else 0, len(splits.train), "training", cfg)
        _warn_truncated(val_enc.truncated, len(splits.val), "validation", cfg)
    if train_enc is not None:
        state = train(
            net,
            tok,
            train_enc,
            val_enc,
            cfg,
            device,
            autocast,
            out / "checkpoint",
            _priced(report, quote),
            elapsed,
        )
    else:
        from trainers.train import validate

        t1 = time.perf_counter()
        state["val"] = validate(net, val_enc, tok.pad_token_id, cfg, device, autocast)
        state["validate_seconds"] = time.perf_counter() - t1
    train_seconds = time.perf_counter() - t0

    # Evaluate once on the locked test set, after checking it is still the set that was locked. Prompt and
    # generated answer fit max_seq_len, as prompt and answer did in training; a longer prompt loses its start.
    t0 = time.perf_counter()
    test, sha = data_mod.verify_lock(splits.lock_dir)
    prompts = [render.render_prompt(r, cfg.data, tok) for r in test]
    predictions, cut = evaluate.generate_answers(
        net, tok, prompts, cfg.max_seq_len - cfg.max_new_tokens, cfg.max_new_tokens, cfg.eval_batch_size,
        device, autocast,
    )  # fmt: skip
    if world.main:
        _warn_truncated(sum(cut), len(test), "test", cfg)
    stops = evaluate.stop_strings(test, cfg.data.stop)
    predictions = [evaluate.cut_at_stop(p, stops) for p in predictions]
    quality, scores = evaluate.score(test, predictions, scorer(cfg.data.metric, plan["labels"]))
    test_seconds = time.perf_counter() - t0
    if world.main:
        evaluate.write_predictions(out / "test_predictions.jsonl", test, prompts, predictions, scores, cut)
    adapter_mb = _save_final_model(net, tok, cfg, out, world)
    eval_seconds = time.perf_counter() - t0
    memory.stop()

    # Report.
    wall = elapsed()
    metrics = {
        "method": cfg.method,
        "model": cfg.model,
        # What an exported adapter needs and `sweepboard export` checks: the base's folder and content hash.
        **model_id.identity(path, cfg.cache_dir),
        "rank": cfg.rank if cfg.method in ("lora", "qlora") else None,
        "alpha": cfg.alpha if cfg.method in ("lora", "qlora") else None,
        "target_modules": _targets(model) if cfg.method in ("lora", "qlora") else None,
        "lora_dropout": cfg.lora_dropout if cfg.method in ("lora", "qlora") else None,
        "learning_rate": cfg.learning_rate if cfg.method != "none" else None,
        "steps": cfg.steps if cfg.method != "none" else 0,
        "epochs": cfg.epochs if cfg.method != "none" else None,
        "steps_done": state["step"],
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "max_seq_len": cfg.max_seq_len,
        "workers": world.size,
        "precision": "bf16" if autocast == torch.bfloat16 else "fp32",
        "weight_dtype": weight_dtype(model),  # the frozen (base) weights: float32, bfloat16, or nf4 (QLoRA)
        "compute_dtype": str(autocast or torch.float32).removeprefix("torch."),  # the matmuls, under autocast
        "gradient_checkpointing": checkpointing,
        "attn_implementation": model_mod.attn_implementation(model),
        "metric": cfg.data.metric,
        "data_format": plan["data_format"],
        **({"labels": plan["labels"]} if plan["labels"] is not None else {}),
        "test_quality": quality,
        "val_quality": state["val"].get("val_quality"),
        "val_loss": state["val"].get("val_loss"),
        "test_set_sha256": sha,
        "n_test": len(test),
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "train_set_sha256": data_mod.content_sha256(splits.train),
        "val_set_sha256": data_mod.content_sha256(splits.val),
        "truncated_train": train_enc.truncated if train_enc is not None else 0,
        "truncated_val": val_enc.truncated,
        "truncated_test": sum(cut),
        "wall_seconds": wall,
        "load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        # The breakdown the overhead benchmark reads: compute (steps, validation, test generation) vs the rest.
        "tokenize_seconds": tokenize_seconds,
        "step_seconds": state["train_seconds"],
        "validate_seconds": state.get("validate_seconds", 0.0),
        "checkpoint_seconds": state.get("checkpoint_seconds", 0.0),
        "test_seconds": test_seconds,
        "tokens_trained": state["tokens"],
        "tokens_per_second": state["tokens"] / state["train_seconds"] if state["train_seconds"] else 0.0,
        "peak_memory_mb": memory.peak_mb(device),
        # What the weights themselves hold (4-bit NF4 under QLoRA): the process peak on CPU also counts
        # the allocator's caches, activations and libraries, which hide QLoRA's saving there.
        "weights_mb": weights_mb,
        "trainable_params": trainable if cfg.method != "none" else 0,
        "total_params": total,
        "adapter_mb": adapter_mb,
        # Where it ran: a GPU's catalog key, or "cpu" (even if GPUs were reserved and priced).
        "device": quote.device_key if device == "cuda" and quote.device_key != "override" else device,
        "device_name": detect_device().name,
        "usd_per_hour": quote.usd_per_hour,
        "price_source": quote.source,
        "cost_usd": wall * quote.usd_per_hour / 3600,
        # A sweep's quote is already for the whole reservation; a trial run alone prices one worker.
        "device_hours": device_hours(wall, *(
            (quote.gpus, quote.cpus) if cfg.reserved_gpus is not None else
            (quote.gpus * world.size, quote.cpus * world.size))),  # fmt: skip
        "status": "stopped" if state["stopped_early"] else "finished",
    }
    if world.main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        # The trial is over: its training checkpoint (trainable weights and optimizer state, the biggest
        # thing a full fine-tuning trial writes) is dead weight now that the final model and metrics are.
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    distributed.barrier(world)  # the others return once rank 0's files are there
    return metrics


def _plan(cfg: TrialConfig, splits: data_mod.Splits) -> dict[str, Any]:
    """What the trial will do with these rows, and every refusal that needs the rows but not the model."""
    problem = batch_problem(cfg, len(splits.train))
    if problem is not None:
        raise ConfigError([problem])
    rows = splits.train + splits.val + splits.test
    render.check(cfg, rows)
    labels, notes = choose_labels(cfg.data.metric, cfg.data.labels, rows, splits.test)
    for note in notes:
        print(f"sweepboard: {note}", flush=True)
    steps = planned_steps(cfg, len(splits.train))
    return {"steps": steps, "labels": labels, "data_format": render.data_format(rows)}


def _warn_truncated(count: int, total: int, split: str, cfg: TrialConfig) -> None:
    if count:
        what = "prompt + generated answer" if split == "test" else "prompt + answer"
        print(
            f"sweepboard: warning: {count} of {total} {split} examples did not fit max_seq_len={cfg.max_seq_len} "
            f"tokens ({what}); their prompts lost their start. Raise max_seq_len or shorten the prompts.",
            flush=True,
        )


class PeakMemory:
    """Peak memory while training and evaluating: CUDA's allocator peak, or the process RSS sampled on CPU."""

    def __init__(self, interval: float = 0.05):
        self.interval, self._peak_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, device: str) -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return self._peak_kb / 1024

    def _sample(self) -> None:
        while True:
            self._peak_kb = max(self._peak_kb, _rss_kb())
            if self._stop.wait(self.interval):
                return


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda': no CUDA device is visible; use device: auto or cpu")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
    if precision == "bf16" or native:
        # Without native bf16 (no AVX512-BF16/AMX) the CPU emulates it: measured here ~20x slower than fp32.
        return torch.bfloat16
    return None


def base_dtype(method: str, autocast: torch.dtype | None) -> torch.dtype:
    """Under bf16 autocast (precision auto where bf16 is native: CUDA with bf16, CPUs with AVX512-BF16/AMX)
    LoRA holds its frozen base in bf16 and QLoRA computes in bf16 (its NF4 weights dequantized to bf16 per
    matmul, its unquantized ones in bf16): half the base's memory (a 7B base in 14 GB, not 28), and autocast
    would round the weights to bf16 for every matmul anyway. The adapters stay fp32 (PEFT upcasts them), so
    the optimizer updates full-precision weights. Measured on an AMX CPU, `python -m bench.precision`: a
    default-model LoRA step ran 1.11x as fast with a bf16 base (460 against 414 tokens/s, alternated).
    Full fine-tuning keeps fp32 master weights (mixed precision); `none` keeps fp32."""
    return torch.bfloat16 if method in ("lora", "qlora") and autocast == torch.bfloat16 else torch.float32


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _quote(cfg: TrialConfig, device: str) -> PriceQuote:
    """In a sweep, what Ray reserved for the trial at the GPU model of the node it runs on (rank 0's, whose
    cost is reported), so a mixed cluster bills each trial for the GPU it got; run alone, what it holds."""
    if cfg.reserved_gpus is not None:
        return price_per_hour(detect_device(), cfg.reserved_gpus, cfg.reserved_cpus or 0, cfg.price_per_hour,
                              gpu_key=cfg.gpu)  # fmt: skip
    return price_per_hour(detect_device(), 1 if device == "cuda" else 0, torch.get_num_threads(), cfg.price_per_hour)


def _priced(report: Report | None, quote: PriceQuote) -> Report | None:
    """Every intermediate report carries what the trial has cost so far, so the budget sees it live."""
    if report is None:
        return None

    def with_cost(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool | None:
        metrics = {
            **metrics,
            "cost_usd": metrics["elapsed_seconds"] * quote.usd_per_hour / 3600,
            "phase": "train",
        }
        return report(metrics, checkpoint_dir)

    return with_cost


def _prior_seconds(out: Path) -> float:
    state = out / "checkpoint" / "state.json"
    if not state.is_file():
        return 0.0
    return float(json.loads(state.read_text()).get("elapsed_seconds", 0.0))


def _targets(model: Any) -> str:
    config = getattr(model, "peft_config", {}).get("default")
    return ",".join(sorted(config.target_modules)) if config is not None else ""


def _save_final_model(net: Any, tok: Any, cfg: TrialConfig, out: Path, world: distributed.World) -> float:
    """The model a trial ships, once, in Hugging Face format, by rank 0: the PEFT adapter folder for
    LoRA/QLoRA; for full fine-tuning a safetensors model folder with its tokenizer (loadable with
    from_pretrained; FSDP's shards gathered into it). Returns adapter_mb: the adapter's size, or for full
    fine-tuning every weight's."""
    model = distributed.unwrap(net)
    if cfg.method in ("lora", "qlora") and world.main:
        model.save_pretrained(out / "adapter")
        return sum(f.stat().st_size for f in (out / "adapter").rglob("*") if f.is_file()) / 2**20
    if cfg.method == "full":
        state = None
        if distributed.sharded(net):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # Collective: every worker sends its shards; rank 0 alone receives the whole model, on CPU.
            state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world.main:
            model.save_pretrained(out / "model", state_dict=state)  # safetensors: transformers 5's only format
            tok.save_pretrained(out / "model")
            files = (out / "model").glob("*.safetensors")
            return sum(f.stat().st_size for f in files) / 2**20
    return 0.0


if __name__ == "__main__":  # pragma: no cover - convenience for debugging a single trial
    import sys

    print(
        json.dumps(
            run_trial({"method": sys.argv[1] if len(sys.argv) > 1 else "lora", "out": os.getcwd()}), indent=2
        )
    )
