"""Memory: gradient checkpointing (same losses, fewer saved activations), SDPA attention, the dtypes recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainers import model as model_mod
from trainers import run_trial
from trainers.config import ConfigError, from_dict
from trainers.memory import checkpointing_on
from trainers.train import IGNORE, Encoded, answer_logits, train


@pytest.mark.parametrize(("given", "stored"), [(True, "true"), (False, "false"), ("auto", "auto"), ("TRUE", "true")])
def test_gradient_checkpointing_setting(given: Any, stored: str, tiny_config: dict[str, Any]) -> None:
    assert from_dict({**tiny_config, "gradient_checkpointing": given}).gradient_checkpointing == stored


def test_bad_gradient_checkpointing_names_key_and_choices(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"gradient_checkpointing: 'sometimes': use auto, true or false"):
        from_dict({**tiny_config, "gradient_checkpointing": "sometimes"})


def test_auto_rule_is_off_for_small_activations_and_on_for_large() -> None:
    tiny = SimpleNamespace(hidden_size=64, num_hidden_layers=2)
    assert not checkpointing_on("auto", tiny, 8, 256, "cpu", None)
    assert checkpointing_on("true", tiny, 8, 256, "cpu", None)
    # 70B-like shape at batch 64 x 4096 tokens: terabytes of activations, more than any machine's quarter.
    huge = SimpleNamespace(hidden_size=8192, num_hidden_layers=80)
    assert checkpointing_on("auto", huge, 64, 4096, "cpu", torch.bfloat16)
    assert not checkpointing_on("false", huge, 64, 4096, "cpu", torch.bfloat16)
    assert not checkpointing_on("auto", SimpleNamespace(), 64, 4096, "cpu", None)  # shape unknown: off


def _loss_curve(tiny_config: dict[str, Any], method: str, on: bool, tmp: Path) -> list[float]:
    cfg = from_dict({**tiny_config, "method": method, "steps": 4, "eval_every": 1, "precision": "fp32"})
    torch.manual_seed(0)
    tok, model = model_mod.load(model_mod.resolve(cfg), cfg, "cpu", torch.float32, checkpointing=on)
    assert model_mod.attn_implementation(model) == "sdpa"
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert causal.is_activation_checkpointing == on
    rng = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 1000, (40,), generator=rng).tolist() for _ in range(16)]
    enc = Encoded(ids, [[IGNORE] * 30 + x[30:] for x in ids])
    losses: list[float] = []

    def report(metrics: dict[str, Any], _ckpt: str | None) -> None:
        losses.append(metrics["train_loss"])

    torch.manual_seed(0)  # the same LoRA dropout masks in both runs
    train(model, tok, enc, enc, cfg, "cpu", None, tmp / "ckpt", report, time.perf_counter)  # type: ignore[arg-type]
    return losses


@pytest.mark.parametrize("method", ["lora", "full"])
def test_checkpointing_keeps_the_loss_curve(method: str, tiny_config: dict[str, Any], tmp_path: Path) -> None:
    off = _loss_curve(tiny_config, method, False, tmp_path / "off")
    on = _loss_curve(tiny_config, method, True, tmp_path / "on")
    assert len(off) == 4 and off[0] != off[-1]  # it trained
    # Recomputation replays the same fp32 ops with the same RNG state: equal up to float reassociation.
    assert on == pytest.approx(off, rel=1e-5, abs=1e-6)


def _saved_bytes(tiny_config: dict[str, Any], method: str, on: bool) -> int:
    """Bytes of the tensors autograd keeps from forward for backward, on a 4 x 500-token batch."""
    cfg = from_dict({**tiny_config, "method": method, "max_seq_len": 500})
    _, model = model_mod.load(model_mod.resolve(cfg), cfg, "cpu", torch.float32, checkpointing=on)
    model.train()
    ids = torch.randint(5, 1000, (4, 500))
    labels = torch.full_like(ids, IGNORE)
    labels[:, -8:] = ids[:, -8:]  # a long prompt, a short answer, as the trainer's answer-only loss sees it
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # held anyway: not activations
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, targets, _ = answer_logits(model, ids, torch.ones_like(ids), labels)
        loss = torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()  # the checkpointed graph still yields gradients
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    return sum(seen.values())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_checkpointing_keeps_fewer_activations(method: str, tiny_config: dict[str, Any]) -> None:
    off = _saved_bytes(tiny_config, method, False)
    on = _saved_bytes(tiny_config, method, True)
    assert on < off / 2, (on, off)


def test_metrics_record_dtypes_checkpointing_and_attention(tiny_config: dict[str, Any]) -> None:
    metrics = run_trial({**tiny_config, "method": "lora", "steps": 2, "gradient_checkpointing": True})
    written = json.loads((Path(tiny_config["out"]) / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["gradient_checkpointing"] is True and written["attn_implementation"] == "sdpa"
    bf16 = written["precision"] == "bf16"  # what precision: auto resolved to on this machine
    assert written["compute_dtype"] == ("bfloat16" if bf16 else "float32")
    assert written["weight_dtype"] == ("bfloat16" if bf16 else "float32")  # LoRA's frozen base follows autocast


@pytest.mark.parametrize(("method", "weights"), [("full", "float32"), ("qlora", "nf4")])
def test_full_keeps_fp32_master_weights_and_qlora_nf4(method: str, weights: str, tiny_config: dict[str, Any]) -> None:
    metrics = run_trial({**tiny_config, "method": method, "steps": 1, "eval_every": 1})
    assert metrics["weight_dtype"] == weights and metrics["gradient_checkpointing"] is False  # auto, tiny: off


def test_a_model_without_sdpa_loads_with_eager_attention(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "_supports_sdpa", False)  # as an architecture without an SDPA path
    cfg = from_dict({**tiny_config, "method": "lora"})
    _, model = model_mod.load(model_mod.resolve(cfg), cfg, "cpu", torch.float32)
    assert model_mod.attn_implementation(model) == "eager"
    assert "does not support SDPA attention" in capsys.readouterr().err
