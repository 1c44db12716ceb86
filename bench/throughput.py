"""Trainer speed: our training loop against a plain Hugging Face Trainer + PEFT script doing the same LoRA
trial (same model, tokens, batch size, steps, optimizer, schedule, precision), run alternately in this
one process so machine noise hits both alike.

The difference being measured is ours to explain: length-grouped batches (little padding) and logits
computed only at answer positions, against the Trainer's default of random batches padded to their
longest row and logits over every position. Train loss is reported for both, so a speed-up is not bought
with different maths.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def lora_settings(trial: dict[str, Any], steps: int) -> dict[str, Any]:
    """The production-default LoRA trial, cut to `steps`."""
    return {
        **trial,
        "method": "lora",
        "rank": 16,
        "alpha": 32,
        "target_modules": "attention",
        "lora_dropout": 0.05,
        "learning_rate": 2e-4,
        "steps": steps,
        "eval_every": steps,
        "precision": "fp32",
    }


def run(trial: dict[str, Any], steps: int = 20, rounds: int = 2, threads: int | None = None) -> dict[str, Any]:
    from trainers import data as data_mod
    from trainers import model as model_mod
    from trainers.config import from_dict
    from trainers.train import encode

    cfg = from_dict(lora_settings(trial, steps))
    if threads:
        torch.set_num_threads(threads)
    splits = data_mod.prepare(cfg.data)
    path = model_mod.resolve(cfg)
    tok, _ = model_mod.load(path, cfg, "cpu", torch.float32)
    train_enc = encode(tok, splits.train, cfg.max_seq_len)
    runs: dict[str, list[dict[str, Any]]] = {"sweepboard": [], "hf_trainer": []}
    for r in range(rounds):
        # Alternate, and swap who goes first each round: neither always runs on a warmer machine.
        order = ["sweepboard", "hf_trainer"] if r % 2 == 0 else ["hf_trainer", "sweepboard"]
        for name in order:
            fn = _ours if name == "sweepboard" else _hf_trainer
            result = fn(path, cfg, train_enc, tok)
            runs[name].append(result)
            print(f"  round {r + 1} {name}: {result['tokens_per_second']:.1f} tokens/s, "
                  f"mean train loss {result['mean_loss']:.4f}", flush=True)  # fmt: skip
    ours = statistics.median(x["tokens_per_second"] for x in runs["sweepboard"])
    theirs = statistics.median(x["tokens_per_second"] for x in runs["hf_trainer"])
    loss_ours = statistics.mean(x["mean_loss"] for x in runs["sweepboard"])
    loss_theirs = statistics.mean(x["mean_loss"] for x in runs["hf_trainer"])
    return {
        "steps": steps,
        "rounds": rounds,
        "batch_size": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "tokens_per_second": {"sweepboard": ours, "hf_trainer": theirs},
        "ratio_vs_hf_trainer": ours / theirs,
        "padding_share": {
            "sweepboard": statistics.mean(x["padding_share"] for x in runs["sweepboard"]),
            "hf_trainer": statistics.mean(x["padding_share"] for x in runs["hf_trainer"]),
        },
        "mean_train_loss": {"sweepboard": loss_ours, "hf_trainer": loss_theirs},
        "loss_relative_difference": abs(loss_ours - loss_theirs) / max(loss_theirs, 1e-12),
        "runs": runs,
    }


def _ours(path: str, cfg: Any, train_enc: Any, tok: Any) -> dict[str, Any]:
    from trainers import model as model_mod
    from trainers.train import Encoded, train

    torch.manual_seed(cfg.seed)
    _, model = model_mod.load(path, cfg, "cpu", torch.float32)
    losses: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny_val = Encoded(train_enc.ids[:8], train_enc.labels[:8])  # the loop validates once at its end
        state = train(model, tok, train_enc, tiny_val, cfg, "cpu", None, Path(tmp) / "ckpt",
                      _loss_recorder(losses), time.perf_counter)  # fmt: skip
    return {
        "tokens": state["tokens"],
        "seconds": state["train_seconds"],
        "tokens_per_second": state["tokens"] / state["train_seconds"],
        "mean_loss": state["last_loss"],
        "padding_share": _our_padding(train_enc, cfg),
    }


def _our_padding(enc: Any, cfg: Any) -> float:
    """The share of padded positions in the batches our loop trains on (they are deterministic)."""
    from trainers.train import batches_for_step

    lengths = [len(x) for x in enc.ids]
    real = total = 0
    for step in range(cfg.steps):
        idx = batches_for_step(len(lengths), lengths, cfg.batch_size, cfg.seed, step)
        real += sum(lengths[i] for i in idx)
        total += max(lengths[i] for i in idx) * len(idx)
    return 1 - real / total


def _loss_recorder(losses: list[float]) -> Any:
    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool:
        losses.append(float(metrics["train_loss"]))
        return False

    return report


def _hf_trainer(path: str, cfg: Any, train_enc: Any, tok: Any) -> dict[str, Any]:
    """What a tutorial writes: AutoModel + get_peft_model + Trainer with a padding collator."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM",
    ))  # fmt: skip
    dataset = Dataset.from_dict({
        "input_ids": train_enc.ids,
        "attention_mask": [[1] * len(x) for x in train_enc.ids],
        "labels": train_enc.labels,
    })  # fmt: skip
    pad_collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    batches: list[tuple[int, int]] = []  # (positions, real tokens) of every batch the loader built

    def collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_collator(features)
        batches.append((int(batch["attention_mask"].numel()), int(batch["attention_mask"].sum())))
        return batch

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):  # the training loop itself, not the Trainer's setup
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, max_grad_norm=1.0,
            warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1}, optim="adamw_torch", logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=cfg.seed,
            disable_tqdm=True, remove_unused_columns=False,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[Clock()])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # its per-step loss lines would flood the bench's output
        trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    seconds = clock["end"] - clock["start"]
    # Accelerate's loader fetches one batch ahead: count the batches trained on, not the ones built.
    trained = batches[: cfg.steps]
    tokens = sum(real for _, real in trained)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "mean_loss": statistics.mean(losses),  # every step, as our loop's mean since its last evaluation
        "padding_share": 1 - tokens / max(sum(n for n, _ in trained), 1),
    }
