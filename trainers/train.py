"""The training loop: answer-only loss, length-grouped dynamic padding, periodic validation, checkpoints.

Answer-only: the prompt is context, not a target, so only completion tokens carry loss, and the output head
(the largest matmul of a small model: hidden x vocabulary) runs only on those positions.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainers import checkpoint, distributed, faults
from trainers.config import TrialConfig

IGNORE = -100
Report = Callable[[dict[str, Any], "str | None"], "bool | None"]


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[list[int]]
    truncated: int = 0  # examples whose prompt + answer + EOS did not fit max_len and were cut


def encode(tok: Any, rows: list[dict[str, str]], max_len: int) -> Encoded:
    """Rendered prompt + completion + EOS; labels mask the prompt. What does not fit max_len is cut from the
    prompt's start (left truncation: the end of the prompt, next to the answer, and the answer stay); only
    an answer longer than max_len - 1 tokens loses its own end. Cut examples are counted, never silent."""
    prompts = tok([r["prompt"] for r in rows], add_special_tokens=False).input_ids
    answers = tok([r["completion"] for r in rows], add_special_tokens=False).input_ids
    ids, labels, truncated = [], [], 0
    for p, a in zip(prompts, answers, strict=True):
        if len(p) + len(a) + 1 > max_len:
            truncated += 1
        a = a[: max_len - 1] + [tok.eos_token_id]
        p = left_truncate(p, max_len - len(a))
        ids.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    return Encoded(ids, labels, truncated)


def left_truncate(ids: list[int], budget: int) -> list[int]:
    """The last `budget` tokens: training and evaluation both cut a long prompt from its start."""
    return ids[len(ids) - budget :] if len(ids) > budget else ids


def batches_for_step(n: int, lengths: list[int], batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the batch for `step`; deterministic in (seed, step) so a resumed trial sees the same data.

    Each epoch is shuffled, cut into mega-batches of 16 batches sorted by length (so a batch pads little),
    and the batch order shuffled again so training does not see lengths in order.
    """
    per_epoch = max(1, n // batch_size)
    epoch, index = divmod(step, per_epoch)
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    mega = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, per_epoch * batch_size, mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size][:per_epoch]
    rng.shuffle(batches)
    return batches[index]


