"""The space in a real Ray Tune run: OptunaSearch with the define-by-run function, seeded with the default."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from search_spaces import drop_search_params, load_space

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")
optuna_search = pytest.importorskip("ray.tune.search.optuna")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    # Workers import the trainable by module name: give them the repo root and this folder.
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here.parents[1]), str(here), os.environ.get("PYTHONPATH", "")])
    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


def _trainable(config: dict[str, Any]) -> None:
    # Stands in for run_trial: it sees the config exactly as a real trial would.
    plain = drop_search_params(config)
    tune.report({"score": -abs(plain["learning_rate"] - 2e-4), "started": time.time(), "plain": plain})


def test_first_trial_is_the_default_point(ray_session: None, tmp_path: Path) -> None:
    space = load_space("default")
    points = space.points_to_evaluate()
    assert space.default is not None
    # metric/mode go to OptunaSearch itself: with a define-by-run space, Tune does not hand
    # TuneConfig's metric/mode to a searcher that already has a space.
    searcher = optuna_search.OptunaSearch(
        space.define_by_run, metric="score", mode="max", points_to_evaluate=points, seed=1
    )
    tuner = tune.Tuner(
        _trainable,
        param_space={"steps": 3},  # constants of the sweep are merged into every suggested config
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=4, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="space", verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    results = sorted(grid, key=lambda r: r.metrics["started"])
    assert len(results) == 4

    first = results[0].config
    assert drop_search_params(first) == {**space.default, "steps": 3}
    assert results[0].metrics["plain"] == {**space.default, "steps": 3}
    # Ray copies every suggested Optuna parameter into the config, next to the plain keys.
    assert {k: first[k] for k in points[0]} == points[0]

    study = searcher._ot_study
    assert study.trials[0].params == points[0]
    for result in results[1:]:
        config = drop_search_params(result.config)
        config.pop("steps")
        assert space.check_point(config) == []
