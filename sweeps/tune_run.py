"""The Ray Tune part of a sweep: build (or restore) the Tuner, run it, and close the sweep's books."""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from sweeps import closing, storage
from sweeps import config as sweep_config
from sweeps.runtime import git_commit, ray_init, sweep_id
from tracking import names
from tracking.prices import PriceQuote, reservation

console = Console(highlight=False)


def execute(cfg: sweep_config.SweepConfig, budget_usd: float, space: Any, quote: Any, root: Path,
            resume: bool, plans: dict[str, dict[str, Any]] | None = None) -> int:  # fmt: skip
    """Run the sweep; its parent run ends FINISHED when the sweep finished, KILLED when it was interrupted
    (Ctrl-C: Tune stops and returns, or a KeyboardInterrupt), FAILED when something raised."""
    from tracking import mlflow_store

    base = trial_base(cfg)
    test_sha, steps = prepare(base)  # lock the test set and convert the model once, here, not in N racing trials

    uri = sweep_config.tracking_uri(cfg)
    client = tracking_client(uri)
    identity = sweep_id(root)
    sweep_params = {"budget_usd": budget_usd, "max_trials": cfg.max_trials,
                    "concurrency": cfg.concurrency, "space": space.source, "config": cfg.source,
                    **{f"price_per_hour.{m}": quote[m].usd_per_hour for m in space.method_names}}  # fmt: skip
    parent = mlflow_store.start_sweep_run(
        client, cfg.name, identity, sweep_params, {names.TAG_GIT_COMMIT: git_commit(), names.TAG_TEST_SHA: test_sha}
    )
    books: dict[str, Any] = {"status": "failed", "grid": None, "ledger": None, "baseline_cost": 0.0}
    try:
        run_sweep(cfg, budget_usd, space, quote, root, resume, base, steps, client, parent, identity, uri, books,
                  plans)  # fmt: skip
    except KeyboardInterrupt:
        books["status"] = "interrupted"
        raise
    finally:
        closing.finish(cfg, client, parent, books, root, uri)
    return 0


