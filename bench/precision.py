"""LoRA's frozen base in bf16 or fp32, both under bf16 autocast: tokens/s side by side, alternated in one
process (so machine noise hits both alike), on the production-default LoRA trial of the embedded default.

This decides what `precision: auto` holds a LoRA base in where bf16 is native. Where the CPU has no native
bf16 (no AVX512-BF16/AMX) and there is no CUDA, auto trains in fp32 and this is skipped.

    python -m bench.precision
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F


def run(trial: dict[str, Any], steps: int = 10, rounds: int = 2) -> dict[str, Any]:
    from bench.throughput import lora_settings
    from trainers import data as data_mod
    from trainers import model as model_mod
    from trainers import render
    from trainers.config import from_dict
    from trainers.train import answer_logits, batches_for_step, collate, encode
    from trainers.trial import cpu_has_native_bf16

    cfg = from_dict({**lora_settings(trial, steps), "precision": "auto"})
    if not cpu_has_native_bf16():
        return {"skipped": "this CPU has no native bf16 (AVX512-BF16/AMX): precision auto trains in fp32 here"}
    splits = data_mod.prepare(cfg.data)
    path = model_mod.resolve(cfg)
    models = {}
    for name, dtype in (("fp32_base", torch.float32), ("bf16_base", torch.bfloat16)):
        tok, model = model_mod.load(path, cfg, "cpu", dtype)
        model.train()
        models[name] = model
    enc = encode(tok, render.render(splits.train, cfg.data, tok), cfg.max_seq_len)
    lengths = [len(x) for x in enc.ids]
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            model, tokens, t0 = models[name], 0, time.perf_counter()
            for step in range(steps):  # forward and backward; the adapters' optimizer step is the same for both
                idx = batches_for_step(len(lengths), lengths, cfg.batch_size, cfg.seed, step)
                ids, mask, labels = collate(enc, idx, tok.pad_token_id, "cpu")
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits, targets, _ = answer_logits(model, ids, mask, labels)
                    loss = F.cross_entropy(logits, targets)
                loss.backward()
                tokens += int(mask.sum())
            speeds[name].append(tokens / (time.perf_counter() - t0))
            print(f"  round {r + 1} {name}: {speeds[name][-1]:.0f} tokens/s", flush=True)
    median = {name: statistics.median(v) for name, v in speeds.items()}
    return {"steps": steps, "rounds": rounds, "tokens_per_second": median, "runs": speeds,
            "lora_bf16_base_over_fp32_base": median["bf16_base"] / median["fp32_base"]}  # fmt: skip


if __name__ == "__main__":
    from bench import record

    print(json.dumps(run(record.trial_settings()), indent=2))
