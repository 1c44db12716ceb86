"""The ladder (sweeps/ladder.py) on real Optuna studies: a sweep simulated trial by trial, as GuidedSearch
runs it (`search.plan_next` before each `ask`), over the default space with the priors of SmolLM2-135M
(hidden size 576) at 60 steps, and a synthetic score of the method, the learning rate and the targets."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from search_spaces.loader import load_space
from search_spaces.rates import prior_rate
from sweeps import ladder, search

Score = Callable[[dict[str, Any]], "float | None"]  # None: the trial diverged

FAMILY = {"method": "lora", "rank": 16, "alpha": 32, "target_modules": "attention", "lora_dropout": 0.05}
FULL = {"method": "full", "rank": None, "alpha": None, "target_modules": None, "lora_dropout": None}
ADAPTER_PEAK, FULL_PEAK = 6.6e-4, 4.4e-5  # where the synthetic scores peak: one rung below each prior


def synthetic(config: dict[str, Any]) -> float | None:
    """Unimodal in log10(rate) per group; all linear layers add 0.02 to an adapter."""
    rate = float(config["learning_rate"])
    if config["method"] == "full":
        return 0.85 - 0.1 * math.log10(rate / FULL_PEAK) ** 2
    bonus = 0.02 if config["target_modules"] == "all-linear" else 0.0
    return 0.8 - 0.1 * math.log10(rate / ADAPTER_PEAK) ** 2 + bonus


def diverging_above(limit: float) -> Score:
    """The synthetic score, but an adapter at a rate of `limit` or more diverges."""

    def score(config: dict[str, Any]) -> float | None:
        if config["method"] != "full" and config["learning_rate"] >= limit:
            return None
        return synthetic(config)

    return score


class Sweep:
    """A sweep of one trial at a time on a real study with the sweep's own TPE sampler."""

    def __init__(self, score: Score = synthetic, seed: int = 0) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = load_space("default")
        self.priors = ladder.Priors.of(576, 60)
        self.score = score
        points = search.first_points(self.space)
        self.study = optuna.create_study(direction="maximize", sampler=search.tpe_sampler(len(points), seed))
        for point in points:  # as Ray's OptunaSearch enqueues points_to_evaluate
            self.study.enqueue_trial(point)
        self.configs: list[dict[str, Any]] = []

    def run(self, n: int = 1) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            search.plan_next(self.study, self.space, self.priors)
            trial = self.study.ask()
            config = self.space.define_by_run(trial)
            value = self.score(config)
            if value is None:  # what GuidedSearch does with a Diverged failure
                trial.set_user_attr(ladder.DIVERGED, True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                trial.report(value, 1)
                self.study.tell(trial, value)
            out.append(config)
        self.configs += out
        return out

    def brackets(self) -> dict[str, Any]:
        return ladder.brackets(self.study.get_trials(), self.space, self.priors)


def at(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**config, **changes}


def test_the_priors_of_a_576_wide_model_at_60_steps() -> None:
    priors = ladder.Priors.of(576, 60)
    assert priors.full == pytest.approx(1.32e-4, rel=0.01) and priors.adapter == pytest.approx(
        15 * priors.full
    )
    assert priors.of_group("adapter") == priors.adapter and priors.of_group("full") == priors.full
    assert ladder.Priors.of(576, 1000).adapter == pytest.approx(10 * prior_rate("full", 576, 1000))


def test_the_sweep_brackets_each_group_then_raises_capacity_then_holds_the_rates() -> None:
    sweep = Sweep()
    default = sweep.run()[0]
    assert default == load_space("default").default  # the production default first (lora r16, 2e-4)
    ladder_part = sweep.run(6)
    assert ladder_part == [
        at(FAMILY, learning_rate=1.98e-3),  # the adapters' prior rung, on the default's family
        at(FULL, learning_rate=1.32e-4),  # full fine-tuning's prior
        # 2e-4 (the default) and 1.98e-3 are 10x apart: the rung between them
        at(FAMILY, learning_rate=6.61e-4),
        # full's best so far is its prior, the top rung of its range: one rung down, then one more
        at(FULL, learning_rate=4.41e-5),
        at(FULL, learning_rate=1.47e-5),
    ] + [at(FAMILY, target_modules="all-linear", learning_rate=6.61e-4)]  # capacity, at the adapters' best
    found = sweep.brackets()
    assert found["adapter"].bracketed and found["adapter"].best_rate == 6.61e-4
    assert (found["adapter"].below.rate, found["adapter"].above.rate) == (2e-4, 1.98e-3)
    assert found["full"].bracketed and found["full"].best_rate == 4.41e-5
    assert (found["full"].below.rate, found["full"].above.rate) == (1.47e-5, 1.32e-4)
    # The evidence is in: the count the sweep's note asks max_trials to hold covers it.
    assert 1 + len(ladder_part) <= ladder.evidence_trials(sweep.space) == 8
    assert ladder.next_point(sweep.study.get_trials(), sweep.space, sweep.priors) is None
    held = ladder.held_rates(sweep.study.get_trials(), sweep.space, sweep.priors)
    assert held == {
        "lora.learning_rate": 6.61e-4,
        "qlora.learning_rate": 6.61e-4,
        "full.learning_rate": 4.41e-5,
    }

    free = sweep.run(10)  # TPE decides everything else, each group's rate held at its bracketed best
    for config in free:
        assert config["learning_rate"] == (4.41e-5 if config["method"] == "full" else 6.61e-4), config
    assert len({(c["method"], c["rank"], c["target_modules"], c["lora_dropout"]) for c in free}) > 1
    # The free trials leave the brackets where they were.
    assert sweep.brackets()["adapter"].best_rate == 6.61e-4 and sweep.brackets()["full"].best_rate == 4.41e-5


def test_a_sweep_resumed_from_its_study_continues_the_plan() -> None:
    sweep = Sweep()
    sweep.run(4)  # default, adapter prior, full prior, the adapters' middle rung
    again = optuna.create_study(direction="maximize", sampler=search.tpe_sampler(1, seed=1))
    for trial in sweep.study.get_trials():  # what a restored OptunaSearch holds: the same trials
        again.add_trial(trial)
    search.plan_next(again, sweep.space, sweep.priors)
    waiting = [t for t in again.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"method": "full", "full.learning_rate": 4.41e-5}
    ]
    search.plan_next(again, sweep.space, sweep.priors)  # a queued trial is not queued twice
    assert len([t for t in again.get_trials() if t.state == optuna.trial.TrialState.WAITING]) == 1


