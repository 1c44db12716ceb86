"""The final evaluation on the locked test set: greedy generation, scored per example.

Called once per trial, after the lock's hash has been verified; the per-example scores are written so the
leaderboard can put confidence intervals on the mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainers import distributed
from trainers.train import left_truncate


@torch.inference_mode()
def generate_answers(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_prompt_tokens: int,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> tuple[list[str], list[bool]]:
    """Greedy answers to rendered prompts, and which prompts were cut to `max_prompt_tokens`. A prompt is cut
    as training cuts one (train.left_truncate: its start goes), so the model sees what it was trained on."""
    model.eval()
    world = distributed.current()
    synced = distributed.sharded(model)  # FSDP: every forward is a collective, so workers keep in step
    net = model if synced else distributed.unwrap(model)
    ids, truncated = model_inputs(tok, prompts, max_prompt_tokens)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    mine = distributed.shard(order, world, equal=synced)  # workers split the prompts
    answers: list[tuple[int, str]] = []
    for start in range(0, len(mine), batch_size):
        idx = [i for i, _ in mine[start : start + batch_size]]
        enc = _left_padded([ids[i] for i in idx], tok.pad_token_id, device)
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            gen = net.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **({"synced_gpus": True} if synced else {}),
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        answers += [(i, t.strip()) for (i, counted), t in zip(mine[start : start + batch_size], texts,
                                                            strict=True) if counted]  # fmt: skip
    out: list[str] = [""] * len(prompts)
    for part in distributed.gather(answers, world):
        for i, text in part:
            out[i] = text
    return out, truncated


def model_inputs(tok: Any, prompts: list[str], max_prompt_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """The token ids the model is given for each prompt, and whether the prompt had to be cut to fit."""
    ids = tok(prompts, add_special_tokens=False).input_ids
    return [left_truncate(x, max_prompt_tokens) for x in ids], [len(x) > max_prompt_tokens for x in ids]


def _left_padded(rows: list[list[int]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Pad on the left: generation continues from the right edge of every row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def stop_strings(rows: list[dict[str, Any]], configured: list[str] | None) -> list[str]:
    if configured is not None:
        return [s.encode().decode("unicode_escape") for s in configured if s]  # YAML "\\n" means a newline
    return [] if any("\n" in r["completion"].strip() for r in rows) else ["\n"]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The answer up to the first stop string (the text is already stripped of leading whitespace)."""
    for stop in stops:
        head, found, _ = text.partition(stop)
        if found:
            text = head
    return text.strip()


def score(
    rows: list[dict[str, Any]], predictions: list[str], scorer: Callable[[str, str], float]
) -> tuple[float, list[float]]:
    scores = [scorer(p, r["completion"]) for p, r in zip(predictions, rows, strict=True)]
    return (sum(scores) / len(scores) if scores else 0.0), scores


def write_predictions(
    path: Path,
    rows: list[dict[str, Any]],
    prompts: list[str],
    predictions: list[str],
    scores: list[float],
    truncated: list[bool],
) -> None:
    """One line per locked test row, in the lock's order (runs are paired by line): the rendered prompt the
    model saw, the raw row it came from, the answer and its score."""
    with path.open("w", encoding="utf-8") as f:
        for row, prompt, pred, s, cut in zip(rows, prompts, predictions, scores, truncated, strict=True):
            raw = {"raw_messages": row["messages"]} if "messages" in row else {"raw_prompt": row["prompt"]}
            record = {
                "prompt": prompt,
                **raw,
                "expected": row["completion"],
                "predicted": pred,
                "score": s,
                "truncated": cut,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