def collate(enc: Encoded, idx: list[int], pad_id: int, device: str) -> tuple[torch.Tensor, ...]:
    """Left-padded (every answer ends at the right edge, so the answer positions of a batch are its last
    columns and the head runs on those only: answer_logits)."""
    width = max(len(enc.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(enc.ids[i])
        ids[row, width - n :] = torch.tensor(enc.ids[i])
        labels[row, width - n :] = torch.tensor(enc.labels[i])
        mask[row, width - n :] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def answer_logits(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only where the next token is an answer token, and those targets.

    Through the model's own forward, so that a DDP or FSDP wrapper sees the call (it syncs gradients or
    gathers shards there), with `logits_to_keep`: the head (hidden x vocabulary, the largest matmul of a
    small model) runs only on the last columns, which hold every row's answer because batches are
    left-padded. Position ids count real tokens, so a left-padded row is computed as it would be unpadded."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    columns = keep.any(dim=0).nonzero()
    first = int(columns[0]) if len(columns) else targets.shape[1] - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # Logits at positions first .. width-2 predict the targets first+1 .. width-1; the last one is dropped.
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=ids.shape[1] - first)
    logits = out.logits[:, :-1]
    keep, targets = keep[:, first:], targets[:, first:]
    return logits[keep].float(), targets[keep], keep


def train(
    model: nn.Module,
    tok: Any,
    train_enc: Encoded,
    val_enc: Encoded,
    cfg: TrialConfig,
    device: str,
    autocast_dtype: torch.dtype | None,
    ckpt_dir: Path,
    report: Report | None,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """Train for cfg.steps (or until `report` asks to stop); resume from ckpt_dir when it holds a checkpoint.

    On several workers each takes every world-th example of the step's global batch, and its loss is its
    share of the global batch's mean over answer tokens (its sum over the global count, times the world
    size, which the gradient averaging of DDP and FSDP divides out again): the same maths as one worker."""
    world = distributed.current()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg.learning_rate or 0.0), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.warmup_steps, cfg.steps))
    state: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "train_seconds": 0.0,
        "validate_seconds": 0.0,
        "checkpoint_seconds": 0.0,
        "last_loss": float("nan"),
        "val": {},
    }
    if (ckpt_dir / "state.json").is_file():
        state = checkpoint.load(ckpt_dir, model, opt, sched)
        if world.main:
            print(f"sweepboard: resuming from step {state['step']} ({ckpt_dir})", flush=True)
        if report is not None and world.size > 1 and state["val"]:
            # Ray Train drops the reports its controller had not yet collected when a worker dies, and the
            # point this checkpoint was written at may be one: report it again (at worst a second point at
            # that step, as a resumed single-process trial can give). Every worker reports, as below.
            report(_point(state), str(ckpt_dir))
    lengths = [len(x) for x in train_enc.ids]
    pad = tok.pad_token_id
    stopped_early = False
    model.train()
    window: list[float] = []
    while state["step"] < cfg.steps:
        faults.inject(state["step"] + 1, cfg.method, ckpt_dir.parent)  # a fault drill; no-op unless asked
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            idx = batches_for_step(
                len(lengths), lengths, cfg.batch_size, cfg.seed, state["step"] * cfg.grad_accum + micro
            )[world.rank :: world.size]
            ids, mask, labels = collate(train_enc, idx, pad, device)
            answer_tokens, tokens = distributed.all_sum(
                [float((labels[:, 1:] != IGNORE).sum()), float(mask.sum())], world
            )
            with _autocast(device, autocast_dtype):
                logits, targets, _ = answer_logits(model, ids, mask, labels)
                share = F.cross_entropy(logits, targets, reduction="sum") / answer_tokens
            (share * world.size / cfg.grad_accum).backward()
            state["tokens"] += int(tokens)
            window.append(share.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        state["step"] += 1
        state["train_seconds"] += time.perf_counter() - t0
        if state.get("first_loss") is None:  # the starting loss: the untrained model's, at step 1
            state["first_loss"] = distributed.all_sum([sum(window)], world)[0] / len(window)
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            state["last_loss"] = distributed.all_sum([sum(window)], world)[0] / len(window)
            window.clear()
            if not state["val"]:  # the first report: a diverged trial stops here, before its validation
                check_divergence(state["last_loss"], state["first_loss"], state["step"], cfg)
            t0 = time.perf_counter()
            state["val"] = validate(model, val_enc, pad, cfg, device, autocast_dtype)
            model.train()
            t1 = time.perf_counter()
            state["validate_seconds"] = state.get("validate_seconds", 0.0) + t1 - t0
            state["elapsed_seconds"] = clock()  # wall time of the whole trial so far, across resumes
            checkpoint.save(ckpt_dir, model, opt, sched, state)
            # Timed for the overhead benchmark: what a trial spends outside training and evaluation steps.
            state["checkpoint_seconds"] = state.get("checkpoint_seconds", 0.0) + time.perf_counter() - t1
            # Every worker reports (Ray Train's report is collective); only rank 0 asks the budget.
            if report is not None and distributed.agree(bool(report(_point(state), str(ckpt_dir))), world):
                stopped_early = True
                break
    if not state["val"]:
        state["val"] = validate(model, val_enc, pad, cfg, device, autocast_dtype)
    return {**state, "stopped_early": stopped_early}


class Diverged(RuntimeError):
    """The training loss is not finite, or above the starting loss, at the first report: the learning rate
    is too high for this configuration. The sweep stops such a trial there and counts it as failed."""


DIVERGED_FACTOR = 1.5  # above the starting loss by more than a few batches' noise: 1.5x, or +0.5 nats
DIVERGED_NATS = 0.5


def check_divergence(loss: float, first: float, step: int, cfg: TrialConfig) -> None:
    if math.isfinite(loss) and loss <= max(first * DIVERGED_FACTOR, first + DIVERGED_NATS):
        return
    raise Diverged(f"training loss {loss:.4g} over steps to {step} against {first:.4g} at step 1 "
                   f"(learning rate {cfg.learning_rate:g}, method {cfg.method}): lower the learning rate")


@torch.inference_mode()
def validate(
    model: nn.Module,
    enc: Encoded,
    pad: int,
    cfg: TrialConfig,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Teacher-forced validation: an example counts as right when every answer token (and EOS) is the
    argmax. That is exactly "greedy decoding reproduces the answer", at the cost of one forward pass.
    Workers split the examples and add up their sums."""
    world = distributed.current()
    model.eval()
    net = model if distributed.sharded(model) else distributed.unwrap(model)  # DDP: no collective needed
    total_loss, total_tokens, right = 0.0, 0.0, 0.0
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    mine = distributed.shard(order, world, equal=distributed.sharded(model))
    for start in range(0, len(mine), cfg.eval_batch_size):
        idx = [i for i, _ in mine[start : start + cfg.eval_batch_size]]
        counted = torch.tensor([c for _, c in mine[start : start + cfg.eval_batch_size]], device=device)
        ids, mask, labels = collate(enc, idx, pad, device)
        labels[~counted] = IGNORE  # a filler row (FSDP's equal shares) counts for nothing
        with _autocast(device, autocast_dtype):
            logits, targets, keep = answer_logits(net, ids, mask, labels)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        total_tokens += float(targets.numel())
        hit = torch.zeros(keep.shape, dtype=torch.bool, device=keep.device)
        hit[keep] = logits.argmax(-1) == targets
        per_row_ok = (hit | ~keep).all(dim=1) & counted
        if cfg.data.metric == "token_f1":
            right += (hit.sum(1).float() / keep.sum(1).clamp(min=1)).sum().item()
        else:
            right += per_row_ok.sum().item()
    total_loss, total_tokens, right = distributed.all_sum([total_loss, total_tokens, right], world)
    return {"val_loss": total_loss / max(total_tokens, 1), "val_quality": right / max(len(enc.ids), 1)}


def _point(state: dict[str, Any]) -> dict[str, Any]:
    """What a report says about the trial at a checkpoint."""
    return {
        "step": state["step"],
        "train_loss": state["last_loss"],
        "val_loss": state["val"]["val_loss"],
        "val_quality": state["val"]["val_quality"],
        "tokens_trained": state["tokens"],
        "elapsed_seconds": state["elapsed_seconds"],
    }


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%

    return factor


def _autocast(device: str, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)
