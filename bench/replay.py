"""Search efficiency, replayed against the recorded table (bench/record/trials.jsonl).

Three searches spend the same budget on the same table, one trial at a time as the default sweep runs:
- ours: Optuna's TPE (the sampler the sweep gives Ray's OptunaSearch, sweeps/tune_run.tpe_sampler) over
  bench/grid.yaml, starting from the sweep's first points, with Ray Tune's own ASHAScheduler deciding from
  each recorded validation curve whether the trial would have been stopped at a rung (a stopped trial
  costs what it had spent at that report, and gets no test score);
- random: the grid's configurations in a random order, each trained to the end;
- grid: the grid in its file order, each trained to the end (the same for every seed).

At every dollar spent, a search's answer is the finished run with the best validation score, and its
score is that run's test quality. `dollars_to_target` is what a search spends until its answer reaches
95% of the best test quality in the table (the key); the same ratio at other shares of the best is
reported beside it, since how selective the target is decides how much a model-based search can gain.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

TARGET_SHARE = 0.95
OTHER_SHARES = (0.90, 0.97)
MAX_REPEATS = 20  # TPE proposing configurations already run (the table is finite): then take a new one


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
    val: float  # its last validation score (what the searcher is told)
    finished: bool  # ran to the end and got a test score


def rows_from_table(table: list[dict[str, Any]]) -> list[Row]:
    """Rows with their costs: CPU-time cost where recorded (what the trial costs on a quiet machine),
    else the wall-time cost."""
    rows = []
    for r in table:
        curve = sorted(r["curve"], key=lambda p: p["step"])
        rows.append(Row(
            key=r["key"], config=r["config"],
            vals=tuple(float(p["val_quality"]) for p in curve), costs=tuple(_cost(p) for p in curve),
            val=float(r["final"]["val_quality"]), test=float(r["final"]["test_quality"]), cost=_cost(r["final"]),
        ))  # fmt: skip
    return rows


def _cost(point: dict[str, Any]) -> float:
    return float(point.get("cpu_cost_usd", point["cost_usd"]))


def run_trial(row: Row, scheduler: Any | None, trial_id: str) -> Outcome:
    """Play one recorded trial, report by report, past the scheduler."""
    if scheduler is None:
        return Outcome(row.cost, row.val, True)
    from ray.tune.schedulers import TrialScheduler

    trial = SimpleNamespace(trial_id=trial_id)
    scheduler.on_trial_add(None, trial)
    for i, val in enumerate(row.vals, 1):
        action = scheduler.on_trial_result(None, trial, {"training_iteration": i, "val_quality": val})
        if action == TrialScheduler.STOP and i < len(row.vals):
            scheduler.on_trial_remove(None, trial)
            return Outcome(row.costs[i - 1], val, False)
    # The final report (its test score) comes one iteration after the last validation, as in trainable.py.
    scheduler.on_trial_complete(None, trial, {"training_iteration": len(row.vals) + 1, "val_quality": row.val})
    return Outcome(row.cost, row.val, True)


def answers(order: list[tuple[Row, Outcome]]) -> list[tuple[float, float | None]]:
    """(dollars spent, test score of the answer) after each trial: the best finished run by validation."""
    spent, best, out = 0.0, None, []
    for row, outcome in order:
        spent += outcome.cost
        if outcome.finished and (best is None or row.val > best.val):
            best = row
        out.append((spent, None if best is None else best.test))
    return out


def search_ours(rows: list[Row], space: Any, seed: int, budget: float, asha: dict[str, Any]) -> list[Any]:
    import numpy as np
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.tune_run import first_points, tpe_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    np.random.seed(seed)  # ASHA draws a bracket with numpy (one bracket here, but keep it reproducible)
    by_key = {r.key: r for r in rows}
    points = first_points(space)
    study = optuna.create_study(direction="maximize", sampler=tpe_sampler(len(points), seed))
    for point in points:
        study.enqueue_trial(point)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_quality", mode="max", **asha)
    rng = random.Random(seed)
    played: list[tuple[Row, Outcome]] = []
    told: dict[str, float] = {}
    spent, repeats = 0.0, 0
    while spent < budget and len(told) < len(rows):
        trial = study.ask()
        key = _key(space.define_by_run(trial))
        if key in told or key not in by_key:
            # Already run (or not in the table): the searcher learns nothing new and nothing is spent.
            if key in told:
                study.tell(trial, told[key])
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
        outcome = run_trial(row, scheduler, f"t{len(played)}")
        study.tell(trial, outcome.val)
        told[key] = outcome.val
        played.append((row, outcome))
        spent += outcome.cost
    return answers(played)


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
        outcome = Outcome(row.cost, row.val, True)
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
           ) -> dict[str, Any]:  # fmt: skip
    rows = rows_from_table(table)
    if not rows:
        raise ValueError("the recorded table is empty: run `make bench-record` first")
    best = max(r.test for r in rows)
    target = TARGET_SHARE * best
    budget = sum(r.cost for r in rows)  # the whole grid, once
    asha = asha or {}
    traces: dict[str, list[Any]] = {
        "ours": [search_ours(rows, space, s, budget, asha) for s in range(seeds)],
        "random": [search_random(rows, s, budget) for s in range(seeds)],
        "grid": [search_grid(rows, space, budget)] * seeds,
    }
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
    return {
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
    }


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
