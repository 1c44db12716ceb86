"""Search efficiency, replayed against the recorded table (bench/record/trials.jsonl).

Searches spend the same budget on the same table, one trial at a time as the default sweep runs:
- ours: the sweep's own search (sweeps/search.py, sweeps/ladder.py): the production default, then the
  learning rate first per method group (the ladder's rungs, enqueued in the Optuna study), one adapter
  capacity increase, then TPE with the bracketed rates held, over bench/grid.yaml; Ray Tune's own
  ASHAScheduler, behind the sweep's leader rule, decides from each recorded validation curve whether the
  trial would have been stopped at a rung (a stopped trial costs what it had spent at that report, gets no
  test score, and is told to Optuna as pruned);
- plain_tpe_asha: the same without the learning-rate rules (TPE from the default, plain ASHA);
- random: the grid's configurations in a random order, each trained to the end;
- grid: the grid in its file order, each trained to the end (the same for every seed).

The curve is read at the validation steps the default sweep makes (`report_steps`): the table is recorded
with a validation every 20 steps, the sweep may validate less often. Costs are the recorded ones.

At every dollar spent, a search's answer is the finished run with the best validation score, and its
score is that run's test quality. `dollars_to_target` is what a search spends until its answer reaches
95% of the best test quality in the table (the key); the same ratio at other shares of the best is
reported beside it, since how selective the target is decides how much a model-based search can gain.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

TARGET_SHARE = 0.95
OTHER_SHARES = (0.90, 0.97)
MAX_REPEATS = 20  # TPE proposing configurations already run (the table is finite): then take a new one
DECISION_MARGIN = 0.02  # the leaderboard's default margin


@dataclass(frozen=True)
class Row:
    key: str
    config: dict[str, Any]
    vals: tuple[float, ...]  # validation score at each report
    costs: tuple[float, ...]  # dollars spent by each report
    val: float  # final validation score
    test: float
    cost: float  # dollars for the whole trial, test evaluation included


@dataclass(frozen=True)
class Outcome:
    cost: float  # what the trial cost
    val: float  # its last validation score
    finished: bool  # ran to the end and got a test score
    reports: int = 0  # validation reports it made (what Optuna is told as intermediate values)


def rows_from_table(table: list[dict[str, Any]], report_steps: tuple[int, ...] | None = None) -> list[Row]:
    """Rows with their costs: CPU-time cost where recorded (what the trial costs on a quiet machine),
    else the wall-time cost. With `report_steps`, only the validations at those steps."""
    rows = []
    for r in table:
        curve = sorted(r["curve"], key=lambda p: p["step"])
        if report_steps is not None:
            missing = sorted(set(report_steps) - {p["step"] for p in curve})
            if missing:
                raise ValueError(f"{r['key']}: no recorded validation at step(s) {missing}: record the table "
                                 "at the default sweep's trial settings (make bench-record)")  # fmt: skip
            curve = [p for p in curve if p["step"] in report_steps]
        rows.append(Row(
            key=r["key"], config=r["config"],
            vals=tuple(float(p["val_quality"]) for p in curve), costs=tuple(_cost(p) for p in curve),
            val=float(r["final"]["val_quality"]), test=float(r["final"]["test_quality"]), cost=_cost(r["final"]),
        ))  # fmt: skip
    return rows


def _cost(point: dict[str, Any]) -> float:
    return float(point.get("cpu_cost_usd", point["cost_usd"]))


def run_trial(row: Row, scheduler: Any | None, trial_id: str, trials: list[Any] | None = None) -> Outcome:
    """Play one recorded trial, report by report, past the scheduler. `trials` is the sweep so far as Ray
    Tune's trials (what the floor rule counts); this one is added to it."""
    if scheduler is None:
        return Outcome(row.cost, row.val, True, len(row.vals))
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    trials = [] if trials is None else trials
    trial = SimpleNamespace(trial_id=trial_id, config=dict(row.config), status=Trial.RUNNING, last_result={})
    trials.append(trial)
    controller = SimpleNamespace(get_trials=lambda: trials)
    scheduler.on_trial_add(controller, trial)
    for i, val in enumerate(row.vals, 1):
        result = {"training_iteration": i, "val_quality": val, "phase": "train"}
        action = scheduler.on_trial_result(controller, trial, result)
        trial.last_result = result
        if action == TrialScheduler.STOP and i < len(row.vals):
            scheduler.on_trial_complete(controller, trial, result)  # Tune's stop_trial for a running trial
            trial.status = Trial.TERMINATED
            return Outcome(row.costs[i - 1], val, False, i)
    # The final report (its test score) comes one iteration after the last validation, as in trainable.py.
    final = {"training_iteration": len(row.vals) + 1, "val_quality": row.val, "phase": "final"}
    scheduler.on_trial_complete(controller, trial, final)
    trial.status, trial.last_result = Trial.TERMINATED, final
    return Outcome(row.cost, row.val, True, len(row.vals))


