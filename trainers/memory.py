"""Memory: whether a trial recomputes activations (gradient checkpointing), and the dtypes it holds weights in.

The rule for `gradient_checkpointing: auto` is one estimate against one budget, the same on CPU and CUDA:
a decoder layer keeps about 34 x batch x seq_len x hidden bytes of activations for backward in 16-bit
(Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", without the
attention-matrix term, which SDPA does not store), twice that in fp32. Checkpointing goes on when that, over
all layers, exceeds a quarter of the device's memory (the GPU's, or the machine's RAM on CPU): then it is what
lets the batch fit. Below that it only costs time (each layer's forward runs again in backward).
"""

from __future__ import annotations

import os
from typing import Any

import torch

ACTIVATION_BYTES_PER_ELEMENT_16BIT = 34
BUDGET_FRACTION = 0.25


def activation_bytes(hf_config: Any, batch_size: int, seq_len: int, compute_dtype: torch.dtype | None) -> int | None:
    """Activations one micro-batch keeps for backward, or None where the config does not say its shape."""
    hidden = getattr(hf_config, "hidden_size", None)
    layers = getattr(hf_config, "num_hidden_layers", None)
    if not isinstance(hidden, int) or not isinstance(layers, int):
        return None
    per_element = ACTIVATION_BYTES_PER_ELEMENT_16BIT * (1 if compute_dtype in (torch.bfloat16, torch.float16) else 2)
    return per_element * batch_size * seq_len * hidden * layers


def device_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def checkpointing_on(
    choice: str, hf_config: Any, batch_size: int, seq_len: int, device: str, compute_dtype: torch.dtype | None
) -> bool:
    """The resolved `gradient_checkpointing` setting (see the module docstring for auto)."""
    if choice in ("true", "false"):
        return choice == "true"
    need = activation_bytes(hf_config, batch_size, seq_len, compute_dtype)
    return need is not None and need > BUDGET_FRACTION * device_memory_bytes(device)


def weight_dtype(model: torch.nn.Module) -> str:
    """What the frozen (or, in full fine-tuning, trained) weights are held in: float32, bfloat16, or nf4."""
    import bitsandbytes as bnb

    if any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()):
        return "nf4"
    frozen = [p for p in model.parameters() if not p.requires_grad] or list(model.parameters())
    counts: dict[torch.dtype, int] = {}
    for p in frozen:
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return str(max(counts, key=lambda d: counts[d])).removeprefix("torch.")
