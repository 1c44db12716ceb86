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


@torch.inference_mode()
def generate_answers(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    autocast_dtype: torch.dtype | None,
) -> list[str]:
    model.eval()
    tok.padding_side = "left"  # generation continues from the right edge of every row
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts, strict=True):
            out[i] = text.strip()
    return out


def stop_strings(rows: list[dict[str, str]], configured: list[str] | None) -> list[str]:
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
    rows: list[dict[str, str]], predictions: list[str], scorer: Callable[[str, str], float]
) -> tuple[float, list[float]]:
    scores = [scorer(p, r["completion"]) for p, r in zip(predictions, rows, strict=True)]
    return (sum(scores) / len(scores) if scores else 0.0), scores


def write_predictions(
    path: Path, rows: list[dict[str, str]], predictions: list[str], scores: list[float]
) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row, pred, s in zip(rows, predictions, scores, strict=True):
            record = {"prompt": row["prompt"], "expected": row["completion"], "predicted": pred, "score": s}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
