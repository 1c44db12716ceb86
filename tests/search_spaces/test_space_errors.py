"""Each kind of mistake is reported, with key path, value and fix, and all of them at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_spaces import SearchSpaceError, load_space, parse_space

GOOD_LORA = """
    rank: {type: categorical, choices: [8, 16]}
    alpha_ratio: {type: fixed, value: 2}
    target_modules: {type: categorical, choices: [attention, "q_proj,v_proj"]}
    lora_dropout: {type: float, low: 0.0, high: 0.1}
    learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = _write(tmp_path, text)
    with pytest.raises(SearchSpaceError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert all(p.startswith(f"{path}: ") for p in info.value.problems)
    return info.value.problems


def _has(problems: list[str], *fragments: str) -> bool:
    return any(all(f in p for f in fragments) for p in problems)


def test_a_good_space_loads(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, f"methods:\n  lora:{GOOD_LORA}"))
    assert space.method_names == ("lora",)
    assert space.default is None and space.points_to_evaluate() == []


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """
colour: blue
method: {type: categorical, choices: [lora, qlora, full, dora]}
methods:
  none: {}
  dora: {}
  lora:
    rank: {type: categorical, choices: [0, 8, 8]}
    alpha: {type: float, low: -1, high: 4}
    alpha_ratio: {type: fixed, value: 2}
    target_modules: {type: categorical, choices: ["attention", "q_proj,,v_proj", "q_proj,q_proj"]}
    lora_dropout: {type: float, low: 0.0, high: 1.5}
    learning_rate: {type: float, low: 0.0, high: 1e-3, log: true}
    bias: {type: fixed, value: none}
  qlora:
    rank: {type: int, low: 64, high: 8}
    alpha_ratio: {type: gaussian, mean: 2}
    target_modules: {type: categorical, choices: []}
    lora_dropout: {type: fixed, value: 0.05, extra: 1}
    learning_rate: {type: categorical, choices: [-1e-4, 2e-4]}
  full:
    learning_rate: {type: float, low: 1e-6, high: 1e-4, log: yes}
    rank: {type: fixed, value: 8}
default:
  method: full
  learning_rate: 1e-2
"""
    problems = _problems(tmp_path, text)
    expected = [
        ("colour", "'blue'", "unknown key"),
        ("methods.none", "baseline"),
        ("methods.dora", "unknown method"),
        ("method.choices[3]", "'dora'", "not defined under methods"),
        ("methods.full.rank", "unknown parameter for full"),
        ("methods.lora.rank.choices[0]", ": 0:", "positive integer"),
        ("methods.lora.rank.choices", ": 8:", "listed twice"),
        ("methods.lora.alpha.low", "-1", "alpha must be a positive number"),
        ("methods.lora:", "['alpha', 'alpha_ratio']", "exactly one of alpha or alpha_ratio"),
        ("methods.lora.target_modules.choices[1]", "q_proj,,v_proj", "comma list"),
        ("methods.lora.target_modules.choices[2]", "listed twice"),
        ("methods.lora.lora_dropout.high", "1.5", "[0, 1)"),
        ("methods.lora.learning_rate.low", "0.0", "log-scale range needs low > 0"),
        ("methods.lora.learning_rate.low", "0.0", "learning_rate must be a number in (0, 1)"),
        ("methods.lora.bias", "unknown parameter for lora"),
        ("methods.qlora.rank.low", "64", "low must be below high"),
        ("methods.qlora.alpha_ratio.type", "'gaussian'", "unknown type"),
        ("methods.qlora.target_modules.choices", "[]", "non-empty list"),
        ("methods.qlora.lora_dropout.extra", "unknown key for a fixed spec"),
        ("methods.qlora.learning_rate.choices[0]", "-0.0001", "learning_rate must be"),
        ("default.learning_rate", "0.01", "outside the space"),
    ]
    missing = [e for e in expected if not _has(problems, *e)]
    assert not missing, "\n".join(problems)
    assert len(problems) >= len(expected)