def tell(study: Any, trial: Any, row: Row, outcome: Outcome) -> None:
    """What the sweep's searcher tells Optuna (sweeps.search.GuidedSearch around Ray's OptunaSearch): every
    validation report as an intermediate value; a finished trial's final score, or a stopped one as pruned."""
    import optuna

    for i, val in enumerate(row.vals[: outcome.reports], 1):
        trial.report(val, i)
    if outcome.finished:
        study.tell(trial, outcome.val)
    else:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def answers(order: list[tuple[Row, Outcome]]) -> list[tuple[float, float | None]]:
    """(dollars spent, test score of the answer) after each trial: the best finished run by validation."""
    spent, best, out = 0.0, None, []
    for row, outcome in order:
        spent += outcome.cost
        if outcome.finished and (best is None or row.val > best.val):
            best = row
        out.append((spent, None if best is None else best.test))
    return out


def search_ours(rows: list[Row], space: Any, seed: int, budget: float, asha: dict[str, Any],
                priors: Any | None = None, snapshot_at: int | None = None) -> Search:  # fmt: skip
    """The sweep's search played on the table: with `priors`, the learning rate first (sweeps/ladder.py)
    and each group's leader kept past ASHA; without, plain TPE and ASHA. `snapshot_at`: the trial count at
    which the sweep's decision and choice are read (the default sweep's max_trials)."""
    import numpy as np
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    from sweeps import pruning, search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    np.random.seed(seed)  # ASHA draws a bracket with numpy (one bracket here, but keep it reproducible)
    by_key = {r.key: r for r in rows}
    points = search.first_points(space)
    study = optuna.create_study(direction="maximize", sampler=search.tpe_sampler(len(points), seed))
    for point in points:
        study.enqueue_trial(point)
    asha_scheduler = ASHAScheduler(time_attr="training_iteration", metric=search.METRIC, mode="max", **asha)
    scheduler = pruning.LeaderScheduler(asha_scheduler, announce=False) if priors else asha_scheduler
    rng = random.Random(seed)
    played: list[tuple[Row, Outcome]] = []
    trials: list[Any] = []
    told: dict[str, Outcome] = {}
    spent, repeats = 0.0, 0
    decided: dict[str, Any] | None = None
    while spent < budget and len(told) < len(rows):
        if priors is not None:
            search.plan_next(study, space, priors)
        trial = study.ask()
        key = _key(space.define_by_run(trial))
        if key in told or key not in by_key:
            # Already run (or not in the table): the searcher learns nothing new and nothing is spent.
            if key in told:
                tell(study, trial, by_key[key], replace(told[key], reports=0))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            repeats += 1
            if repeats >= MAX_REPEATS:
                fresh = [r for r in rows if r.key not in told]
                study.enqueue_trial(space.search_params(rng.choice(fresh).config))
                repeats = 0
            continue
        repeats = 0
        row = by_key[key]
        outcome = run_trial(row, scheduler, f"t{len(played)}", trials)
        tell(study, trial, row, outcome)
        told[key] = outcome
        played.append((row, outcome))
        spent += outcome.cost
        if snapshot_at is not None and len(played) == snapshot_at:
            decided = sweep_decision(played, study, space, priors)
    if decided is None:
        decided = sweep_decision(played, study, space, priors)
    return Search(answers(played), decided)


