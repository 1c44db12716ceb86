"""What each parameter may hold: the spec types it accepts and a rule for every value it names.

A rule returns None when a value is fine, otherwise how to fix it (shown to the user verbatim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces.targets import target_problem


def number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _rank(x: Any) -> str | None:
    ok = isinstance(x, int) and not isinstance(x, bool) and x > 0
    return None if ok else "rank must be a positive integer (8 style, 16 general, 32 domain, 64 hardest)"


def _alpha(x: Any) -> str | None:
    return None if number(x) and x > 0 else "alpha must be a positive number; 2 x rank is the usual start"


def _alpha_ratio(x: Any) -> str | None:
    return None if number(x) and x > 0 else "alpha_ratio (alpha = ratio x rank) must be positive, e.g. 2"


def _dropout(x: Any) -> str | None:
    return None if number(x) and 0 <= x < 1 else "lora_dropout must be a number in [0, 1), e.g. 0.05"


def _learning_rate(x: Any) -> str | None:
    ok = number(x) and 0 < x < 1
    return None if ok else "learning_rate must be a number in (0, 1): LoRA 1e-4..3e-4, full 5e-6..1e-5"


Rule = tuple[tuple[str, ...], Callable[[Any], str | None]]  # (allowed spec types, value rule)
PARAM_RULES: dict[str, Rule] = {
    "rank": (("categorical", "int", "fixed"), _rank),
    "alpha": (("categorical", "float", "int", "fixed"), _alpha),
    "alpha_ratio": (("categorical", "float", "int", "fixed"), _alpha_ratio),
    "target_modules": (("categorical", "fixed"), target_problem),
    "lora_dropout": (("categorical", "float", "fixed"), _dropout),
    "learning_rate": (("categorical", "float", "fixed"), _learning_rate),
}
ADAPTER_PARAMS = ("rank", "alpha", "alpha_ratio", "target_modules", "lora_dropout", "learning_rate")
METHOD_PARAMS = {"lora": ADAPTER_PARAMS, "qlora": ADAPTER_PARAMS, "full": ("learning_rate",)}
