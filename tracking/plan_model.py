"""The arithmetic behind `sweepboard plan`: a model's shape, the memory a method holds, the FLOPs it spends.

Everything here is a function of the shape (hidden size, layers, heads, vocab, intermediate size) and the
trial settings; no weights are read. Bytes are SI (1 GB = 1e9 B) to compare with the catalog's GPU memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

BYTES = {"fp32": 4.0, "bf16": 2.0}
# NF4 stores two weights per byte; its absmax constants, double-quantized (8-bit per 64-weight block plus an
# fp32 per 256 blocks), add 8/64 + 32/(64*256) bits = 0.127 bits per weight (Dettmers et al. 2023, QLoRA, 2.2).
NF4_BYTES = 0.5 + 0.127 / 8
ADAMW_BYTES = 8.0  # two fp32 moments per trained parameter
ADAPTER_BYTES = 4.0  # PEFT keeps the adapters fp32 under bf16 autocast
# Checkpointing keeps each layer's input (batch x seq x hidden in the compute dtype) and one layer's full set.
CHECKPOINT_KEPT_ELEMENTS = 1
LLAMA_FAMILY = "Llama-2-like: head dim 128, layers = hidden / 128, intermediate = 2.6875 x hidden, vocab 32000"


class ShapeError(ValueError):
    """A model whose size cannot be read; names the fix."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    source: str  # where the shape came from: a config.json, or the --params rule

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each decoder-layer Linear, by its Llama name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    def layer_linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_dims().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def total_params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.layer_linear_params() + self.embedding_params() + norms

    def matmul_params(self) -> int:
        """Parameters a token multiplies through: every Linear and the output head (an embedding lookup is
        free, but a tied table is still the head's matmul)."""
        return self.layer_linear_params() + self.vocab * self.hidden


def shape_of(hf_config: Any, source: str) -> Shape:
    """The shape from a Hugging Face config; a ShapeError naming --params where a field is missing."""
    names = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
             "intermediate": "intermediate_size", "vocab": "vocab_size"}  # fmt: skip
    values = {k: getattr(hf_config, v, None) for k, v in names.items()}
    missing = [names[k] for k, v in values.items() if not isinstance(v, int) or v <= 0]
    if missing:
        raise ShapeError(
            f"model {source}: its config has no {', '.join(missing)}, so its size cannot be read; "
            "give the size instead, e.g. --params 7B"
        )
    kv = getattr(hf_config, "num_key_value_heads", None) or values["heads"]
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return Shape(kv_heads=int(kv), tied=tied, source=source, **{k: int(v) for k, v in values.items()})  # type: ignore[arg-type]


def parse_params(text: str) -> float:
    """'7B', '135M', '1.5b', '7e9' -> parameters; a ValueError naming the form otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*", str(text).lower())
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2)] if match else 0
    if not value > 0:
        raise ValueError(f"--params: {text!r}: give a positive model size, e.g. 7B, 135M or 7e9")
    return value


def llama_like(params: float) -> Shape:
    """The Llama-2-like shape (see LLAMA_FAMILY) whose parameter count is nearest `params`: 7B gives
    Llama-2-7B's own shape (4096 hidden, 32 layers, 11008 intermediate, 6.74B parameters)."""
    best: Shape | None = None
    for hidden in range(128, 32768 + 1, 128):
        layers = max(1, hidden // 128)
        inter = int(round(2.6875 * hidden / 128)) * 128
        shape = Shape(hidden, layers, layers, layers, inter, 32000, False, f"--params {params / 1e9:.3g}B ({LLAMA_FAMILY})")
        if best is None or abs(shape.total_params() - params) < abs(best.total_params() - params):
            best = shape
    assert best is not None
    return best


def lora_params(shape: Shape, targets: list[str], rank: int) -> int:
    """Trained parameters of rank-r adapters on `targets`: r x (in + out) per adapted Linear per layer."""
    dims = shape.linear_dims()
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ShapeError(f"target modules {unknown}: not Linear layers of a Llama-shaped model {list(dims)}; "
                         "name them from that list, or plan with --params")  # fmt: skip
    return shape.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


def memory_bytes(shape: Shape, method: str, trained: int, batch: int, seq: int, bf16: bool,
                 checkpointing: bool) -> dict[str, float]:  # fmt: skip
    """What a trial holds at its peak, by part, as the trainer holds it: LoRA/QLoRA bases in bf16 where bf16
    runs natively (QLoRA's Linear weights in NF4, its embeddings and head in bf16), full fine-tuning and the
    baseline in fp32 (full keeps fp32 master weights), adapters fp32, AdamW's two fp32 moments per trained
    parameter, gradients in the trained weights' dtype."""
    total = shape.total_params()
    base = BYTES["bf16" if bf16 else "fp32"]
    if method == "qlora":
        linear = shape.layer_linear_params()
        weights = linear * NF4_BYTES + (total - linear) * base
    elif method == "lora":
        weights = total * base
    else:
        weights = total * BYTES["fp32"]
    if method in ("lora", "qlora"):
        weights += trained * ADAPTER_BYTES
    grads = trained * (ADAPTER_BYTES if method in ("lora", "qlora") else BYTES["fp32"])
    optimizer = trained * ADAMW_BYTES if method != "none" else 0.0
    activations = activation_bytes(shape, batch, seq, bf16, checkpointing) if method != "none" else 0.0
    return {"weights": weights, "gradients": grads if method != "none" else 0.0, "optimizer": optimizer,
            "activations": activations}  # fmt: skip


def activation_bytes(shape: Shape, batch: int, seq: int, bf16: bool, checkpointing: bool) -> float:
    """The trainer's own estimate (trainers.memory) without checkpointing; with it, each layer keeps only its
    input and one layer at a time holds its full set while it is recomputed."""
    import torch

    from trainers.memory import activation_bytes as trainer_rule

    dims = SimpleNamespace(hidden_size=shape.hidden, num_hidden_layers=shape.layers)
    full = float(trainer_rule(dims, batch, seq, torch.bfloat16 if bf16 else None) or 0)
    if not checkpointing:
        return full
    kept = CHECKPOINT_KEPT_ELEMENTS * batch * seq * shape.hidden * shape.layers * BYTES["bf16" if bf16 else "fp32"]
    return kept + full / shape.layers


def train_flops_per_token(shape: Shape, method: str, context: float, checkpointing: bool) -> float:
    """Forward 2N plus attention (2 x layers x context x hidden per token, Kaplan et al. 2020, 2.1); backward
    twice that for full fine-tuning. LoRA and QLoRA compute input gradients but no gradients for the frozen
    weights, so their matmuls cost 4N, not 6N (the adapters themselves are a rounding error). Attention has no
    weights: its backward is twice its forward either way. Checkpointing runs each forward once more."""
    n = shape.matmul_params()
    attention = 2 * shape.layers * context * shape.hidden
    weights = 6 * n if method == "full" else 4 * n
    recompute = 2 * n + attention if checkpointing else 0.0
    return weights + 3 * attention + recompute


def forward_flops_per_token(shape: Shape, context: float) -> float:
    return 2 * shape.matmul_params() + 2 * shape.layers * context * shape.hidden


def gb(value: float) -> float:
    return round(value / 1e9, 3)


def needs(total: float, per_device_gb: float) -> int:
    return max(1, math.ceil(total / (per_device_gb * 1e9)))
