"""A validated search space and the four ways the rest of sweepboard consumes it.

- `define_by_run(trial)`: the Optuna define-by-run function (Ray's OptunaSearch takes it as `space=`).
- `points_to_evaluate()`: the production default, named as that function names its parameters.
- `sample_random(rng)` / `grid(n)`: baselines for benchmarks.

Searched parameters are named "<method>.<param>" ("lora.rank", "qlora.rank") so TPE keeps one
distribution per method instead of mixing what rank 16 means for LoRA and for QLoRA. The trial config
itself uses plain keys (CONFIG_KEYS); Ray also copies the prefixed names into the trial config, which
`drop_search_params` removes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search_spaces.params import (
    Categorical,
    Fixed,
    ParamSpec,
    SuggestingTrial,
    describe,
    is_searched,
    spec_bounds,
)
from search_spaces.targets import TargetModulesError, resolve_targets

METHODS = ("lora", "qlora", "full")
CONFIG_KEYS = ("method", "rank", "alpha", "target_modules", "lora_dropout", "learning_rate")
ADAPTER_KEYS = ("rank", "alpha", "target_modules", "lora_dropout")  # None for full fine-tuning
METHOD_PARAM = "method"

# (key path, bad value, how to fix): the pieces of one reported problem.
Problem = tuple[str, Any, str]


def param_name(method: str, name: str) -> str:
    """The Optuna/Tune parameter name of a searched setting."""
    return f"{method}.{name}"


def drop_search_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial config without the "<method>.<param>" copies Ray's OptunaSearch adds to it."""
    return {k: v for k, v in config.items() if k.split(".", 1)[0] not in METHODS or "." not in k}


@dataclass(frozen=True)
class MethodSpace:
    name: str
    params: dict[str, ParamSpec] = field(default_factory=dict)  # file order; alpha or alpha_ratio


