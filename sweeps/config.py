"""The sweep config: what to search, on what, with which resources, logged where. Validated before any spend.

A sweep config is YAML with a `trial:` section (the fixed settings of every trial: model, data, steps, ...,
see trainers/config.py) and sweep-level keys. Built-in configs live in sweeps/configs/ and are named by
their stem (`--config smoke`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainers.config import ConfigError, TrialConfig, from_dict

CONFIG_DIR = Path(__file__).parent / "configs"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Resources:
    """What one trial of a method reserves: `workers` processes (Ray Train workers when more than one),
    each with `cpus` and `gpus`."""

    cpus: float = 2
    gpus: float = 0
    workers: int = 1


@dataclass
class SweepConfig:
    name: str = "default"
    space: str = "default"  # a built-in search space name or a YAML path
    max_trials: int = 8  # the baseline is extra; on CPU a trial count stops the sweep before $30 does
    concurrency: int = 1
    baseline: bool = True  # evaluate the base model (method none) once per sweep
    # The first trial of each method is projected from `sweepboard plan`; a number here overrides the plan.
    estimate_trial_seconds: float | None = None
    grace_period: int = 2  # ASHA: reports (validation rounds) before a trial may be pruned
    reduction_factor: float = 3
    # The learning rate first per method group (a ladder to a bracket, then capacity at it), and each
    # group's leader kept past ASHA (sweeps/search.py); false: plain TPE and ASHA.
    rate_first: bool = True
    storage: str = "runs/sweeps"  # a folder (shared on a cluster), or an object store URI: s3://bucket/prefix
    storage_endpoint: str | None = None  # an S3-compatible endpoint URL; AWS_ENDPOINT_URL_S3 / _URL win
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    price_per_hour: float | None = None  # USD per trial-hour; overrides the price catalog
    gpu: str | None = None  # catalog key of the cluster's GPU, e.g. a100-80gb: prices a GPU-less driver's trials
    resources: dict[str, Resources] = field(
        default_factory=lambda: {m: Resources() for m in ("none", "lora", "qlora", "full")}
    )
    trial: dict[str, Any] = field(default_factory=dict)  # fixed trial settings (trainers/config.py)
    source: str = "<defaults>"


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = CONFIG_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        [f"--config: {name_or_path!r}: no such file and no built-in config of that name ({known})"]
    )


def load(name_or_path: str | None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read, merge command-line overrides, validate. Every problem of the file is reported at once."""
    path = resolve_path(name_or_path or "default")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: must hold a mapping of settings"])
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(raw, str(path))


