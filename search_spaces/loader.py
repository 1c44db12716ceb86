"""Read a search-space YAML file, check all of it, and build a SearchSpace.

The schema (default.yaml is the worked example):

    description: text                        # optional
    method: {type: categorical, choices: [lora, full]}   # optional; default: every key of methods
    methods:                                 # lora | qlora | full ("none" is the sweep's own baseline)
      lora:                                  # rank, alpha XOR alpha_ratio, target_modules, lora_dropout,
        rank: {type: categorical, choices: [8, 16]}     # learning_rate: all required
        alpha_ratio: {type: fixed, value: 2}  # alpha = alpha_ratio x rank
        ...
      full: {learning_rate: {type: float, low: 1e-6, high: 1e-4, log: true}}
    default: {method: lora, rank: 16, alpha: 32, ...}   # optional; evaluated first; must lie inside
    points: [{method: qlora, rank: 16, ...}, ...]       # optional; evaluated right after the default

A spec is {type: categorical, choices}, {type: float, low, high, log}, {type: int, low, high, log, step}
or {type: fixed, value}. Every problem is collected before anything is raised, so one run shows the
user the whole list; each reads `<file>: <key path>: <bad value>: <how to fix>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from search_spaces.params import Categorical, Fixed, FloatRange, IntRange, ParamSpec, spec_bounds
from search_spaces.rules import METHOD_PARAMS, PARAM_RULES, number
from search_spaces.space import METHODS, MethodSpace, SearchSpace
from search_spaces.yaml_io import SpaceLoader

BUILTIN_DIR = Path(__file__).resolve().parent
TOP_LEVEL_KEYS = ("description", "method", "methods", "default", "points")
SPEC_KEYS = {
    "categorical": (("choices",), ()),  # (required, optional)
    "float": (("low", "high"), ("log",)),
    "int": (("low", "high"), ("log", "step")),
    "fixed": (("value",), ()),
}
ALL_TYPES = ("categorical", "float", "int", "fixed")


class SearchSpaceError(ValueError):
    """A search space file with problems; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in search space {source}:\n{listing}")


@dataclass
class _Problems:
    source: str
    lines: list[str] = field(default_factory=list)

    def add(self, path: str, value: Any, fix: str) -> None:
        self.lines.append(f"{self.source}: {path}: {value!r}: {fix}")


# --- entry points -----------------------------------------------------------------------------------