def test_a_running_rung_is_not_proposed_again() -> None:
    sweep = Sweep()
    sweep.run()  # the default
    search.plan_next(sweep.study, sweep.space, sweep.priors)
    running = sweep.study.ask()  # the adapters' prior, still running (no report yet)
    assert sweep.space.define_by_run(running) == at(FAMILY, learning_rate=1.98e-3)
    point = ladder.next_point(sweep.study.get_trials(), sweep.space, sweep.priors)
    assert point == at(FULL, learning_rate=1.32e-4)


def test_a_diverged_trial_counts_as_the_worst_rung() -> None:
    sweep = Sweep(score=diverging_above(1e-3))
    sweep.run(3)  # default; the adapter prior 1.98e-3 diverges; full's prior
    diverged = sweep.study.get_trials()[1]
    assert diverged.state == optuna.trial.TrialState.FAIL and diverged.user_attrs == {ladder.DIVERGED: True}
    evidence = ladder.tried(sweep.study.get_trials(), sweep.space)
    assert [t.diverged for t in evidence] == [False, True, False]
    assert evidence[1].rate == 1.98e-3 and evidence[1].curve == {}
    # The default's 2e-4 leads; the divergence 10x above leaves that side open: a rung below it, then the
    # rung between, which leads, and the divergence one rung above it closes the bracket there.
    assert sweep.run(2) == [at(FAMILY, learning_rate=7.34e-5), at(FAMILY, learning_rate=6.61e-4)]
    found = sweep.brackets()["adapter"]
    assert found.bracketed and found.best_rate == 6.61e-4
    assert found.above.rate == 1.98e-3 and found.above.score == -math.inf and found.above.closed

    # When the middle rung diverges too, the default's 2e-4 leads: its open sides get a rung each (below
    # first), and the divergence one rung above closes the bracket there.
    low = Sweep(score=diverging_above(5e-4))
    low.run(5)
    assert low.configs[3:] == [at(FAMILY, learning_rate=7.34e-5), at(FAMILY, learning_rate=6.61e-4)]
    found = low.brackets()["adapter"]
    assert found.bracketed and found.best_rate == 2e-4 and found.below.rate == 7.34e-5
    assert found.above.rate == 6.61e-4 and found.above.score == -math.inf and found.above.closed