@dataclass(frozen=True)
class Search:
    trace: list[tuple[float, float | None]]
    decision: dict[str, Any]  # what the sweep decides and picks after its trials (sweep_decision)


def sweep_decision(played: list[tuple[Row, Outcome]], study: Any, space: Any, priors: Any | None,
                   margin: float = DECISION_MARGIN) -> dict[str, Any]:  # fmt: skip
    """What the leaderboard would decide after these trials, from their validation choice and test scores:
    escalate when the best full run (by validation) beats the best adapter run by more than the margin and,
    under the rate-first rules, both groups' rates are bracketed and one adapter capacity increase was
    tried. The table has no per-example scores, so the paired significance test is not replayed (it can
    only block an escalation, never cause one)."""
    from sweeps import ladder

    done = [(row, o) for row, o in played if o.finished]
    adapters = [row for row, _ in done if row.config["method"] != "full"]
    fulls = [row for row, _ in done if row.config["method"] == "full"]
    picked = max((row for row, _ in done), key=lambda r: r.val, default=None)
    best_adapter = max(adapters, key=lambda r: r.val, default=None)
    best_full = max(fulls, key=lambda r: r.val, default=None)
    gain = None if best_adapter is None or best_full is None else best_full.test - best_adapter.test
    evidence = True
    if priors is not None:
        found = ladder.brackets(study.get_trials(deepcopy=False), space, priors)
        adapter = found.get("adapter")
        from search_spaces.rates import capacity_tried

        capacity = adapter is not None and bool(capacity_tried(ladder.tried(study.get_trials(deepcopy=False),
                                                                            space), adapter))  # fmt: skip
        evidence = all(b is not None and b.bracketed for b in found.values()) and capacity
    escalate = gain is not None and gain > margin + 1e-9 and evidence
    return {"escalate": bool(escalate), "picked_test": None if picked is None else picked.test,
            "picked": None if picked is None else picked.key, "trials": len(played)}


def search_random(rows: list[Row], seed: int, budget: float) -> list[Any]:
    order = list(rows)
    random.Random(seed).shuffle(order)
    return answers(_within(order, budget))


def search_grid(rows: list[Row], space: Any, budget: float) -> list[Any]:
    position = {_key(c): i for i, c in enumerate(space.grid(1))}
    order = sorted(rows, key=lambda r: position.get(r.key, len(position)))
    return answers(_within(order, budget))


def _within(order: list[Row], budget: float) -> list[tuple[Row, Outcome]]:
    played, spent = [], 0.0
    for row in order:
        if spent >= budget:
            break
        outcome = Outcome(row.cost, row.val, True, len(row.vals))
        played.append((row, outcome))
        spent += outcome.cost
    return played


def dollars_to(trace: list[tuple[float, float | None]], target: float) -> float:
    for spent, test in trace:
        if test is not None and test >= target:
            return spent
    return math.inf


def regret_at(trace: list[tuple[float, float | None]], dollars: float, best: float) -> float:
    """Best test score in the table minus the answer's, after `dollars`; before any answer, all of it."""
    test = None
    for spent, answer in trace:
        if spent > dollars:
            break
        test = answer
    return best - (test if test is not None else 0.0)