def build(raw: dict[str, Any], source: str) -> SweepConfig:
    problems: list[str] = []
    known = {f.name for f in dataclasses.fields(SweepConfig)} - {"source"}
    for key in sorted(set(raw) - known):
        if key == "min_adapter_configs":  # the evidence the decision needs is the learning-rate brackets now
            problems.append(f"{source}: min_adapter_configs: replaced by the learning-rate brackets and one "
                            "capacity increase (docs/search.md); remove it (rate_first: false turns the "
                            "search's rules off)")  # fmt: skip
            continue
        problems.append(f"{source}: {key}: unknown key; known keys: {', '.join(sorted(known))}")
    cfg = SweepConfig(source=source)
    for key in known & set(raw):
        if key != "resources":
            setattr(cfg, key, raw[key])
    cfg.resources = _resources(raw.get("resources") or {}, source, problems)
    problems += _check(cfg)
    try:
        from_dict(
            {**cfg.trial, "method": "lora"}
        )  # the fixed trial settings, checked with the trial's schema
    except ConfigError as exc:
        problems += [f"{source}: trial.{p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return cfg


def _resources(raw: Any, source: str, problems: list[str]) -> dict[str, Resources]:
    out = {m: Resources() for m in ("none", "lora", "qlora", "full")}
    if not isinstance(raw, dict):
        problems.append(f"{source}: resources: {raw!r}: a mapping method -> {{cpus, gpus}}")
        return out
    # `default:` applies to every method; a method's own entry (full fine-tuning may need more) wins.
    for method in ["default", *out]:
        spec = raw.get(method)
        if spec is None:
            continue
        if not isinstance(spec, dict) or set(spec) - {"cpus", "gpus", "workers"}:
            problems.append(f"{source}: resources.{method}: {spec!r}: give {{cpus: N, gpus: N, workers: N}}")
            continue
        for target in out if method == "default" else [method]:
            if "workers" in spec:
                workers = spec["workers"]
                if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                    problems.append(f"{source}: resources.{method}.workers: {workers!r}: a whole number >= 1 "
                                    "(processes per trial; 1 runs the trial in one process)")  # fmt: skip
                elif workers > 1 and target == "none":
                    problems.append(f"{source}: resources.{method}.workers: {workers}: the baseline (method "
                                    "none) evaluates in one process; give resources.none workers: 1")  # fmt: skip
                else:
                    out[target].workers = workers
            for key in ("cpus", "gpus"):
                if key in spec:
                    try:
                        value = float(spec[key])
                    except (TypeError, ValueError):
                        value = -1.0
                    if value < 0 or (key == "cpus" and value == 0):
                        problems.append(
                            f"{source}: resources.{method}.{key}: {spec[key]!r}: must be a number > 0"
                        )
                    setattr(out[target], key, value)
    for method in set(raw) - {"default", *out}:
        problems.append(
            f"{source}: resources.{method}: unknown method; use default, none, lora, qlora or full"
        )
    return out


def _check(cfg: SweepConfig) -> list[str]:
    p: list[str] = []
    s = cfg.source
    if not isinstance(cfg.name, str) or not NAME_RE.match(cfg.name):
        p.append(f"{s}: name: {cfg.name!r}: use letters, digits, '.', '_' or '-' (at most 64), e.g. my-sweep")
    for key in ("max_trials", "concurrency", "grace_period"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            p.append(f"{s}: {key}: {value!r}: must be a positive whole number")
    if not isinstance(cfg.rate_first, bool):
        p.append(f"{s}: rate_first: {cfg.rate_first!r}: true (the learning rate first per method group, the "
                 "default) or false (plain TPE and ASHA)")  # fmt: skip
    for key in ("estimate_trial_seconds", "reduction_factor"):
        value = getattr(cfg, key)
        if key == "estimate_trial_seconds" and value is None:
            continue
        if (
            not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= (1 if key[0] == "r" else 0)
        ):
            p.append(f"{s}: {key}: {value!r}: must be a number above {1 if key[0] == 'r' else 0}")
    if cfg.price_per_hour is not None and not (
        isinstance(cfg.price_per_hour, (int, float))
        and math.isfinite(cfg.price_per_hour)
        and cfg.price_per_hour > 0
    ):
        p.append(
            f"{s}: price_per_hour: {cfg.price_per_hour!r}: a positive number of US dollars per hour, e.g. 3.0"
        )
    p += _gpu_problems(cfg.gpu, s)
    for key, kinds, what in (
        ("space", (str,), "a built-in search space name (default, smoke) or the path of a YAML file"),
        ("storage", (str,), "a folder path or an object store URI, e.g. runs/sweeps or s3://bucket/sweeps"),
        ("storage_endpoint", (str, type(None)), "the URL of an S3-compatible endpoint, e.g. http://minio:9000"),
        ("tracking_uri", (str, type(None)), "an MLflow tracking URI, e.g. sqlite:///mlflow.db, or leave it out"),
        ("baseline", (bool,), "true or false"),
    ):
        value = getattr(cfg, key)
        if not isinstance(value, kinds) or (isinstance(value, str) and not value.strip()):
            p.append(f"{s}: {key}: {value!r}: give {what}")
    if isinstance(cfg.storage, str) and cfg.storage.strip():
        p += _storage_problems(cfg)
    if not isinstance(cfg.trial, dict):
        p.append(f"{s}: trial: {cfg.trial!r}: a mapping of trial settings (model, data, steps, ...)")
        cfg.trial = {}
    for key in ("method", "out", "rank", "alpha", "learning_rate", "target_modules", "lora_dropout"):
        if key in cfg.trial:
            p.append(f"{s}: trial.{key}: is searched, not fixed: set it in the search space instead")
    # Workers split each step's batch: each takes every workers-th example, and all take as many.
    batch = cfg.trial.get("batch_size", TrialConfig.batch_size)
    for method, res in cfg.resources.items():
        if res.workers > 1 and isinstance(batch, int) and batch % res.workers:
            p.append(f"{s}: resources.{method}.workers: {res.workers}: trial.batch_size {batch} does not split "
                     f"evenly over {res.workers} workers; make batch_size a multiple of workers")  # fmt: skip
    return p


def _storage_problems(cfg: SweepConfig) -> list[str]:
    from sweeps import storage

    if not storage.is_remote(cfg.storage):
        return []
    many = sorted(m for m, r in cfg.resources.items() if r.workers > 1)
    if many:  # their checkpoints live in the trial's folder, which only a shared folder gives every worker
        return [f"{cfg.source}: resources.{many[0]}.workers: multi-worker trials need a storage folder every "
                f"node sees, not object storage ({cfg.storage}) yet: give workers: 1, or a shared folder"]
    try:
        storage.filesystem(cfg.storage, cfg.storage_endpoint if isinstance(cfg.storage_endpoint, str) else None)
    except Exception as exc:  # noqa: BLE001  named with the key and the fix
        return [f"{cfg.source}: storage: {cfg.storage!r}: {exc}"]
    return []


def _gpu_problems(key: Any, source: str) -> list[str]:
    if key is None:
        return []
    from tracking.prices import CatalogError, load_catalog

    try:
        catalog = load_catalog()
    except CatalogError as err:
        return err.problems
    known = [g.key for g in catalog.gpus]
    if key in known:
        return []
    return [f"{source}: gpu: {key!r}: not a GPU of the price catalog {catalog.path}; use one of {', '.join(known)}"]


def tracking_uri(cfg: SweepConfig) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path('mlflow.db').resolve()}"