def builtin_spaces() -> dict[str, Path]:
    """The spaces shipped with sweepboard, by name ("default", "smoke", ...)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def load_space(path: str | Path) -> SearchSpace:
    """Load and check a search space file; a bare name such as "smoke" picks a built-in one."""
    file = Path(path)
    if not file.exists() and file.suffix == "" and str(path) in builtin_spaces():
        file = builtin_spaces()[str(path)]
    if not file.is_file():
        known = ", ".join(builtin_spaces())
        raise SearchSpaceError(
            str(path),
            [f"{path}: <file>: {str(path)!r}: no such file; give a path to a YAML file or one of {known}"],
        )
    loader = SpaceLoader(file.read_text(encoding="utf-8"))
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise SearchSpaceError(str(file), [f"{file}: <yaml>: {err}: fix the YAML syntax"]) from err
    finally:
        loader.dispose()
    problems = _Problems(str(file))
    for key, line in loader.duplicates:
        problems.add(f"line {line}", key, "duplicate key (YAML would silently keep the last one); keep one")
    return _parse(data, problems)


def parse_space(data: Any, source: str = "<inline space>") -> SearchSpace:
    """Check an already-parsed mapping (e.g. a space embedded in a sweep config)."""
    return _parse(data, _Problems(source))


def _parse(data: Any, problems: _Problems) -> SearchSpace:
    if not isinstance(data, Mapping):
        problems.add("<top level>", data, "write a mapping with a `methods:` key")
        raise SearchSpaceError(problems.source, problems.lines)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.add(str(key), data[key], f"unknown key; allowed top-level keys: {list(TOP_LEVEL_KEYS)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.add("description", description, "write the description as one string")
        description = ""
    methods = _parse_methods(data.get("methods"), problems)
    method = _parse_method_choice(data.get("method"), methods, problems)
    space = SearchSpace(problems.source, method or Categorical(()), methods, None, description)
    if "default" in data and method is not None:
        for path, value, fix in space.check_point(data["default"], where="default"):
            problems.add(path, value, fix)
    points = data.get("points") or []
    if not isinstance(points, list):
        problems.add("points", points, "write a list of points, each a mapping like `default:`")
        points = []
    if method is not None:
        for i, point in enumerate(points):
            for path, value, fix in space.check_point(point, where=f"points[{i}]"):
                problems.add(path, value, fix)
    if problems.lines:
        raise SearchSpaceError(problems.source, problems.lines)
    space = replace(space, points=tuple(dict(p) for p in points))
    return replace(space, default=dict(data["default"])) if "default" in data else space


def _parse_methods(raw: Any, problems: _Problems) -> dict[str, MethodSpace]:
    if not isinstance(raw, Mapping) or not raw:
        problems.add("methods", raw, f"give a mapping from method ({', '.join(METHODS)}) to its parameters")
        return {}
    methods: dict[str, MethodSpace] = {}
    for name, params in raw.items():
        where = f"methods.{name}"
        if name == "none":
            problems.add(where, params, "the base-model baseline is run by the sweep itself; remove it here")
            continue
        if name not in METHODS:
            problems.add(where, name, f"unknown method; use {list(METHODS)}")
            continue
        if not isinstance(params, Mapping):
            problems.add(where, params, "give a mapping from parameter name to its spec")
            continue
        methods[name] = MethodSpace(name, _parse_params(name, params, where, problems))
    return methods


def _parse_method_choice(
    raw: Any, methods: dict[str, MethodSpace], problems: _Problems
) -> Categorical | Fixed | None:
    """The `method:` spec: by default every method under `methods:`, each searched."""
    if raw is None:
        return Categorical(tuple(methods)) if methods else None
    spec = _parse_spec(raw, "method", ("categorical", "fixed"), problems)
    if not isinstance(spec, Categorical | Fixed):
        return None
    chosen = list(spec.choices) if isinstance(spec, Categorical) else [spec.value]
    for i, name in enumerate(chosen):
        if name not in methods:
            where = f"method.choices[{i}]" if isinstance(spec, Categorical) else "method.value"
            problems.add(
                where, name, f"not defined under methods ({list(methods)}); define methods.{name} or drop it"
            )
    for name in methods:
        if name not in chosen:
            problems.add(
                f"methods.{name}",
                name,
                "defined but never chosen by `method:`; add it to method or remove it",
            )
    # Keep the methods that exist, so the default point can still be checked in this run.
    valid = tuple(name for name in chosen if name in methods)
    if isinstance(spec, Fixed):
        return spec if valid else None
    return Categorical(valid) if valid else None


def _parse_params(
    method: str, raw: Mapping[str, Any], where: str, problems: _Problems
) -> dict[str, ParamSpec]:
    allowed = METHOD_PARAMS[method]
    specs: dict[str, ParamSpec] = {}
    for name, raw_spec in raw.items():
        if name not in allowed:
            problems.add(
                f"{where}.{name}", raw_spec, f"unknown parameter for {method}; allowed: {list(allowed)}"
            )
            continue
        types, rule = PARAM_RULES[name]
        spec = _parse_spec(raw_spec, f"{where}.{name}", types, problems)
        if spec is None:
            continue
        for suffix, value in spec_bounds(spec):
            fix = rule(value)
            if fix is not None:
                problems.add(f"{where}.{name}.{suffix}", value, fix)
        specs[name] = spec
    if method != "full":
        given = [n for n in ("alpha", "alpha_ratio") if n in raw]
        if len(given) != 1:
            problems.add(
                where, given, "give exactly one of alpha or alpha_ratio (alpha = alpha_ratio x rank)"
            )
    for name in allowed:
        if name not in raw and name not in ("alpha", "alpha_ratio"):
            problems.add(
                f"{where}.{name}",
                None,
                "missing; add it (a `{type: fixed, value: ...}` spec if not searched)",
            )
    return specs


def _parse_spec(raw: Any, where: str, types: tuple[str, ...], problems: _Problems) -> ParamSpec | None:
    if not isinstance(raw, Mapping):
        problems.add(where, raw, "write a spec such as {type: categorical, choices: [...]}")
        return None
    kind = raw.get("type")
    if kind not in ALL_TYPES:
        problems.add(f"{where}.type", kind, f"unknown type; use one of {list(ALL_TYPES)}")
        return None
    if kind not in types:
        problems.add(f"{where}.type", kind, f"this parameter accepts only {list(types)}")
        return None
    required, optional = SPEC_KEYS[kind]
    complete = True
    for key in required:
        if key not in raw:
            problems.add(f"{where}.{key}", None, f"missing; a {kind} spec needs {list(required)}")
            complete = False
    for key in raw:
        if key != "type" and key not in required + optional:
            problems.add(
                f"{where}.{key}",
                raw[key],
                f"unknown key for a {kind} spec; allowed: {list(required + optional)}",
            )
    if not complete:
        return None
    if kind == "categorical":
        return _categorical(raw["choices"], where, problems)
    if kind == "fixed":
        if not _scalar(raw["value"]):
            problems.add(
                f"{where}.value", raw["value"], "a fixed value must be a string, number, bool or null"
            )
            return None
        return Fixed(raw["value"])
    return _range(kind, raw, where, problems)


def _categorical(choices: Any, where: str, problems: _Problems) -> Categorical | None:
    if not isinstance(choices, list) or not choices:
        problems.add(f"{where}.choices", choices, "give a non-empty list, e.g. [4, 8, 16]")
        return None
    bad = [c for c in choices if not _scalar(c)]
    if bad:
        problems.add(f"{where}.choices", bad, "choices must be strings, numbers, bools or null")
        return None
    seen: list[Any] = []
    for c in choices:
        if any(c == s and type(c) is type(s) for s in seen):
            problems.add(
                f"{where}.choices", c, "listed twice (it would be sampled twice as often); list it once"
            )
        seen.append(c)
    return Categorical(tuple(choices))


def _range(kind: str, raw: Mapping[str, Any], where: str, problems: _Problems) -> ParamSpec | None:
    is_int = kind == "int"
    ok = True
    for key in ("low", "high") + (("step",) if "step" in raw else ()):
        value = raw[key]
        good = isinstance(value, int) and not isinstance(value, bool) if is_int else number(value)
        if not good:
            problems.add(f"{where}.{key}", value, f"must be {'an integer' if is_int else 'a number'}")
            ok = False
    log = raw.get("log", False)
    if not isinstance(log, bool):
        problems.add(f"{where}.log", log, "write true or false")
        ok = False
    if not ok:
        return None
    low, high, step = raw["low"], raw["high"], raw.get("step", 1)
    # The problems below are reported, but the spec is still returned so the value rules of the
    # parameter (e.g. "learning_rate > 0") get to report theirs in the same run.
    if low >= high:
        problems.add(f"{where}.low", low, f"low must be below high ({high}); use a fixed spec for one value")
    if log and low <= 0:
        problems.add(f"{where}.low", low, "a log-scale range needs low > 0")
    if is_int and step <= 0:
        problems.add(f"{where}.step", step, "step must be a positive integer")
        step = 1
    if is_int and log and step != 1:
        problems.add(f"{where}.step", step, "Optuna cannot combine log: true with step != 1; drop one")
    return IntRange(low, high, log, step) if is_int else FloatRange(float(low), float(high), log)


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, str | int | float | bool)
