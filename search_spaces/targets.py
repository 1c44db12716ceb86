"""LoRA target modules: named presets or explicit comma lists, resolved against a model's module names.

No torch here: the caller (trainers/) walks its model and passes the names of its Linear leaves.
"""

from __future__ import annotations

import re

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")

# None means "every Linear leaf the caller has, except the output head": it depends on the model.
PRESETS: dict[str, tuple[str, ...] | None] = {
    "attention": ATTENTION,
    "attention+mlp": ATTENTION + MLP,
    "all-linear": None,
}

# The output head maps to the vocabulary; adapting it is rarely wanted and PEFT's own
# "all-linear" leaves it out too.
EXCLUDED_FROM_ALL_LINEAR = frozenset({"lm_head"})

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TargetModulesError(ValueError):
    """The requested target modules do not exist in the model."""


def target_problem(value: object) -> str | None:
    """Why `value` is not a valid target_modules setting (a fix to show the user), or None if it is."""
    presets = ", ".join(PRESETS)
    if not isinstance(value, str) or not value.strip():
        return f"use a preset ({presets}) or a comma list of module names such as 'q_proj,v_proj'"
    if value in PRESETS:
        return None
    names = [part.strip() for part in value.split(",")]
    bad = [name for name in names if not _MODULE_NAME.match(name)]
    if bad:
        return (
            f"not a preset ({presets}) and not a comma list of module names "
            f"(bad entries: {bad}); write e.g. 'q_proj,v_proj'"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        return f"module names listed twice: {duplicates}; list each module once"
    return None


def resolve_targets(preset_or_list: str, module_names: set[str]) -> list[str]:
    """Module names for PEFT's `target_modules`.

    `module_names` are the model's Linear leaves, either short ("q_proj") or dotted
    ("model.layers.0.self_attn.q_proj"); only the last component matters because PEFT matches suffixes.
    """
    problem = target_problem(preset_or_list)
    if problem is not None:
        raise TargetModulesError(f"target_modules: {preset_or_list!r}: {problem}")
    available = {name.rsplit(".", 1)[-1] for name in module_names}
    if preset_or_list in PRESETS:
        wanted = PRESETS[preset_or_list]
        if wanted is None:
            chosen = sorted(available - EXCLUDED_FROM_ALL_LINEAR)
            if not chosen:
                raise TargetModulesError(
                    f"target_modules: {preset_or_list!r}: the model has no Linear layers besides "
                    f"{sorted(EXCLUDED_FROM_ALL_LINEAR)} (available: {sorted(available)}); "
                    "pick the modules explicitly"
                )
            return chosen
    else:
        wanted = tuple(part.strip() for part in preset_or_list.split(","))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise TargetModulesError(
            f"target_modules: {preset_or_list!r}: the model has no modules named {missing}; "
            f"available Linear modules: {sorted(available)}; pick a preset that fits the model "
            "or list existing names"
        )
    return list(wanted)
