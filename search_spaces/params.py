"""The four kinds of parameter a search space holds, and what can be done with each.

Every spec can be suggested through an Optuna trial, checked for membership, sampled with a
`random.Random`, and laid out on a grid. The spec is parsed from YAML in loader.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

Scalar = str | int | float | bool | None


class SuggestingTrial(Protocol):
    """The part of `optuna.Trial` we use; Ray's suggest captor satisfies it as well."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...) -> int: ...


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Scalar, ...]

    def suggest(self, trial: SuggestingTrial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        # `True == 1` in Python; keep bools and numbers apart so a typo cannot slip through.
        return any((type(value) is type(c) and value == c) or _same_number(value, c) for c in self.choices)

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.choices)

    def grid_values(self, n: int) -> list[Any]:
        return list(self.choices)


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: SuggestingTrial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high

    def sample(self, rng: random.Random) -> Any:
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def grid_values(self, n: int) -> list[Any]:
        return _spaced(self.low, self.high, self.log, n)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: SuggestingTrial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def sample(self, rng: random.Random) -> Any:
        if self.log:
            # As Optuna does: log-uniform over [low - 0.5, high + 0.5] so the end points are not starved.
            x = math.exp(rng.uniform(math.log(self.low - 0.5), math.log(self.high + 0.5)))
            return min(self.high, max(self.low, round(x)))
        return rng.randrange(self.low, self.high + 1, self.step)

    def grid_values(self, n: int) -> list[Any]:
        snapped = [self._snap(x) for x in _spaced(self.low, self.high, self.log, n)]
        return list(dict.fromkeys(snapped))

    def _snap(self, x: float) -> int:
        k = round((x - self.low) / self.step)
        return min(self.high - (self.high - self.low) % self.step, self.low + k * self.step)


@dataclass(frozen=True)
class Fixed:
    """A constant: part of the config but not searched, so Optuna never sees it."""

    value: Scalar

    def suggest(self, trial: SuggestingTrial, name: str) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return (type(value) is type(self.value) and value == self.value) or _same_number(value, self.value)

    def sample(self, rng: random.Random) -> Any:
        return self.value

    def grid_values(self, n: int) -> list[Any]:
        return [self.value]


ParamSpec = Categorical | FloatRange | IntRange | Fixed


def is_searched(spec: ParamSpec) -> bool:
    return not isinstance(spec, Fixed)


def spec_bounds(spec: ParamSpec) -> list[tuple[str, Any]]:
    """Every value a spec names (key path suffix, value), so value rules can check them all."""
    if isinstance(spec, Categorical):
        return [(f"choices[{i}]", c) for i, c in enumerate(spec.choices)]
    if isinstance(spec, FloatRange | IntRange):
        return [("low", spec.low), ("high", spec.high)]
    return [("value", spec.value)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_number(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a == b


def _spaced(low: float, high: float, log: bool, n: int) -> list[float]:
    if n < 1:
        raise ValueError(f"grid: n={n}: need at least one point per continuous parameter; pass n >= 1")
    if n == 1:
        return [math.sqrt(low * high) if log else (low + high) / 2]
    if log:
        a, b = math.log(low), math.log(high)
        values = [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
    else:
        values = [low + (high - low) * i / (n - 1) for i in range(n)]
    # exp(log(x)) drifts by an ulp; the end points must stay inside the range exactly.
    values[0], values[-1] = low, high
    return values


def describe(spec: ParamSpec) -> str:
    """The spec in words, for error messages that say what would be accepted."""
    if isinstance(spec, Categorical):
        return f"one of {list(spec.choices)}"
    if isinstance(spec, FloatRange):
        return f"a number in [{spec.low:g}, {spec.high:g}]" + (" (log scale)" if spec.log else "")
    if isinstance(spec, IntRange):
        step = f" in steps of {spec.step}" if spec.step != 1 else ""
        return f"an integer in [{spec.low}, {spec.high}]{step}"
    return f"exactly {spec.value!r} (fixed)"