def replay(table: list[dict[str, Any]], space: Any, seeds: int = 20, asha: dict[str, Any] | None = None,
           priors: Any | None = None, report_steps: tuple[int, ...] | None = None,
           max_trials: int | None = None, baseline: bool = True) -> dict[str, Any]:  # fmt: skip
    """Our search (with `priors`: the learning rate first), random and grid on the table, `seeds` times.
    `max_trials`: the default sweep's trial count, where the decision and the regret are read. With
    `baseline`, plain TPE and ASHA (the search without its fine-tuning rules) is replayed beside ours."""
    rows = rows_from_table(table, report_steps)
    if not rows:
        raise ValueError("the recorded table is empty: run `make bench-record` first")
    best = max(r.test for r in rows)
    target = TARGET_SHARE * best
    budget = sum(r.cost for r in rows)  # the whole grid, once
    asha = asha or {}
    ours = [search_ours(rows, space, s, budget, asha, priors, max_trials) for s in range(seeds)]
    traces: dict[str, list[Any]] = {
        "ours": [o.trace for o in ours],
        "random": [search_random(rows, s, budget) for s in range(seeds)],
        "grid": [search_grid(rows, space, budget)] * seeds,
    }
    plain = [search_ours(rows, space, s, budget, asha, None, max_trials) for s in range(seeds)] if baseline else []
    if plain:
        traces["plain_tpe_asha"] = [o.trace for o in plain]
    dollars = {name: [dollars_to(t, target) for t in ts] for name, ts in traces.items()}
    medians = {name: _median(d) for name, d in dollars.items()}
    grid_x = [budget * i / 100 for i in range(101)]
    regret = {
        name: {
            "median": [statistics.median(regret_at(t, x, best) for t in ts) for x in grid_x],
            "q25": [_quantile([regret_at(t, x, best) for t in ts], 0.25) for x in grid_x],
            "q75": [_quantile([regret_at(t, x, best) for t in ts], 0.75) for x in grid_x],
        }
        for name, ts in traces.items()
    }
    truth = _truth(rows)
    result = {
        "rows": len(rows),
        "seeds": seeds,
        "best_test_quality": best,
        "best_run": max(rows, key=lambda r: r.test).key,
        "target_test_quality": target,
        "budget_usd": budget,
        "dollars_to_target": {name: {"median": medians[name], "per_seed": d} for name, d in dollars.items()},
        "cost_ratio_vs_random": _ratio(medians["ours"], medians["random"]),
        "cost_ratio_vs_grid": _ratio(medians["ours"], medians["grid"]),
        "by_target_share": {f"{share:.2f}": _ratios_at(traces, share * best)
                            for share in sorted({*OTHER_SHARES, TARGET_SHARE})},
        "trials_run": {name: statistics.mean(len(t) for t in ts) for name, ts in traces.items()},
        "regret_curve": {"dollars": grid_x, **regret},
        "max_trials": max_trials,
        "truth_escalate": truth,
        **_decision_keys(ours, best, truth),
    }
    if plain:
        result["plain_tpe_asha"] = {"cost_ratio_vs_random": _ratio(medians["plain_tpe_asha"], medians["random"]),
                                    **_decision_keys(plain, best, truth)}  # fmt: skip
    return result


def _truth(rows: list[Row]) -> bool:
    """The table's answer: escalate only if its best full configuration beats its best adapter
    configuration (by test quality) by more than the margin."""
    full = max((r.test for r in rows if r.config["method"] == "full"), default=None)
    adapter = max((r.test for r in rows if r.config["method"] != "full"), default=None)
    return full is not None and adapter is not None and full - adapter > DECISION_MARGIN + 1e-9


def _decision_keys(searches: list[Search], best: float, truth: bool) -> dict[str, Any]:
    """decision_agreement: the share of replayed sweeps deciding as the table's truth; regret: the best
    test quality minus the test quality of the run the sweep picks by validation (median over seeds)."""
    agree = [s.decision["escalate"] == truth for s in searches]
    regrets = [best - (s.decision["picked_test"] if s.decision["picked_test"] is not None else 0.0)
               for s in searches]  # fmt: skip
    return {"decision_agreement": sum(agree) / len(agree) if agree else None,
            "regret": statistics.median(regrets) if regrets else None,
            "regret_per_seed": regrets,
            "escalated": sum(s.decision["escalate"] for s in searches)}


def _ratios_at(traces: dict[str, list[Any]], target: float) -> dict[str, Any]:
    medians = {name: _median([dollars_to(t, target) for t in ts]) for name, ts in traces.items()}
    return {"target_test_quality": target, "median_dollars": medians,
            "cost_ratio_vs_random": _ratio(medians["ours"], medians["random"])}


def _key(config: dict[str, Any]) -> str:
    from bench.record import config_key

    return config_key(config)


def _median(values: list[float]) -> float:
    return statistics.median(values)  # inf-safe: an unreached target sorts last


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ratio(a: float, b: float) -> float | None:
    if math.isinf(a) or math.isinf(b) or b == 0:
        return None
    return a / b
