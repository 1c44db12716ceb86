"""The method floors of sweeps/search.py: the proposal rule on real Optuna studies, the pruning rule around
Ray Tune's real ASHAScheduler, what Optuna is told, and one real Tune run where ASHA would prune adapters."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search_spaces.loader import load_space
from sweeps import config as sweep_config
from sweeps import pruning, search
from trainers.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
FLOORS = {"adapter": 3, "full": 1}
CHOICES = ["lora", "qlora", "full"]


def enqueue_and_run(study: optuna.Study, method: str, value: float | None, state: str = "complete") -> None:
    study.enqueue_trial({"method": method, "x": value or 0.0})
    trial = study.ask()
    trial.suggest_categorical("method", CHOICES)
    trial.suggest_float("x", -10, 10)
    if state == "complete":
        study.tell(trial, value)
    elif state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_floors_follow_the_space_and_turn_off_at_zero() -> None:
    assert search.method_floors(["lora", "qlora", "full"], 3) == {"adapter": 3, "full": 1}
    assert list(search.method_floors(["full", "lora"], 3)) == ["adapter", "full"]  # adapters are filled first
    assert search.method_floors(["lora"], 2) == {"adapter": 2}
    assert search.method_floors(["lora", "qlora", "full"], 0) == {}


def test_the_proposal_takes_the_leading_adapter_method_until_three_adapters_completed() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    enqueue_and_run(study, "lora", 0.86)
    enqueue_and_run(study, "qlora", 0.80)
    enqueue_and_run(study, "full", 0.93)
    trials = study.get_trials()
    assert search.forced_method(trials, CHOICES, FLOORS) == "lora"  # 2 adapters: LoRA leads QLoRA
    enqueue_and_run(study, "qlora", 0.95, state="pruned")  # stopped by ASHA: no evidence for the floor
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS) == "lora"
    enqueue_and_run(study, "qlora", 0.90)
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS) is None  # 3 adapters, 1 full
    assert search.forced_method(study.get_trials(), CHOICES, {}) is None


def test_a_repeated_configuration_does_not_count_twice_and_a_running_one_counts() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    enqueue_and_run(study, "lora", 0.86)
    enqueue_and_run(study, "lora", 0.86)  # the same parameters again
    enqueue_and_run(study, "full", 0.9)
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS) == "lora"
    study.enqueue_trial({"method": "qlora", "x": 1.0})
    running = study.ask()
    running.suggest_categorical("method", CHOICES)
    running.suggest_float("x", -10, 10)
    enqueue_and_run(study, "qlora", 0.7)
    # lora, qlora (done) + qlora (running, other parameters): the floor of 3 is covered while it runs.
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS) is None
    # The trial being proposed is not counted as running.
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS, current=running.number) == "lora"


def test_the_full_floor_is_filled_once_adapters_are() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.6, 0.7):
        enqueue_and_run(study, "qlora", value)
    assert search.forced_method(study.get_trials(), CHOICES, FLOORS) == "full"
    # Before any adapter has completed, the first adapter method of the space is taken.
    assert search.forced_method([], CHOICES, FLOORS) == "lora"


def test_the_sampler_decides_the_method_and_tpe_the_rest() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = search.sampler(first_points=3, floors=FLOORS, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = load_space("default")

    def run(value: float) -> dict[str, Any]:
        trial = study.ask()
        config = space.define_by_run(trial)
        study.tell(trial, value)
        return config

    for point in search.first_points(space):
        study.enqueue_trial(point)
    first = [run(v) for v in (0.86, 0.80, 0.99)]  # full fine-tuning leads by far
    assert [c["method"] for c in first] == ["lora", "qlora", "full"]
    forced = run(0.5)
    assert forced["method"] == "lora" and forced["rank"] in (4, 8, 16, 32, 64)
    free = [run(0.5)["method"] for _ in range(8)]
    assert "full" in free  # the floor is met: TPE follows the leader again

    plain = optuna.create_study(direction="maximize", sampler=search.sampler(3, {}, seed=0))
    assert isinstance(plain.sampler, optuna.samplers.TPESampler)


def ray_trial(trial_id: str, method: str, status: str = Trial.RUNNING, phase: str = "train",
              lr: float = 1e-4) -> SimpleNamespace:  # fmt: skip
    config = {"method": method, "learning_rate": lr, "rank": None if method == "full" else 8}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result={"phase": phase})


def test_the_pruning_rule_keeps_only_what_a_floor_needs() -> None:
    done_lora = ray_trial("a", "lora", Trial.TERMINATED, "final")
    done_qlora = ray_trial("b", "qlora", Trial.TERMINATED, "final", lr=2e-4)
    stopped = ray_trial("c", "lora", Trial.TERMINATED, "train", lr=3e-4)  # pruned: not evidence
    running = ray_trial("d", "lora", lr=5e-4)
    trials = [done_lora, done_qlora, stopped, running]
    assert pruning.keeps(running, trials, FLOORS)  # 2 completed + itself = 3 <= 3
    extra = ray_trial("e", "qlora", lr=6e-4)
    assert not pruning.keeps(extra, [*trials, extra], FLOORS)  # 2 + 2 running = 4 > 3: may go
    full = ray_trial("f", "full", lr=1e-5)
    assert pruning.keeps(full, [*trials, full], FLOORS)
    assert not pruning.keeps(full, [*trials, full, ray_trial("g", "full", Trial.TERMINATED, "final")], FLOORS)
    again = ray_trial("h", "lora")  # the parameters of a completed trial: adds nothing
    assert not pruning.keeps(again, [*trials, again], FLOORS)
    assert not pruning.keeps(running, trials, {})


def test_the_scheduler_overrides_ashas_stop_for_a_needed_trial_only() -> None:
    asha = ASHAScheduler(time_attr="training_iteration", metric="val_quality", mode="max", max_t=4,
                         grace_period=1, reduction_factor=3)  # fmt: skip
    scheduler = pruning.FloorScheduler(asha, {"adapter": 2}, announce=False)
    trials: list[Any] = []
    controller = SimpleNamespace(get_trials=lambda: trials)

    def play(trial: SimpleNamespace, val: float) -> str:
        trials.append(trial)
        scheduler.on_trial_add(controller, trial)
        decision = scheduler.on_trial_result(controller, trial, {"training_iteration": 1, "val_quality": val})
        if decision == TrialScheduler.STOP:
            trial.status = Trial.TERMINATED
        else:
            final = {"training_iteration": 3, "val_quality": val, "phase": "final"}
            scheduler.on_trial_complete(controller, trial, final)
            trial.status, trial.last_result = Trial.TERMINATED, final
        return str(decision)

    assert play(ray_trial("full", "full"), 0.9) == TrialScheduler.CONTINUE
    assert play(ray_trial("l1", "lora", lr=1e-4), 0.2) == TrialScheduler.CONTINUE  # ASHA said stop: kept
    assert play(ray_trial("l2", "lora", lr=2e-4), 0.1) == TrialScheduler.CONTINUE  # kept: the 2nd adapter
    assert play(ray_trial("l3", "lora", lr=3e-4), 0.05) == TrialScheduler.STOP  # floor met: ASHA decides
    assert scheduler.kept == ["l1", "l2"]


def test_a_stopped_trial_is_told_pruned_and_a_failed_one_failed() -> None:
    space = load_space("smoke")
    optuna_search = OptunaSearch(space=space.define_by_run, metric="val_quality", mode="max",
                                 sampler=search.sampler(3, FLOORS, seed=0))  # fmt: skip
    searcher = search.TellPruned(optuna_search)
    for trial_id in ("done", "stopped", "failed"):
        assert isinstance(searcher.suggest(trial_id), dict)
        searcher.on_trial_result(trial_id, {"training_iteration": 1, "val_quality": 0.4})
    searcher.on_trial_complete("done", {"training_iteration": 3, "val_quality": 0.6, "phase": "final"})
    searcher.on_trial_complete("stopped", {"training_iteration": 2, "val_quality": 0.3, "phase": "train"})
    searcher.on_trial_complete("failed", {"val_quality": math.nan, "phase": "failed"}, error=True)
    states = [t.state for t in optuna_search._ot_study.get_trials()]  # the study the sampler reads
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                      optuna.trial.TrialState.FAIL]  # fmt: skip
    stopped = optuna_search._ot_study.get_trials()[1]
    assert stopped.intermediate_values == {1: 0.4, 2: 0.3}  # its last score, as ASHA saw it


def test_config_key_min_adapter_configs_is_validated() -> None:
    assert sweep_config.build({}, "x.yaml").min_adapter_configs == 3
    assert sweep_config.build({"min_adapter_configs": 0}, "x.yaml").min_adapter_configs == 0
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ConfigError) as err:
            sweep_config.build({"min_adapter_configs": bad}, "x.yaml")
        assert any("min_adapter_configs" in p and repr(bad) in p and ">= 0" in p for p in err.value.problems)


def test_the_default_sweep_asks_for_the_floor_it_can_hold() -> None:
    cfg = sweep_config.load("default")
    floors = search.method_floors(load_space(cfg.space).method_names, cfg.min_adapter_configs)
    assert cfg.min_adapter_configs == 3 and floors == {"adapter": 3, "full": 1}
    assert cfg.max_trials >= sum(floors.values())
    note = search.floor_note(floors, 3)
    assert note is not None and "max_trials 3 is below the 4 trials" in note


def scripted(config: dict[str, Any]) -> None:
    """A trial whose validation curve is set by its method: full fine-tuning learns, each new adapter trial
    scores below the earlier ones (so ASHA, left alone, stops adapters at the first rung)."""
    lr = float(config["learning_rate"])
    base = 0.9 if config["method"] == "full" else 0.5 - 40 * lr
    for i in range(1, 3):
        tune.report({"val_quality": base * i / 2, "step": i})
    tune.report({"val_quality": base, "phase": "final", "test_quality": base})


@pytest.mark.slow
@pytest.mark.parametrize("minimum", [3, 0])
def test_a_real_tune_run_ends_with_three_completed_adapters_where_asha_would_prune_them(
    ray_session: Any, tmp_path: Any, minimum: int
) -> None:
    space = load_space("smoke")
    floors = search.method_floors(space.method_names, minimum)
    tuner = tune.Tuner(
        scripted,
        tune_config=tune.TuneConfig(
            metric="val_quality", mode="max", num_samples=6,
            search_alg=ConcurrencyLimiter(search.searcher(space, minimum), max_concurrent=1),
            scheduler=pruning.scheduler(steps=4, eval_every=2, grace_period=1, reduction_factor=4, floors=floors),
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=f"floors{minimum}", verbose=0),
    )  # fmt: skip
    results = tuner.fit()
    finished = [r for r in results if (r.metrics or {}).get("phase") == "final"]
    adapters = [r for r in finished if r.config["method"] in ("lora", "qlora")]
    if minimum:
        assert len(adapters) >= 3
        assert any(r.config["method"] == "full" for r in finished)
    else:  # the control: the same run without floors, where ASHA does stop adapter trials
        assert len(adapters) < 3


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    path = f"{REPO}:{Path(__file__).parent}"  # workers import this module to unpickle the trainable
    ray.init(num_cpus=1, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_the_counts_survive_a_save_and_restore_of_the_searcher(tmp_path: Path) -> None:
    """Tune saves the base searcher (OptunaSearch pickles its study and sampler) and restores it on resume:
    the floor counts live in that study, so the restored sampler proposes as the first would have."""
    import pickle

    space = load_space("default")
    first = search.searcher(space, 3)
    for trial_id, score in (("a", 0.86), ("b", 0.80), ("c", 0.93)):
        assert isinstance(first.suggest(trial_id), dict)
        first.on_trial_complete(trial_id, {"training_iteration": 3, "val_quality": score, "phase": "final"})
    first.save(str(tmp_path / "searcher.pkl"))
    again = pickle.loads(pickle.dumps(search.searcher(space, 3)))  # as Tuner.restore unpickles it
    again.restore(str(tmp_path / "searcher.pkl"))
    config = again.suggest("d")
    # The first points are spent (a fresh searcher would propose the production default now), 2 adapters
    # are done: the 3rd proposal is forced to LoRA, its settings TPE's.
    assert config is not None and config["method"] == "lora" and config["learning_rate"] != 2e-4
    assert len(again.searcher._ot_study.get_trials()) == 4
    scheduler = pickle.loads(pickle.dumps(pruning.scheduler(60, 40, 1, 3, {"adapter": 3, "full": 1})))
    assert isinstance(scheduler, pruning.FloorScheduler) and scheduler.floors == {"adapter": 3, "full": 1}
