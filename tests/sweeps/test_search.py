"""The search of sweeps/search.py around the real library parts: GuidedSearch around Ray's OptunaSearch (what
Optuna is told, the ladder's proposals, a save and restore), the sweep config's `rate_first`, the evidence
note, and one real Tune run where ASHA would stop the adapters' best rung (the leader rule's own tests are in
test_pruning.py)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search_spaces.loader import load_space
from sweeps import config as sweep_config
from sweeps import ladder, pruning, search
from trainers.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
PRIORS = ladder.Priors.of(576, 60)  # SmolLM2-135M at 60 steps: adapters 1.98e-3, full 1.32e-4
State = optuna.trial.TrialState


def final(score: float, at: int = 3) -> dict[str, Any]:
    return {"training_iteration": at, "val_quality": score, "phase": "final", "test_quality": score}


def failed(error: str, at: int = 1) -> dict[str, Any]:
    """What sweeps/trainable.py reports for a trial that raised (failure_result)."""
    return {"training_iteration": at, "val_quality": math.nan, "phase": "failed", "status": "failed",
            "error": error}  # fmt: skip


# --- what Optuna is told ------------------------------------------------------------------------------


def test_a_stopped_trial_is_told_pruned_a_failed_one_failed_and_a_diverged_one_failed_and_marked() -> None:
    space = load_space("smoke")
    optuna_search = OptunaSearch(space=space.define_by_run, metric="val_quality", mode="max",
                                 sampler=search.tpe_sampler(1, seed=0))  # fmt: skip
    searcher = search.GuidedSearch(optuna_search)  # no priors: TPE alone, the telling still corrected
    ids = ("done", "stopped", "failed", "diverged", "crashed")
    for trial_id in ids:
        assert isinstance(searcher.suggest(trial_id), dict)
        searcher.on_trial_result(trial_id, {"training_iteration": 1, "val_quality": 0.4, "phase": "train"})
    searcher.on_trial_complete("done", final(0.6))
    searcher.on_trial_complete("stopped", {"training_iteration": 2, "val_quality": 0.3, "phase": "train"})
    # A trial that raised: Tune reports its error (error=True) after the failure report.
    searcher.on_trial_complete("failed", failed("OutOfMemoryError: CUDA out of memory"), error=True)
    # A diverged trial reports its failure and returns (sweeps/trainable.py): Tune completes it without error.
    searcher.on_trial_complete("diverged", failed("Diverged: training loss 27.1 over steps to 4"))
    searcher.on_trial_complete("crashed", None, error=True)  # no result at all
    trials = optuna_search._ot_study.get_trials()  # the study the sampler and the ladder read
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL, State.FAIL, State.FAIL]
    assert trials[0].value == 0.6
    assert trials[1].intermediate_values == {1: 0.4, 2: 0.3}  # its last score, as ASHA saw it
    assert [t.user_attrs.get(ladder.DIVERGED) for t in trials] == [None, None, None, True, None]
    # A failure whose error merely mentions divergence is not one.
    again = search.GuidedSearch(OptunaSearch(space=space.define_by_run, metric="val_quality", mode="max"))
    again.suggest("x")
    again.on_trial_complete("x", failed("RuntimeError: Diverged is not the cause"))
    assert again.searcher._ot_study.get_trials()[0].user_attrs == {}


def test_the_trainables_report_of_a_divergence_is_what_the_searcher_reads_as_one() -> None:
    from sweeps.trainable import failure_result
    from trainers.train import Diverged

    attempt = {"prior_seconds": 0.0, "prior_step": -1, "last": {}, "settings": {}}
    result = {
        **failure_result(Diverged("training loss 27.1 over steps to 4"), attempt, 1.0),
        "training_iteration": 1,
    }
    assert result["phase"] == "failed" and result["error"].startswith("Diverged")
    searcher = search.GuidedSearch(OptunaSearch(space=load_space("smoke").define_by_run, metric="val_quality",
                                                mode="max"))  # fmt: skip
    searcher.suggest("x")
    searcher.on_trial_complete("x", result)
    [trial] = searcher.searcher._ot_study.get_trials()
    assert trial.state == State.FAIL and trial.user_attrs == {ladder.DIVERGED: True}


def test_a_diverged_trial_reaches_the_ladder_as_the_worst_rung() -> None:
    space = load_space("default")
    searcher = search.searcher(space, PRIORS, seed=0)
    assert searcher.suggest("default")["learning_rate"] == 2e-4  # the production default, first
    searcher.on_trial_result("default", {"training_iteration": 1, "val_quality": 0.5, "phase": "train"})
    searcher.on_trial_complete("default", final(0.6, at=2))
    prior = searcher.suggest("prior")
    assert (prior["method"], prior["rank"], prior["learning_rate"]) == (
        "lora",
        16,
        1.98e-3,
    )  # the adapter prior
    searcher.on_trial_result("prior", failed("Diverged: training loss 17.5"))  # Tune passes the report on
    searcher.on_trial_complete("prior", failed("Diverged: training loss 17.5"))
    evidence = ladder.tried(searcher.searcher._ot_study.get_trials(), space)
    assert [(t.rate, t.diverged) for t in evidence] == [(2e-4, False), (1.98e-3, True)]
    found = ladder.brackets(searcher.searcher._ot_study.get_trials(), space, PRIORS)["adapter"]
    assert found.rates == {"0.0002": 0.5, "0.00198": -math.inf} and found.best_rate == 2e-4


def test_a_trial_that_crashed_without_diverging_closes_no_bracket_side() -> None:
    space = load_space("default")
    searcher = search.searcher(space, PRIORS, seed=0)
    for trial_id, score in (("default", 0.5), ("adapter prior", 0.55), ("full prior", 0.7), ("middle", 0.6)):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"training_iteration": 1, "val_quality": score, "phase": "train"})
        searcher.on_trial_complete(trial_id, final(score, at=2))
    assert searcher.suggest("crash")["learning_rate"] == 4.41e-5  # full's rung below its prior
    crash = failed("OutOfMemoryError: CUDA out of memory")
    searcher.on_trial_result("crash", crash)  # Tune passes the failure report on, then the error
    searcher.on_trial_complete("crash", crash, error=True)
    trials = searcher.searcher._ot_study.get_trials()
    assert trials[-1].state == State.FAIL and ladder.DIVERGED not in trials[-1].user_attrs
    found = ladder.brackets(trials, space, PRIORS)["full"]
    assert found.rates == {"0.000132": 0.7}  # the crash is no evidence about the rate
    assert not found.bracketed


def test_the_guided_search_proposes_the_ladder_and_survives_a_save_and_restore(tmp_path: Path) -> None:
    """Tune saves the wrapped OptunaSearch (its study and sampler) and restores it on resume: the ladder
    reads that study, so a restored search continues the plan instead of starting over."""
    space = load_space("default")
    first = search.searcher(space, PRIORS, seed=0)
    configs = []
    for trial_id, score in (("a", 0.5), ("b", 0.55), ("c", 0.7)):
        config = first.suggest(trial_id)
        assert isinstance(config, dict)
        configs.append((config["method"], config["learning_rate"]))
        first.on_trial_result(trial_id, {"training_iteration": 1, "val_quality": score, "phase": "train"})
        first.on_trial_complete(trial_id, final(score))
    assert configs == [("lora", 2e-4), ("lora", 1.98e-3), ("full", 1.32e-4)]  # default, then each prior
    first.save(str(tmp_path / "searcher.pkl"))
    again = pickle.loads(pickle.dumps(search.searcher(space, PRIORS)))  # as Tuner.restore unpickles it
    again.restore(str(tmp_path / "searcher.pkl"))
    config = again.suggest("d")
    # 2e-4 and 1.98e-3 are 10x apart, the latter better: the rung between, on the default's family.
    assert config is not None and (config["method"], config["rank"], config["target_modules"]) == (
        "lora", 16, "attention")  # fmt: skip
    assert config["learning_rate"] == 6.61e-4
    assert len(again.searcher._ot_study.get_trials()) == 4
    # The same suggestion id twice does not enqueue a second trial.
    assert search.searcher(space, None).suggest("x")["learning_rate"] == 2e-4  # no priors: default, then TPE


def test_the_sweeps_first_points_and_tpe_start_up() -> None:
    space = load_space("default")
    assert search.first_points(space) == space.points_to_evaluate() and len(search.first_points(space)) == 1
    smoke = [ladder.config_of(p, load_space("smoke")) for p in search.first_points(load_space("smoke"))]
    assert [(c["method"], c["learning_rate"]) for c in smoke] == [
        ("lora", 2e-4),
        ("qlora", 2e-4),
        ("full", 1e-4),
    ]
    assert search.tpe_sampler(1)._n_startup_trials == search.MIN_STARTUP_TRIALS
    assert search.tpe_sampler(5)._n_startup_trials == 5


# --- the sweep config and the note --------------------------------------------------------------------


def test_rate_first_defaults_on_and_takes_only_a_bool() -> None:
    assert sweep_config.build({}, "x.yaml").rate_first is True
    assert sweep_config.build({"rate_first": False}, "x.yaml").rate_first is False
    assert sweep_config.load("default").rate_first is True
    for bad in ("false", 0, 1, None):
        with pytest.raises(ConfigError) as err:
            sweep_config.build({"rate_first": bad}, "x.yaml")
        assert any(p.startswith("x.yaml: rate_first:") and repr(bad) in p for p in err.value.problems), bad


@pytest.mark.parametrize("value", [3, 0])
def test_min_adapter_configs_is_refused_naming_its_replacement(value: int) -> None:
    with pytest.raises(ConfigError) as err:
        sweep_config.build({"min_adapter_configs": value}, "x.yaml")
    [problem] = err.value.problems
    assert problem.startswith("x.yaml: min_adapter_configs:")
    assert "learning-rate brackets" in problem and "rate_first" in problem and "unknown key" not in problem
    # Other unknown keys are still named as unknown.
    with pytest.raises(ConfigError) as err:
        sweep_config.build({"min_adapter_config": 3}, "x.yaml")
    assert "unknown key" in err.value.problems[0]


def test_the_evidence_note_says_when_max_trials_cannot_hold_the_evidence() -> None:
    space = load_space("default")
    need = ladder.evidence_trials(space)
    assert need == 8
    short = search.evidence_note(space, need - 1, rate_first=True)
    assert short is not None and f"about {need} trials" in short
    assert f"max_trials {need - 1} cannot hold them" in short and f"raise TRIALS to {need}" in short
    enough = search.evidence_note(space, need, rate_first=True)
    assert enough is not None and f"about {need} trials" in enough and "cannot hold" not in enough
    assert search.evidence_note(space, 3, rate_first=False) is None
    cfg = sweep_config.load("default")
    assert cfg.max_trials >= ladder.evidence_trials(load_space(cfg.space))  # the default sweep holds it


def test_the_evidence_note_says_when_the_budget_cannot_buy_the_evidence() -> None:
    space = load_space("default")
    # 8 trials: 3 of full fine-tuning ($2 each) and 5 adapter trials ($1 each) project $11.
    poor = search.evidence_note(
        space, 8, rate_first=True, budget_usd=5.0, estimates={"lora": 1.0, "full": 2.0}
    )
    assert poor is not None and "$5 buys less than their projected $11" in poor and "cannot hold" not in poor
    rich = search.evidence_note(
        space, 8, rate_first=True, budget_usd=20.0, estimates={"lora": 1.0, "full": 2.0}
    )
    assert rich is not None and "buys less" not in rich


def test_the_note_is_silent_on_a_space_of_one_group(tmp_path: Path) -> None:
    path = tmp_path / "lora.yaml"
    path.write_text("""
