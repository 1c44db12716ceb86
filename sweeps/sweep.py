"""`sweepboard sweep` and `sweepboard resume`: validate -> prepare task and model -> baseline -> Tune -> board.

Ray Tune owns trial scheduling, pruning (ASHA), retries and restore; Optuna's TPE proposes configs, starting
from the production-default LoRA; the budget ledger admits trials; the driver is MLflow's only writer.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sweeps import config as sweep_config
from sweeps import driver_lock, storage
from sweeps.ledger import BudgetError, usd, validate_budget  # no Ray before the checks pass
from sweeps.runtime import STATE_FILE, known_sweeps, new_sweep_id, open_sweep
from trainers.config import ConfigError


def run(budget: Any, config: str | None, overrides: dict[str, Any]) -> int:
    """A new sweep. Every input problem is reported at once, before anything is spent."""
    problems: list[str] = []
    budget_usd = _collect(problems, lambda: validate_budget(budget))
    cfg = _collect(problems, lambda: sweep_config.load(config, overrides))
    if cfg is not None:
        space = _collect(problems, lambda: _load_space(cfg.space))
        quote = _collect(problems, lambda: _quote(cfg))
        _collect(problems, lambda: _check_tracking(cfg))
        root = storage.sweep_folder(cfg.storage, cfg.name, cfg.storage_endpoint)
        if _collect(problems, lambda: _taken(cfg, root)):
            problems.append(_exists(cfg.name, root))
        _check_task(cfg, space, problems)
        plans = _collect(problems, lambda: _plan(cfg, space)) if space is not None else None
        if plans is not None:
            problems.extend(_fit_problems(cfg, space, plans))
        if budget_usd is not None and quote is not None and plans is not None:
            problems.extend(_budget_problems(cfg, budget_usd, quote, plans))
    if problems:
        raise ConfigError(problems)
    assert cfg is not None and budget_usd is not None and quote is not None and space is not None
    if storage.is_remote(cfg.storage):
        storage.fresh_mirror(root)  # a cache; the bucket's lock object keeps two drivers apart
    else:
        try:
            root.mkdir(parents=True)  # not exist_ok: of two `sweep`s of one name at once, exactly one creates it
        except FileExistsError:
            raise ConfigError([_exists(cfg.name, root)]) from None
    with driver_lock.hold(root, f"sweep --name {cfg.name}"):  # before anything is spent
        if storage.is_remote(cfg.storage) and _taken(cfg, root):
            raise ConfigError([_exists(cfg.name, root)])  # another `sweep` of the name got there first
        state = {"config": asdict(cfg), "budget_usd": budget_usd, "space_source": space.source,
                 "sweep_id": new_sweep_id()}
        (root / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
        storage.push(root / STATE_FILE)
        from sweeps.tune_run import execute

        return execute(cfg, budget_usd, space, quote, root, resume=False, plans=plans)


def resume(name: str, where: str = "runs/sweeps") -> int:
    root = open_sweep(where, name)
    state_file = root / STATE_FILE
    if not state_file.is_file():
        known = known_sweeps(root.parent, where)
        place = where if storage.is_remote(where) else root
        raise ConfigError(
            [
                f"sweep {name!r}: nothing to resume in {place}; known sweeps: {', '.join(known) or 'none'}; "
                f"start it with `make sweep BUDGET=... NAME={name}` (give --storage if it lives elsewhere)"
            ]
        )
    with driver_lock.hold(root, f"resume {name}"):  # one driver per sweep; refused before anything is spent
        state = json.loads(state_file.read_text())
        raw = dict(state["config"])
        source = raw.pop("source", str(state_file))
        raw.pop("min_adapter_configs", None)  # sweeps started before the learning-rate brackets replaced it
        raw["resources"] = {m: dict(r) for m, r in raw["resources"].items()}
        cfg = sweep_config.build(raw, source)
        space = _load_space(state["space_source"])
        quote = _quote(cfg)
        _check_tracking(cfg)
        from sweeps.tune_run import execute

        # For the banner: the ledger keeps the projections the sweep started with and what trials measured.
        plans = _collect([], lambda: _plan(cfg, space))
        return execute(cfg, float(state["budget_usd"]), space, quote, root, resume=True, plans=plans)


def _plan(cfg: sweep_config.SweepConfig, space: Any) -> dict[str, dict[str, Any]]:
    """`sweepboard plan --config` of this sweep, for the methods its space searches and the baseline."""
    from sweeps.plan_cli import for_sweep

    methods = for_sweep(cfg)["methods"]
    return {m: methods[m] for m in ("none", *space.method_names)}


def _fit_problems(cfg: sweep_config.SweepConfig, space: Any, plans: dict[str, dict[str, Any]]) -> list[str]:
    """A method whose trial cannot fit in the memory of what it reserves would fail every trial, each billed."""
    found = []
    for method in ("none", *space.method_names) if cfg.baseline else space.method_names:
        p = plans[method]
        if p["fits"]:
            continue
        res = cfg.resources[method]
        given = f"{res.workers} x {res.gpus:g} GPU(s)" if res.gpus else "this machine's memory"
        need = (f"give resources.{method}.gpus (x workers) {p['gpus_needed']} in the sweep config"
                if p["gpus_needed"] else "use a GPU with more memory, a smaller model or shorter sequences")  # fmt: skip
        found.append(f"method {method}: a trial needs {p['memory_gb']:.3g} GB per device ({p['status']}) and "
                     f"resources.{method} gives {given}: {need}, or drop {method} from the search space "
                     f"(`make plan CONFIG=...` shows the plan)")  # fmt: skip
    return found


def _budget_problems(cfg: sweep_config.SweepConfig, budget_usd: float, quote: Any,
                     plans: dict[str, dict[str, Any]]) -> list[str]:  # fmt: skip
    """A budget that buys not even one trial of the cheapest method the space searches is refused."""
    projections = first_trial_costs(cfg, quote, plans)
    cheapest = min(projections, key=lambda m: projections[m])
    first = projections[cheapest]
    if budget_usd >= first:
        return []
    if cfg.estimate_trial_seconds is not None:
        why = f"estimate_trial_seconds={cfg.estimate_trial_seconds:g} at {usd(quote[cheapest].usd_per_hour)}/h"
        fix = "or lower estimate_trial_seconds in the sweep config if your trials are shorter"
    else:
        why = (f"{cheapest}: planned {plans[cheapest]['hours_per_trial'] * 3600:,.0f} s at "
               f"{usd(quote[cheapest].usd_per_hour)}/h")  # fmt: skip
        fix = "or plan shorter trials (fewer steps, a smaller model); `make plan` shows the plan"
    return [f"--budget {usd(budget_usd)} is below one trial's projected cost {usd(first)} ({why}): "
            f"raise --budget to at least {usd(first)}, {fix}"]


def first_trial_costs(cfg: sweep_config.SweepConfig, quote: Any, plans: dict[str, dict[str, Any]]) -> dict[str, float]:
    """What each searched method's first trial is projected to cost before one has finished: its planned hours
    (or estimate_trial_seconds, when the config gives it) at the price the driver charges for its resources."""
    return {m: quote[m].usd_per_hour * (cfg.estimate_trial_seconds / 3600 if cfg.estimate_trial_seconds is not None
                                         else sum(plans[m]["seconds"].values()) / 3600)
            for m in plans if m != "none"}  # fmt: skip


def _taken(cfg: sweep_config.SweepConfig, root: Path) -> bool:
    """Whether sweep cfg.name exists already: its folder, or its state file in the bucket."""
    if storage.is_remote(cfg.storage):
        return storage.exists(cfg.storage, cfg.name, STATE_FILE, cfg.storage_endpoint)
    return root.exists()


def _exists(name: str, root: Path) -> str:
    running = driver_lock.holder(root)
    now = f"; it is running now ({driver_lock.describe(running)})" if running is not None else ""
    remote = storage.remote_of(root)
    place = remote[0].uri if remote is not None else root
    again = f"`sweepboard resume {name} --storage {place}`" if remote is not None else \
        f"`make resume NAME={name}` (sweepboard resume {name})"  # fmt: skip
    return (
        f"sweep {name!r} already exists in {place}{now}: continue it with {again}, "
        "or start a new one with another NAME; nothing is overwritten"
    )


def _check_task(cfg: sweep_config.SweepConfig, space: Any, problems: list[str]) -> None:
    """The data, the lock, the model and the target modules, with nothing written, converted or loaded:
    what every trial would otherwise fail on (and be billed for)."""
    from trainers import data as data_mod
    from trainers import model as model_mod
    from trainers.config import from_dict

    try:
        trial = from_dict({**cfg.trial, "method": "lora"})
    except ConfigError:
        return  # the sweep config's own check has reported these
    splits = _collect(problems, lambda: data_mod.check(trial.data))
    if splits is not None:
        problems.extend(_rows_problems(trial, splits))
    module_names = _collect(problems, lambda: model_mod.check(trial))
    if module_names is not None and space is not None:
        problems.extend(space.target_problems(module_names))


def _rows_problems(trial: Any, splits: Any) -> list[str]:
    """What every trial would refuse once it has the rows: too few for one batch, no chat template to render
    them with (the model's tokenizer is read, not the weights)."""
    from trainers import render
    from trainers.config import batch_problem

    problem = batch_problem(trial, len(splits.train))
    found = [problem] if problem is not None else []
    _collect(found, lambda: render.check(trial, splits.train + splits.val + splits.test))
    return found


def _collect(problems: list[str], check: Any) -> Any:
    try:
        return check()
    except ConfigError as exc:
        problems.extend(exc.problems)
    except (BudgetError, ValueError, storage.StorageError) as exc:
        problems.extend(getattr(exc, "problems", None) or [str(exc)])  # a search space lists its own
    return None


def _load_space(name: str) -> Any:
    from search_spaces import load_space

    return load_space(name)


def _quote(cfg: sweep_config.SweepConfig) -> Any:
    """Price of one trial-hour per method, from the resources Ray reserves for that method's trials."""
    from tracking.prices import detect_device, method_quotes

    return method_quotes(cfg.resources, detect_device(), cfg.price_per_hour, cfg.gpu)


def _check_tracking(cfg: sweep_config.SweepConfig) -> None:
    from tracking.mlflow_conn import check_reachable

    check_reachable(sweep_config.tracking_uri(cfg))
