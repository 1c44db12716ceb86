"""Target presets resolve to a model's module names, and wrong names are explained."""

from __future__ import annotations

import pytest

from search_spaces import TargetModulesError, resolve_targets

LLAMA_LEAVES = {
    f"model.layers.{i}.{block}.{name}"
    for i in range(2)
    for block, names in (
        ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        ("mlp", ("gate_proj", "up_proj", "down_proj")),
    )
    for name in names
} | {"lm_head"}


def test_presets() -> None:
    assert resolve_targets("attention", LLAMA_LEAVES) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_targets("attention+mlp", LLAMA_LEAVES) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    all_linear = resolve_targets("all-linear", LLAMA_LEAVES)
    assert "lm_head" not in all_linear
    assert sorted(all_linear) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_all_linear_follows_the_callers_names() -> None:
    assert resolve_targets("all-linear", {"c_attn", "c_proj", "c_fc", "lm_head"}) == [
        "c_attn",
        "c_fc",
        "c_proj",
    ]


def test_comma_list() -> None:
    assert resolve_targets("q_proj, v_proj", LLAMA_LEAVES) == ["q_proj", "v_proj"]


def test_unknown_modules_are_named_with_the_available_ones() -> None:
    with pytest.raises(TargetModulesError) as info:
        resolve_targets("attention", {"c_attn", "c_proj", "lm_head"})
    message = str(info.value)
    assert "['q_proj', 'k_proj', 'v_proj', 'o_proj']" in message
    assert "available Linear modules: ['c_attn', 'c_proj', 'lm_head']" in message
    with pytest.raises(TargetModulesError, match=r"no modules named \['qproj'\]"):
        resolve_targets("qproj,v_proj", LLAMA_LEAVES)


def test_malformed_and_empty() -> None:
    with pytest.raises(TargetModulesError, match="bad entries"):
        resolve_targets("q_proj;v_proj", LLAMA_LEAVES)
    with pytest.raises(TargetModulesError, match="comma list"):
        resolve_targets("", LLAMA_LEAVES)
    with pytest.raises(TargetModulesError, match="no Linear layers besides"):
        resolve_targets("all-linear", {"lm_head"})
