"""The space drives a real Optuna study, and its random/grid forms stay inside it."""

from __future__ import annotations

import math
import random
from pathlib import Path

import optuna
import pytest

from search_spaces import CONFIG_KEYS, drop_search_params, load_space, param_name

ADAPTER = ("rank", "alpha", "target_modules", "lora_dropout")


def test_define_by_run_in_a_tpe_study_is_conditional_on_method() -> None:
    space = load_space("default")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7))
    for point in space.points_to_evaluate():
        study.enqueue_trial(point)
    configs: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        config = space.define_by_run(trial)
        configs.append(config)
        # Something TPE can climb, so its model-based phase (after 10 startup trials) is exercised.
        return -abs(math.log10(config["learning_rate"]) + 4)

    study.optimize(objective, n_trials=24)

    assert configs[0] == space.default  # the enqueued production default comes first
    methods_seen = set()
    for trial, config in zip(study.trials, configs, strict=True):
        method = config["method"]
        methods_seen.add(method)
        assert tuple(config) == CONFIG_KEYS
        assert trial.params["method"] == method
        # Only the chosen method's searched parameters exist, each under its method's prefix (alpha is fixed).
        expected = {"method"} | {param_name(method, n) for n in space.methods[method].params if n != "alpha"}
        assert set(trial.params) == expected
        if method == "full":
            assert all(config[k] is None for k in ADAPTER)
            assert 1e-6 <= config["learning_rate"] <= 3e-4
        else:
            assert config["rank"] in (4, 8, 16, 32, 64)
            assert config["alpha"] == 32  # fixed: not an Optuna parameter (checked just below)
            assert 1e-5 <= config["learning_rate"] <= 3e-3
        assert space.check_point(config) == []
    assert methods_seen == {"lora", "qlora", "full"}
    # Separate names give TPE one distribution per method.
    assert {"lora.rank", "qlora.rank"} <= {name for t in study.trials for name in t.params}


def test_fixed_parameters_are_constants_not_optuna_params() -> None:
    space = load_space("smoke")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    trial = study.ask()
    config = space.define_by_run(trial)
    method = config["method"]
    if method != "full":
        assert set(trial.params) == {"method", f"{method}.rank", f"{method}.learning_rate"}
        assert (config["alpha"], config["target_modules"], config["lora_dropout"]) == (
            16,
            "attention",
            0.05,
        )


def test_sample_random_is_seeded_and_covers_the_space() -> None:
    space = load_space("default")
    a = [space.sample_random(random.Random(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(1)
    samples = [space.sample_random(rng) for _ in range(300)]
    assert {s["method"] for s in samples} == {"lora", "qlora", "full"}
    assert {s["rank"] for s in samples if s["method"] == "lora"} == {4, 8, 16, 32, 64}
    assert all(space.check_point(s) == [] for s in samples)
    lrs = [s["learning_rate"] for s in samples if s["method"] != "full"]
    # Log-uniform: about as many below 1e-4 as above.
    below = sum(lr < 1e-4 for lr in lrs) / len(lrs)
    assert 0.35 < below < 0.65


def test_grid_enumerates_every_combination(tmp_path: Path) -> None:
    space = load_space("smoke")
    grid = space.grid(3)
    # lora and qlora: 2 ranks x 3 learning rates; full: 3 learning rates.
    assert len(grid) == 2 * 2 * 3 + 3
    assert len({tuple(c.items()) for c in grid}) == len(grid)
    assert all(space.check_point(c) == [] for c in grid)
    full_lrs = sorted(c["learning_rate"] for c in grid if c["method"] == "full")
    assert full_lrs == pytest.approx([1e-6, 1e-5, 1e-4])
    assert full_lrs[0] == 1e-6 and full_lrs[-1] == 1e-4  # end points exact, not an ulp outside
    with pytest.raises(ValueError, match="n >= 1"):
        space.grid(0)


def test_int_ranges_and_alpha_in_grid_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "ints.yaml"
    path.write_text(
        """
methods:
  lora:
    rank: {type: int, low: 4, high: 64, log: true}
    alpha: {type: int, low: 8, high: 20, step: 4}
    target_modules: {type: fixed, value: "q_proj,v_proj"}
    lora_dropout: {type: float, low: 0.0, high: 0.1}
    learning_rate: {type: categorical, choices: [1e-4, 2e-4]}
default: {method: lora, rank: 16, alpha: 12, lora_dropout: 0.0, learning_rate: 1e-4}
"""
    )
    space = load_space(path)
    assert space.points_to_evaluate() == [
        {
            "method": "lora",
            "lora.rank": 16,
            "lora.alpha": 12,
            "lora.lora_dropout": 0.0,
            "lora.learning_rate": 1e-4,
        }
    ]
    grid = space.grid(4)
    assert sorted({c["rank"] for c in grid}) == [4, 10, 25, 64]
    assert sorted({c["alpha"] for c in grid}) == [8, 12, 16, 20]
    rng = random.Random(0)
    ranks = {space.sample_random(rng)["rank"] for _ in range(500)}
    assert min(ranks) == 4 and max(ranks) == 64
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        config = space.define_by_run(study.ask())
        assert space.check_point(config) == []
        assert config["target_modules"] == "q_proj,v_proj"


def test_exponent_floats_are_numbers_in_space_files(tmp_path: Path) -> None:
    # PyYAML alone reads `2e-4` as a string; the loader must not.
    space = load_space("default")
    lr = space.methods["lora"].params["learning_rate"]
    assert isinstance(lr.low, float) and lr.low == 1e-5  # type: ignore[union-attr]
    assert isinstance(space.default, dict) and space.default["learning_rate"] == 2e-4


def test_search_params_and_drop_search_params() -> None:
    space = load_space("default")
    config = {
        "method": "qlora",
        "rank": 8,
        "alpha": 32,
        "target_modules": "all-linear",
        "lora_dropout": 0.1,
        "learning_rate": 3e-4,
    }
    params = space.search_params(config)
    assert "qlora.alpha" not in params and "qlora.alpha_ratio" not in params  # fixed at 32: no parameter
    assert params["qlora.rank"] == 8 and params["qlora.learning_rate"] == 3e-4
    tune_config = {**params, **config, "steps": 100}
    assert drop_search_params(tune_config) == {**config, "steps": 100}
    with pytest.raises(ValueError, match="point.rank: 12: outside the space"):
        space.search_params({**config, "rank": 12})
    with pytest.raises(ValueError, match="point.alpha: 64: outside the space"):
        space.search_params({**config, "alpha": 64})
