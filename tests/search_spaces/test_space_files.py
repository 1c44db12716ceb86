"""Every search-space YAML in the repository loads and is usable."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import builtin_spaces, load_space

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "node_modules", "runs", "build", "dist"}


def _space_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*.yaml"):
        parts = path.relative_to(REPO).parts
        if "search_spaces" in parts[:-1] and not SKIP.intersection(parts):
            files.append(path)
    return sorted(files)


def test_the_builtin_spaces_are_found() -> None:
    names = {p.name for p in _space_files()}
    assert {"default.yaml", "smoke.yaml"} <= names
    assert set(builtin_spaces()) >= {"default", "smoke"}


@pytest.mark.parametrize("path", _space_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_space_file_validates(path: Path) -> None:
    space = load_space(path)
    assert space.method_names
    assert set(space.method_names) <= {"lora", "qlora", "full"}
    for point in space.points_to_evaluate():
        assert point  # the default point is expressed as searched parameters
    rng = random.Random(0)
    for _ in range(20):
        config = space.sample_random(rng)
        assert space.check_point(config) == [], config


def test_default_space_matches_the_production_default() -> None:
    space = load_space("default")
    assert space.default == {
        "method": "lora",
        "rank": 16,
        "alpha": 32,
        "target_modules": "attention",
        "lora_dropout": 0.05,
        "learning_rate": 2e-4,
    }
    assert space.points_to_evaluate() == [
        {
            "method": "lora",
            "lora.rank": 16,
            "lora.target_modules": "attention",
            "lora.lora_dropout": 0.05,
            "lora.learning_rate": 2e-4,
        }
    ]
    # Alpha is fixed (not an Optuna parameter), so the rank moves the scale alpha/rank, not the best rate.
    assert space.methods["lora"].params["alpha"].value == 32  # type: ignore[union-attr]
    assert "alpha_ratio" not in space.methods["qlora"].params
    lr = space.methods["full"].params["learning_rate"]
    assert (lr.low, lr.high, lr.log) == (1e-6, 3e-4, True)  # type: ignore[union-attr]
    lr = space.methods["lora"].params["learning_rate"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 3e-3, True)  # type: ignore[union-attr]


def test_load_by_builtin_name_and_by_path_agree() -> None:
    assert load_space("smoke") == load_space(builtin_spaces()["smoke"])


def test_importing_search_spaces_pulls_in_no_heavy_library() -> None:
    # search_spaces never imports torch (it stays light to import); Optuna and Ray only arrive with the trial object.
    code = "import sys, search_spaces; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert not loaded & {"torch", "optuna", "ray"}