def run_sweep(cfg: sweep_config.SweepConfig, budget_usd: float, space: Any, quote: Any, root: Path, resume: bool,
              base: dict[str, Any], steps: int, client: Any, parent: str, identity: str, uri: str,
              books: dict[str, Any], plans: dict[str, dict[str, Any]] | None = None) -> None:  # fmt: skip
    """The baseline, then Tune; what finish() needs goes into `books` as it becomes known."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from sweeps import pruning
    from sweeps import search as sweep_search
    from sweeps.baseline import run_baseline
    from sweeps.budget import BudgetLedger, BudgetSearcher, BudgetStopper, BudgetSync
    from sweeps.calibrate import Calibrate
    from sweeps.cleanup import DropUnfinishedState
    from sweeps.mlflow_callback import MLflowTrialLogger
    from sweeps.progress import SweepProgress, print_start_banner
    from sweeps.sweep import first_trial_costs
    from sweeps.trainable import trainable

    # Per method: the plan (or estimate_trial_seconds) at that method's price, until its own trials are
    # measured; on resume the ledger brings back the projections the sweep started with.

    if plans is None:  # a resume whose plan failed: the ledger's saved projections replace these
        plans = {m: {"seconds": {"total": cfg.estimate_trial_seconds or 600}} for m in space.method_names}
    estimates = first_trial_costs(cfg, quote, {m: plans[m] for m in space.method_names})
    dearest = max(space.method_names, key=lambda m: estimates[m])
    estimate = estimates[dearest]
    print_start_banner(console, budget_usd, quote[dearest], estimate, cfg.max_trials,
                       per_method={m: quote[m] for m in space.method_names}, plans=plans)  # fmt: skip

    # Tune snapshots its experiment state every 10 s instead of its default, so a killed driver loses
    # little: a stale snapshot can re-run trials that had finished (and pay for them twice).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")
    ray_init(cfg)  # before the baseline: it is a Ray task
    baseline_cost = run_baseline(cfg, base, client, parent, identity, quote["none"]) if cfg.baseline else 0.0
    books["baseline_cost"] = baseline_cost
    # The baseline is paid for out of the same budget; trials get what is left.
    ledger = BudgetLedger(budget_usd, estimate_usd=estimate, reserve_usd=estimate * 0.15,
                          path=root / "budget.json", baseline_usd=baseline_cost, estimates=estimates)  # fmt: skip
    books["ledger"] = ledger

    # Resources per method: full fine-tuning may ask for more than QLoRA. A multi-worker trial's workers
    # are Ray Train's, which reserves them itself (sweeps/workers.py): its Tune trial only runs the Train
    # driver and holds next to nothing (Ray refuses an empty bundle, so one byte of memory).
    resources = {
        m: tune.PlacementGroupFactory([{"CPU": r.cpus, "GPU": r.gpus} if r.workers == 1 else {"memory": 1}])
        for m, r in cfg.resources.items()
    }
    trainable_with_resources = tune.with_resources(
        trainable, lambda config: resources[config.get("method") or "lora"]
    )
    callbacks = [
        BudgetSync(ledger, cfg.name),
        MLflowTrialLogger(uri, cfg.name, identity, parent, git_commit()),
        SweepProgress(console, ledger),  # the ledger counts the baseline
        DropUnfinishedState(),  # a pruned trial's weights and optimizer state
        Calibrate(cfg, identity),  # each finished trial's measured seconds over its plan, for the next plan
    ]
    storage_path, storage_filesystem = storage.storage_fs(cfg.storage, cfg.storage_endpoint)
    run_config = tune.RunConfig(
        name=cfg.name,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,  # None on a folder; pyarrow's S3 (sweeps/storage.py) on a bucket
        stop=BudgetStopper(ledger, cfg.name),
        callbacks=callbacks,
        # Only a trial's newest checkpoint: a resume continues from it (or from the trial's work/ folder),
        # and each older one is a full copy of the trainable weights and optimizer state.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=1),  # a lost worker retries from its last checkpoint
        verbose=0,
    )
    # Ray writes its experiment state next to ours, under storage/name (in the bucket on object storage)
    tuner_dir = f"{storage_path}/{cfg.name}"
    if resume and tune.Tuner.can_restore(tuner_dir, storage_filesystem=storage_filesystem):
        tuner = tune.Tuner.restore(
            tuner_dir,
            trainable_with_resources,
            storage_filesystem=storage_filesystem,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space(cfg, base, quote),
        )
    else:
        # The learning rate first per method group, then TPE; ASHA with each group's leader kept
        # (sweeps/search.py, sweeps/ladder.py).
        priors = rate_priors(cfg, steps) if cfg.rate_first else None
        searcher = sweep_search.searcher(space, priors)
        search = BudgetSearcher(
            ConcurrencyLimiter(searcher, max_concurrent=cfg.concurrency), ledger, cfg.max_trials
        )
        scheduler = pruning.scheduler(steps, int(base.get("eval_every", 20)),
                                      cfg.grace_period, cfg.reduction_factor, cfg.rate_first)  # fmt: skip
        if priors is not None:
            console.print(f"search: learning-rate priors for {cfg.trial.get('model', 'the model')} at {steps} "
                          f"steps: adapters {priors.adapter:.2g}, full fine-tuning {priors.full:.2g}")
        note = sweep_search.evidence_note(space, cfg.max_trials, cfg.rate_first, budget_usd - baseline_cost,
                                          estimates)
        if note:
            console.print(note)
        tuner = tune.Tuner(
            trainable_with_resources,
            param_space=param_space(cfg, base, quote),
            tune_config=tune.TuneConfig(
                metric="val_quality",
                mode="max",
                search_alg=search,
                scheduler=scheduler,
                num_samples=cfg.max_trials,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=run_config,
        )
    with closing.tune_interrupts() as interrupted:
        books["grid"] = tuner.fit()
        books["status"] = "interrupted" if interrupted() else "finished"  # before the handler is put back


def rate_priors(cfg: sweep_config.SweepConfig, steps: int) -> Any:
    """Where each group's learning-rate ladder starts, from the model's width (its config) and the steps."""
    from sweeps.ladder import Priors
    from sweeps.plan_cli import context, sweep_args

    try:
        hidden = context(sweep_args(cfg), cfg).shape.hidden
    except (OSError, ValueError):  # a model whose config cannot be read: the prior of a 7-8B model
        hidden = None
    return Priors.of(hidden, steps)


def tracking_client(uri: str) -> Any:
    """A client whose store exists. MLflow creates a new SQLite store's tables on first use without a lock
    between processes (its tracking store, unlike its jobs store), so two sweeps started at once on a new
    mlflow.db both run the migrations and one dies ("duplicate column name: step"). One creates it here
    while the other waits on a file lock; afterwards the lock costs one uncontended flock."""
    import mlflow

    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(uri)  # a server creates its store once, when it starts
    path = str(Path(uri.removeprefix("sqlite:///")).resolve())
    name = f"sweepboard-mlflow-init-{hashlib.sha256(path.encode()).hexdigest()[:16]}.lock"
    with open(Path(tempfile.gettempdir()) / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return mlflow.MlflowClient(uri)  # the client opens the store (creating its tables) right away


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default name spells out the config and runs past 200 chars


def trial_base(cfg: sweep_config.SweepConfig) -> dict[str, Any]:
    """Fixed trial settings with every path made absolute: Ray runs trials in their own folders."""
    base = copy.deepcopy(cfg.trial)
    cache_root = Path(os.environ.get("SWEEPBOARD_CACHE", ".cache"))
    base["cache_dir"] = str(Path(base.get("cache_dir") or cache_root / "models").resolve())
    data = base.setdefault("data", {})
    from trainers.config import from_dict
    from trainers.data import lock_path

    data_cfg = from_dict({**base, "method": "lora"}).data
    data["lock_dir"] = str(lock_path(data_cfg).resolve())
    for key in ("source", "test_source"):
        if data.get(key) and not str(data[key]).startswith("builtin:"):
            data[key] = str(Path(data[key]).expanduser().resolve())
    model = base.get("model")
    if model and Path(model).expanduser().exists():
        base["model"] = str(Path(model).expanduser().resolve())
    return base


def param_space(cfg: sweep_config.SweepConfig, base: dict[str, Any],
                quote: dict[str, PriceQuote] | None = None) -> dict[str, Any]:  # fmt: skip
    """`quote`: per method, what the driver charges for the resources Ray reserves. Each trial gets its
    method's reservation and prices it on the node it runs on (the GPU model there), so its own cost_usd,
    the one the budget counts, is for the GPU it got."""
    price = {"price_per_hour": cfg.price_per_hour} if cfg.price_per_hour else {}
    # On object storage the root is the node-local mirror: trials keep their working files there and their
    # checkpoints carry the whole training state into the bucket (sweeps/trainable.py).
    root = str(storage.sweep_folder(cfg.storage, cfg.name, cfg.storage_endpoint))
    return {"sweepboard_sweep": cfg.name, "sweepboard_root": root, "sweepboard_trial": {**base, **price},
            "sweepboard_remote": storage.is_remote(cfg.storage),
            "sweepboard_reserved": {m: reservation(q) for m, q in (quote or {}).items()},
            "sweepboard_workers": {m: dataclasses.asdict(r) for m, r in cfg.resources.items() if r.workers > 1}}  # fmt: skip


def prepare(base: dict[str, Any]) -> tuple[str, int]:
    """Lock the test set (or check the lock) and convert the model; the lock's sha256 and the optimizer
    steps a trial takes (from `epochs` when the config gives epochs)."""
    from trainers import data as data_mod
    from trainers import model as model_mod
    from trainers.config import from_dict, planned_steps

    trial = from_dict({**base, "method": "lora"})
    splits = data_mod.prepare(trial.data)
    console.print(data_mod.describe(splits))
    model_mod.resolve(trial)
    return str(splits.sha256), planned_steps(trial, len(splits.train))