@dataclass(frozen=True)
class SearchSpace:
    source: str  # the file it came from, for messages and for logging with the sweep
    method: Categorical | Fixed
    methods: dict[str, MethodSpace]
    default: dict[str, Any] | None = None  # in config naming (CONFIG_KEYS), already checked
    description: str = ""
    points: tuple[dict[str, Any], ...] = ()  # more first points, after the default (config naming)

    @property
    def method_names(self) -> tuple[str, ...]:
        if isinstance(self.method, Fixed):
            return (str(self.method.value),)
        return tuple(str(c) for c in self.method.choices)

    def define_by_run(self, trial: SuggestingTrial) -> dict[str, Any]:
        method = self.method.suggest(trial, METHOD_PARAM)
        values = {
            name: spec.suggest(trial, param_name(method, name))
            for name, spec in self.methods[method].params.items()
        }
        return to_config(method, values)

    def points_to_evaluate(self) -> list[dict[str, Any]]:
        """The default point, then the space's other first points, as Optuna parameters, for OptunaSearch(points_to_evaluate=...).

        Ray enqueues each dict with `study.enqueue_trial`, so keys must be the names
        `define_by_run` suggests; fixed settings are not Optuna parameters and are left out.
        """
        first = [] if self.default is None else [self.default]
        return [self.search_params(p) for p in (*first, *self.points)]

    def search_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A config (CONFIG_KEYS naming) as the Optuna parameters that produce it."""
        problems = self.check_point(config)
        if problems:
            raise ValueError("; ".join(f"{path}: {value!r}: {fix}" for path, value, fix in problems))
        method = str(config[METHOD_PARAM])
        space = self.methods[method]
        values = _method_values(space, config)
        point: dict[str, Any] = {METHOD_PARAM: method} if is_searched(self.method) else {}
        for name, spec in space.params.items():
            if is_searched(spec):
                point[param_name(method, name)] = values[name]
        return point

    def check_point(self, config: Mapping[str, Any], where: str = "point") -> list[Problem]:
        """Every way `config` falls outside this space (empty when it is inside)."""
        if not isinstance(config, Mapping):
            return [(where, config, "write a mapping with keys " + ", ".join(CONFIG_KEYS))]
        method = config.get(METHOD_PARAM)
        if method not in self.method_names:
            return [(f"{where}.method", method, f"use one of the searched methods {list(self.method_names)}")]
        problems: list[Problem] = []
        for key in config:
            if key not in CONFIG_KEYS:
                problems.append((f"{where}.{key}", config[key], f"unknown key; use only {list(CONFIG_KEYS)}"))
        space = self.methods[str(method)]
        if method == "full":
            for key in ADAPTER_KEYS:
                if config.get(key) is not None:
                    problems.append(
                        (f"{where}.{key}", config[key], "full fine-tuning has no adapter; remove it")
                    )
        for name, spec in space.params.items():
            key = _config_key(name)
            if key not in config and not isinstance(spec, Fixed):
                problems.append((f"{where}.{key}", None, f"missing; give a value, {describe(spec)}"))
        if problems:
            return problems
        values = _method_values(space, config)
        for name, spec in space.params.items():
            if not spec.contains(values[name]):
                key = _config_key(name)
                what = f"alpha/rank = {values[name]!r}" if name == "alpha_ratio" else key
                problems.append(
                    (f"{where}.{key}", config.get(key), f"outside the space: {what} must be {describe(spec)}")
                )
        return problems

    def target_problems(self, module_names: set[str]) -> list[str]:
        """Every target_modules value the space can propose that names modules the model lacks, so a sweep
        refuses it before any trial starts (each trial would fail on it, and be billed)."""
        problems = []
        for method in self.method_names:
            spec = self.methods[method].params.get("target_modules")
            for suffix, value in spec_bounds(spec) if spec is not None else []:
                try:
                    resolve_targets(str(value), module_names)
                except TargetModulesError as exc:
                    problems.append(f"{self.source}: methods.{method}.target_modules.{suffix}: {exc}")
        return problems

    def sample_random(self, rng: random.Random) -> dict[str, Any]:
        method = str(self.method.sample(rng))
        values = {name: spec.sample(rng) for name, spec in self.methods[method].params.items()}
        return to_config(method, values)

    def grid(self, n: int) -> list[dict[str, Any]]:
        """Every combination, with `n` evenly spaced values (log-spaced where log) per continuous range.

        The size multiplies across parameters: check len() before running it.
        """
        configs: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
        for method in self.method_names:
            params = self.methods[method].params
            axes = [spec.grid_values(n) for spec in params.values()]
            for combo in itertools.product(*axes):
                config = to_config(method, dict(zip(params, combo, strict=True)))
                configs.setdefault(tuple(config.items()), config)
        return list(configs.values())


def to_config(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat trial config from one method's parameter values."""
    config: dict[str, Any] = {METHOD_PARAM: method, **dict.fromkeys(ADAPTER_KEYS)}
    config["learning_rate"] = values["learning_rate"]
    if method == "full":
        return config
    rank = values["rank"]
    alpha = values["alpha"] if "alpha" in values else _tidy(values["alpha_ratio"] * rank)
    config.update(
        rank=rank, alpha=alpha, target_modules=values["target_modules"], lora_dropout=values["lora_dropout"]
    )
    return config


def _method_values(space: MethodSpace, config: Mapping[str, Any]) -> dict[str, Any]:
    """The method's parameter values for a config: fixed settings filled in where the config leaves
    them out, and alpha turned into alpha_ratio where the space searches the ratio."""
    values: dict[str, Any] = {}
    for name, spec in space.params.items():
        if name in config:
            values[name] = config[name]
        elif isinstance(spec, Fixed) and name != "alpha_ratio":
            values[name] = spec.value
    ratio = space.params.get("alpha_ratio")
    if ratio is not None:
        rank, alpha = values.get("rank"), config.get("alpha")
        if alpha is None and isinstance(ratio, Fixed):
            values["alpha_ratio"] = ratio.value
        elif _is_number(rank) and _is_number(alpha) and rank:
            values["alpha_ratio"] = _tidy(alpha / rank)
        else:
            values["alpha_ratio"] = alpha
    return values


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _config_key(name: str) -> str:
    """Where a parameter lives in the config: the ratio is a way to search alpha, not a setting."""
    return "alpha" if name == "alpha_ratio" else name


def _tidy(x: Any) -> Any:
    """32.0 -> 32: alpha and ratios read better, and match integer choices, when integral."""
    return int(x) if isinstance(x, float) and x.is_integer() else x