methods:
  lora:
    rank: {type: categorical, choices: [8, 16]}
    alpha: {type: fixed, value: 32}
    target_modules: {type: fixed, value: attention}
    lora_dropout: {type: fixed, value: 0.0}
    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
""")
    space = load_space(str(path))
    assert search.evidence_note(space, 1, rate_first=True) is None
    assert ladder.evidence_trials(space) == 4  # 3 rungs and a capacity increase, no default


# --- a real Tune run ----------------------------------------------------------------------------------


def scripted(config: dict[str, Any]) -> None:
    """A trial whose validation curve is set by its method and rate: full fine-tuning learns; LoRA peaks at
    1e-3 (the top of the smoke space's range) but below full fine-tuning, so when its best rung arrives
    ASHA's cutoff already lies past it; QLoRA barely learns."""
    lr = float(config["learning_rate"])
    if config["method"] == "full":
        base = 0.9 - 0.1 * abs(math.log(lr / 1e-4, 3))
    elif config["method"] == "lora":
        base = 0.4 - 0.14 * abs(math.log(lr / 1e-3, 3))
    else:
        base = 0.1
    for i in range(1, 3):
        tune.report({"val_quality": base * i / 2, "step": i, "phase": "train"})
    tune.report({"val_quality": base, "phase": "final", "test_quality": base})


@pytest.mark.slow
@pytest.mark.parametrize("leaders", [True, False])
def test_a_real_tune_run_finishes_the_adapters_best_rung_where_asha_would_stop_it(
    ray_session: Any, tmp_path: Path, leaders: bool
) -> None:
    space = load_space("smoke")  # adapters 1e-5..1e-3 (the 1.98e-3 prior clamps to 1e-3), full 1e-6..1e-4
    base = pruning.asha(steps=4, eval_every=2, grace_period=1, reduction_factor=4)
    tuner = tune.Tuner(
        scripted,
        tune_config=tune.TuneConfig(
            metric="val_quality", mode="max", num_samples=6,
            search_alg=ConcurrencyLimiter(search.searcher(space, PRIORS, seed=0), max_concurrent=1),
            scheduler=pruning.LeaderScheduler(base) if leaders else base,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=f"leaders{leaders}", verbose=0),
    )  # fmt: skip
    # In the order Tune created them: its trial folders are named <trainable>_<trial id>_<index>_<params>.
    results = sorted(tuner.fit(), key=lambda r: int(Path(r.path).name.split("_")[2]))
    order = [(r.config["method"], r.config["learning_rate"]) for r in results]
    # The smoke space's first points (the default, QLoRA, full at 1e-4, which is also full's clamped prior),
    # the adapters' prior, the rung between it and the default, then full's rung below its prior.
    assert order == [("lora", 2e-4), ("qlora", 2e-4), ("full", 1e-4), ("lora", 1e-3), ("lora", 3.33e-4),
                     ("full", 3.33e-5)], order  # fmt: skip
    finished = [o for o, r in zip(order, results, strict=True) if r.metrics["phase"] == "final"]
    # ASHA stops LoRA at 1e-3 at the first rung (below the cutoff full fine-tuning raised); it leads the
    # adapters there, so the leader rule keeps it to the end. The poor rungs are stopped either way.
    if leaders:
        assert finished == [("lora", 2e-4), ("full", 1e-4), ("lora", 1e-3), ("full", 3.33e-5)]
    else:
        assert finished == [("lora", 2e-4), ("full", 1e-4), ("full", 3.33e-5)]


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    path = f"{REPO}:{Path(__file__).parent}"  # workers import this module to unpickle the trainable
    ray.init(num_cpus=1, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