def test_a_failed_trial_that_did_not_diverge_is_no_evidence() -> None:
    sweep = Sweep()
    sweep.run()
    search.plan_next(sweep.study, sweep.space, sweep.priors)
    trial = sweep.study.ask()
    sweep.space.define_by_run(trial)
    sweep.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # out of memory, say: not the rate's fault
    assert [t.diverged for t in ladder.tried(sweep.study.get_trials(), sweep.space)] == [False]
    assert sweep.brackets()["adapter"].rates == {
        "0.0002": pytest.approx(synthetic(FAMILY | {"learning_rate": 2e-4}))
    }


def test_a_pruned_trial_is_evidence_at_its_last_report() -> None:
    sweep = Sweep()
    sweep.run(2)  # the default and the adapters' prior, both at report 1
    search.plan_next(sweep.study, sweep.space, sweep.priors)
    trial = sweep.study.ask()
    config = sweep.space.define_by_run(trial)
    assert config == at(FULL, learning_rate=1.32e-4)
    trial.report(0.1, 1)
    sweep.study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # stopped by ASHA at the first rung
    assert sweep.brackets()["full"].rates == {"0.000132": 0.1}


def test_the_evidence_takes_eight_trials_on_the_default_space() -> None:
    assert ladder.evidence_trials(load_space("default")) == 8  # default + 3 rungs per group + capacity
    # The smoke space: the same count; its ranges are continuous too.
    assert ladder.evidence_trials(load_space("smoke")) == 8


def test_config_of_reads_parameters_back_into_a_trial_config() -> None:
    space = load_space("default")
    config = at(FAMILY, learning_rate=6.61e-4, rank=32)
    assert ladder.config_of(space.search_params(config), space) == config
    assert ladder.config_of({"method": "lora", "lora.rank": 16}, space) is None  # partial
    assert ladder.config_of({"lora.learning_rate": 1e-4}, space) is None  # no method in a 3-method space
    assert ladder.reference_family(space, "adapter") == FAMILY
    assert ladder.reference_family(space, "full") == FULL


NARROW_QLORA = """
method: {type: categorical, choices: [lora, qlora, full]}
methods:
  lora:
    rank: {type: fixed, value: 16}
    alpha: {type: fixed, value: 32}
    target_modules: {type: fixed, value: all-linear}
    lora_dropout: {type: fixed, value: 0.0}
    learning_rate: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
  qlora:
    rank: {type: fixed, value: 16}
    alpha: {type: fixed, value: 32}
    target_modules: {type: fixed, value: all-linear}
    lora_dropout: {type: fixed, value: 0.0}
    learning_rate: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
  full:
    learning_rate: {type: float, low: 1.0e-6, high: 3.0e-4, log: true}
default: {method: lora, rank: 16, alpha: 32, target_modules: all-linear, lora_dropout: 0.0, learning_rate: 2.0e-4}
"""


def test_held_rates_stay_inside_each_methods_range(tmp_path: Path) -> None:
    path = tmp_path / "narrow.yaml"
    path.write_text(NARROW_QLORA)
    sweep = Sweep()
    sweep.space = load_space(str(path))
    sweep.study = optuna.create_study(direction="maximize", sampler=search.tpe_sampler(1, seed=0))
    for point in search.first_points(sweep.space):
        sweep.study.enqueue_trial(point)
    sweep.run(6)  # the default, both priors, the adapters' middle rung (their best), two full rungs
    assert sweep.brackets()["adapter"].best_rate == 6.61e-4 and sweep.brackets()["adapter"].bracketed
    held = ladder.held_rates(sweep.study.get_trials(), sweep.space, sweep.priors)
    for name, rate in held.items():
        method = name.split(".")[0]
        spec = sweep.space.methods[method].params["learning_rate"]
        assert spec.contains(rate), (name, rate)
    # QLoRA's range ends at 3e-4: its rate is held at the rung of its own range nearest the group's best.
    assert held == {"lora.learning_rate": 6.61e-4, "qlora.learning_rate": 3e-4, "full.learning_rate": 4.41e-5}
    free = sweep.run(12)
    assert [c for c in free if sweep.space.check_point(c)] == []  # no proposal outside the space
