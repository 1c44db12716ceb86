"""The CUDA paths of a trial: QLoRA's NF4 base on the GPU, bf16 chosen by `auto`, the allocator's peak memory,
and the price of the detected GPU from the catalog. Skipped where no CUDA device is visible (CI, laptops)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tracking.prices import detect_device, load_catalog, match_price
from trainers import model as model_mod
from trainers import run_trial
from trainers.config import from_dict

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here"),
]

# SmolLM2-135M-Instruct's shape (its config.json): the embedded default without its weights, so QLoRA's
# saving is measured where it matters (linear layers hold most of the weights) without the model package.
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                 "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}  # fmt: skip


@pytest.fixture(scope="module")
def smollm2_shaped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random weights in SmolLM2-135M's shape, with the tokenizer both it and the tiny model use."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tiny = model_mod.resolve(from_dict({"model": "builtin:tiny", "cache_dir": str(_cache())}))
    config = AutoConfig.from_pretrained(tiny)
    for key, value in SMOLLM2_SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("smollm2-shaped")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return str(out)


def test_qlora_base_is_nf4_on_the_gpu(tiny_config: dict[str, Any]) -> None:
    import bitsandbytes as bnb

    cfg = from_dict({**tiny_config, "method": "qlora"})
    _, model = model_mod.load(model_mod.resolve(cfg), cfg, "cuda", torch.float32)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "no bitsandbytes Linear4bit layer in the QLoRA model"
    for layer in quantized:
        weight: Any = layer.weight  # bitsandbytes' Params4bit: packed NF4 plus its quantization state
        assert weight.quant_type == "nf4" and weight.dtype == torch.uint8
        assert weight.device.type == "cuda" and weight.quant_state.absmax.device.type == "cuda"
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert lora_a.requires_grad and lora_a.device.type == "cuda"


def test_qlora_trains_on_the_gpu_in_bf16_at_the_catalog_price(tiny_config: dict[str, Any]) -> None:
    losses: list[float] = []
    metrics = run_trial(
        {**tiny_config, "method": "qlora", "steps": 12, "eval_every": 4, "learning_rate": 2e-3},
        report=lambda m, ckpt: losses.append(m["train_loss"]),
    )
    print(f"qlora on {torch.cuda.get_device_name(0)}: train_loss at steps 4/8/12 = {losses}")
    assert metrics["status"] == "finished" and metrics["steps_done"] == 12
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], f"training loss did not go down: {losses}"
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert metrics["precision"] == expected
    # The CUDA allocator's peak, not the process RSS (which holds the CUDA context, far larger).
    assert metrics["peak_memory_mb"] == pytest.approx(torch.cuda.max_memory_allocated() / 2**20)
    assert 0 < metrics["peak_memory_mb"] < 2048
    # Priced as the detected GPU from the catalog, plus the CPU threads the trial used.
    info = detect_device()
    assert info.kind == "cuda" and info.name == torch.cuda.get_device_name(0)
    catalog = load_catalog()
    gpu = match_price(catalog, info.name, info.memory_gb)
    assert metrics["device"] == gpu.key and metrics["device_name"] == info.name
    threads = torch.get_num_threads()
    assert metrics["usd_per_hour"] == pytest.approx(
        gpu.usd_per_hour + threads * catalog.cpu_usd_per_vcpu_hour
    )
    assert metrics["cost_usd"] == pytest.approx(metrics["wall_seconds"] * metrics["usd_per_hour"] / 3600)


def test_qlora_holds_far_less_than_lora_on_the_default_shape(
    smollm2_shaped: str, tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    common = {**tiny_config, "model": smollm2_shaped, "steps": 2, "eval_every": 2}
    lora = run_trial({**common, "method": "lora", "out": str(tmp_path / "lora")})
    qlora = run_trial({**common, "method": "qlora", "out": str(tmp_path / "qlora")})
    print(
        f"weights_mb lora {lora['weights_mb']:.0f} qlora {qlora['weights_mb']:.0f}; "
        f"peak_memory_mb lora {lora['peak_memory_mb']:.0f} qlora {qlora['peak_memory_mb']:.0f}"
    )
    assert lora["total_params"] == pytest.approx(qlora["total_params"], rel=0.01)
    assert qlora["weights_mb"] < 0.5 * lora["weights_mb"]
    # On the GPU the allocator's peak shows the saving that the CPU's process RSS hides.
    assert qlora["peak_memory_mb"] < lora["peak_memory_mb"]


def _cache() -> Path:
    return Path(__file__).resolve().parents[2] / ".cache" / "models"