def test_type_not_allowed_for_parameter_and_missing_keys(tmp_path: Path) -> None:
    text = """
methods:
  lora:
    rank: {type: float, low: 4, high: 64}
    alpha: {type: int, low: 8}
    target_modules: {type: float, low: 0, high: 1}
    learning_rate: {type: fixed, value: 2e-4}
  full:
    learning_rate: "2e-5"
"""
    problems = _problems(tmp_path, text)
    assert _has(problems, "methods.lora.rank.type", "'float'", "accepts only ['categorical', 'int', 'fixed']")
    assert _has(problems, "methods.lora.alpha.high", "missing")
    assert _has(problems, "methods.lora.target_modules.type", "accepts only ['categorical', 'fixed']")
    assert _has(problems, "methods.lora.lora_dropout", "missing; add it")
    assert _has(problems, "methods.full.learning_rate", "'2e-5'", "write a spec")


def test_default_point_outside_the_space(tmp_path: Path) -> None:
    text = f"""
methods:
  lora:{GOOD_LORA}
default:
  method: lora
  rank: 32
  alpha: 48
  target_modules: all-linear
  lora_dropout: 0.05
  learning_rate: 2e-4
  epochs: 3
"""
    problems = _problems(tmp_path, text)
    assert _has(problems, "default.epochs", "unknown key")
    text = text.replace("  epochs: 3\n", "")
    problems = _problems(tmp_path, text)
    assert _has(problems, "default.rank", "32", "one of [8, 16]")
    assert _has(problems, "default.alpha", "48", "alpha/rank = 1.5", "exactly 2")
    assert _has(problems, "default.target_modules", "'all-linear'", "one of ['attention', 'q_proj,v_proj']")
    assert len(problems) == 3


def test_default_point_with_an_unsearched_method(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, f"methods:\n  lora:{GOOD_LORA}\ndefault: {{method: full, learning_rate: 1e-5}}"
    )
    assert _has(problems, "default.method", "'full'", "searched methods ['lora']")


def test_method_defined_but_never_chosen(tmp_path: Path) -> None:
    text = f"""
method: {{type: fixed, value: full}}
methods:
  lora:{GOOD_LORA}
  full:
    learning_rate: {{type: float, low: 1e-6, high: 1e-4, log: true}}
"""
    problems = _problems(tmp_path, text)
    assert _has(problems, "methods.lora", "never chosen")
    assert len(problems) == 1


def test_range_type_errors(tmp_path: Path) -> None:
    text = """
methods:
  full:
    learning_rate: {type: float, low: small, high: 1e-4, log: maybe}
  lora:
    rank: {type: int, low: 4, high: 64, log: true, step: 4}
    alpha: {type: int, low: 4.5, high: 64}
    target_modules: {type: fixed, value: [q_proj]}
    lora_dropout: {type: fixed, value: 0.05}
    learning_rate: {type: fixed, value: 2e-4}
"""
    problems = _problems(tmp_path, text)
    assert _has(problems, "methods.full.learning_rate.low", "'small'", "must be a number")
    assert _has(problems, "methods.full.learning_rate.log", "'maybe'", "true or false")
    assert _has(problems, "methods.lora.rank.step", "4", "log: true with step != 1")
    assert _has(problems, "methods.lora.alpha.low", "4.5", "must be an integer")
    assert _has(problems, "methods.lora.target_modules.value", "['q_proj']", "string, number, bool or null")


def test_yaml_problems(tmp_path: Path) -> None:
    text = f"methods:\n  lora:{GOOD_LORA}    rank: {{type: fixed, value: 8}}\n"
    problems = _problems(tmp_path, text)
    assert _has(problems, "line ", "'rank'", "duplicate key")
    problems = _problems(tmp_path, "methods: [unclosed\n")
    assert _has(problems, "<yaml>", "fix the YAML syntax")
    problems = _problems(tmp_path, "- just a list\n")
    assert _has(problems, "<top level>", "mapping")


def test_missing_file_names_the_builtin_spaces(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match="no such file.*default.*smoke"):
        load_space(tmp_path / "nope.yaml")


def test_parse_space_reports_its_source() -> None:
    with pytest.raises(SearchSpaceError, match="sweep.yaml#space: methods: None"):
        parse_space({"methods": None}, source="sweep.yaml#space")
