"""The `plan` subcommand: what each method's trial would need and cost, before a sweep spends anything."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from tracking import calibration, planner
from tracking import plan_model as pm


def add(sub: Any) -> None:
    p = sub.add_parser("plan", help="predict memory, hours and dollars per method before spending anything")
    p.add_argument("--config", help="sweep config (YAML path or built-in name): trial settings and resources")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--model", help="smollm2-135m, builtin:tiny, a local HF folder or hub id (config.json only)")
    size.add_argument("--params", help="a model size such as 7B: plans a Llama-2-like shape of that size")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", help="builtin:dates or a .jsonl/.csv/.parquet file (rows counted, tokens measured)")
    data.add_argument("--examples", type=int, help="rows in the data (the test and validation sets come out of it)")
    p.add_argument("--seq-len", type=int, help="tokens per example (with --examples every example fills it)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=float)
    steps.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--gpu", help="catalog key of the GPU to plan for (default: the config's, else this CPU)")
    p.add_argument("--gpus", type=int, help="GPUs per trial (default: the config's resources, else 1 with --gpu)")
    p.add_argument("--budget", type=float, help="US dollars: how many trials of each method it buys")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = plan(args)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        _table(result)
    return 0


def for_sweep(cfg: Any) -> dict[str, Any]:
    """The plan of a sweep config as `sweepboard plan --config` prints it: what its admission and banner use."""
    return plan(sweep_args(cfg), loaded=cfg)


def sweep_args(cfg: Any) -> argparse.Namespace:
    """`sweepboard plan --config` of a loaded sweep config, with no other option."""
    options = ("model", "params", "data", "examples", "seq_len", "epochs", "steps", "batch_size", "gpu", "gpus",
               "budget")  # fmt: skip
    return argparse.Namespace(config=cfg.name, **dict.fromkeys(options))


def plan(args: argparse.Namespace, loaded: Any = None) -> dict[str, Any]:
    """The plan as data: inputs, then one entry per method (see tracking/planner.py for the model).
    `loaded`: the sweep config `args.config` names, already loaded (with its command-line overrides)."""
    ctx = context(args, loaded)
    methods = {m: plan_trial(ctx, {"method": m}) for m in planner.METHODS}
    if args.budget is not None:
        for m in methods.values():
            m["trials_affordable"] = math.floor(args.budget / m["usd_per_trial"]) if m["status"] != "does not fit" else 0
        if not any(m["trials_affordable"] for m in methods.values() if m["fits"]):
            cheapest = min(m["usd_per_trial"] for m in methods.values())
            raise ValueError(f"--budget: {args.budget:g}: buys no trial (the cheapest method's trial costs "
                             f"${cheapest:.4g}); raise the budget, or plan fewer steps, shorter sequences or a "
                             "smaller model")  # fmt: skip
    work, device = ctx.work, ctx.device
    inputs = {"model": ctx.shape.source, "params": ctx.shape.total_params(), "hidden": ctx.shape.hidden,
              "layers": ctx.shape.layers, "device": device.name, "device_memory_gb": round(device.memory_gb, 1),
              "n_train": work.n_train, "n_val": work.n_val, "n_test": work.n_test,
              "tokens_per_example": round(work.tokens_per_example, 1), "budget_usd": args.budget}  # fmt: skip
    return {"inputs": inputs, "methods": methods}


@dataclass(frozen=True)
class Context:
    """What every trial of a plan shares: the settings, the model's shape, the data's size, the devices."""

    trial: dict[str, Any]
    resources: dict[str, dict[str, float]]
    shape: pm.Shape
    work: planner.Workload  # its cfg is the lora trial's; each planned trial brings its own
    device: planner.Device  # the named GPU, or this CPU
    cpu: planner.Device
    catalog: Any
    from_config: bool
    gpu_given: bool
    gpus: int | None


def context(args: argparse.Namespace, loaded: Any = None) -> Context:
    from tracking.prices import load_catalog
    from trainers.config import from_dict

    for key in ("examples", "seq_len", "epochs", "steps", "batch_size", "gpus", "budget"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{key.replace('_', '-')}: {value!r}: must be a positive number")
    trial, resources, gpu_key = _from_config(args.config, loaded)
    overrides = {"model": args.model, "max_seq_len": args.seq_len, "batch_size": args.batch_size,
                 "steps": args.steps, "epochs": args.epochs}  # fmt: skip
    trial.update({k: v for k, v in overrides.items() if v is not None})
    if args.epochs is not None:
        trial.pop("steps", None)
    if args.data:
        trial.setdefault("data", {})["source"] = args.data
    cfg = from_dict({**trial, "method": "lora"})
    catalog = load_catalog()
    device = planner.device(catalog, args.gpu or gpu_key)
    if args.gpus is not None and device.key == "cpu":
        raise ValueError(f"--gpus: {args.gpus}: no GPU named to plan them for; add --gpu KEY "
                         f"({', '.join(g.key for g in catalog.gpus)})")  # fmt: skip
    shape = pm.llama_like(pm.parse_params(args.params)) if args.params else _shape(cfg)
    work = _workload(cfg, args)
    if work.n_train <= 0:
        raise ValueError(f"--examples: {work.n_train + work.n_val + work.n_test}: leaves no training rows after "
                         f"the test ({work.n_test}) and validation ({work.n_val}) sets; give more examples")  # fmt: skip
    cpu = device if device.key == "cpu" else planner.device(catalog, None)
    return Context(trial, resources, shape, work, device, cpu, catalog, args.config is not None, bool(args.gpu),
                   args.gpus)  # fmt: skip


def plan_trial(ctx: Context, searched: dict[str, Any], calibrated: bool = True) -> dict[str, Any]:
    """One trial's plan: the fixed settings with `searched` (method, rank, targets...) on top; `calibrated`
    False plans with the built-in rates alone, what calibration factors are measured against."""
    from trainers.config import from_dict

    method = searched.get("method") or "lora"
    res = ctx.resources.get(method, {"gpus": 0.0, "cpus": 2.0, "workers": 1})
    # A config's method that reserves no GPU runs on CPU in the sweep, so it is planned there, unless
    # --gpu asks otherwise; elsewhere a named GPU means one of it per trial.
    on_cpu = ctx.device.key == "cpu" or (ctx.from_config and not res["gpus"] and not ctx.gpu_given)
    gpus = 0 if on_cpu else ctx.gpus or int(res["gpus"] * res["workers"]) or 1
    # CPU workers each bring their threads; on GPUs the CPUs feed them and are priced, not counted as compute.
    cpus = float(res["cpus"]) * (res["workers"] if on_cpu else 1)
    dev = ctx.cpu if on_cpu else ctx.device
    cfg = from_dict({**ctx.trial, **searched, "method": method})
    work = planner.Workload(cfg, *work_fields(ctx.work))
    return planner.plan_method(ctx.shape, method, work, dev if calibrated else replace(dev, factors={}), gpus, cpus,
                               ctx.catalog)  # fmt: skip


def work_fields(work: planner.Workload) -> tuple[int, int, int, float, float]:
    return work.n_train, work.n_val, work.n_test, work.tokens_per_example, work.prompt_tokens


def _from_config(name: str | None, cfg: Any = None) -> tuple[dict[str, Any], dict[str, dict[str, float]], str | None]:
    if name is None:
        return {}, {}, None
    from sweeps import config as sweep_config

    cfg = cfg or sweep_config.load(name)
    res = {m: {"gpus": r.gpus, "cpus": r.cpus, "workers": r.workers} for m, r in cfg.resources.items()}
    return dict(cfg.trial), res, cfg.gpu


def _shape(cfg: Any) -> pm.Shape:
    from trainers import model as model_mod

    try:
        path = model_mod.resolve(cfg)
        hf_config = model_mod.config_of(path, cfg)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"model: {cfg.model!r}: its size cannot be read ({exc}); give it instead, e.g. --params 7B"
        ) from exc
    return pm.shape_of(hf_config, cfg.model)


def _workload(cfg: Any, args: argparse.Namespace) -> planner.Workload:
    from trainers.config import DEFAULT_TEST_SIZE

    n_test = cfg.data.test_size or DEFAULT_TEST_SIZE
    n_val = cfg.data.val_size
    if args.examples is not None:
        # Each example fills the sequence and its answer fits in the generation budget: an upper bound.
        seq = float(cfg.max_seq_len)
        return planner.Workload(cfg, args.examples - n_test - n_val, n_val, n_test, seq, seq - cfg.max_new_tokens)
    from trainers.rows import load_rows

    rows = load_rows(cfg.data)
    tokens, prompt = planner.measured_tokens(cfg, rows)
    return planner.Workload(cfg, len(rows) - n_test - n_val, n_val, n_test, tokens, prompt)


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    i = result["inputs"]
    title = (f"{i['model']}: {i['params'] / 1e9:.3g}B parameters on {i['device']} ({i['device_memory_gb']} GB); "
             f"{i['n_train']} training rows of {i['tokens_per_example']} tokens")  # fmt: skip
    table = Table(title=title)
    for column in ("method", "memory", "GB/device", "parts GB (w/g/opt/act)", "GPUs",
                   "tokens/s", "hours", "$/trial", "trials", "calibrated on"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, m in result["methods"].items():
        b = m["memory_breakdown_gb"]
        parts = "/".join(f"{b[k]:.2g}" for k in ("weights", "gradients", "optimizer", "activations"))
        parts += " ckpt" if m["gradient_checkpointing"] else ""
        trials = "-" if m["trials_affordable"] is None else str(m["trials_affordable"])
        table.add_row(name, m["status"], f"{m['memory_gb']:.3g}", parts, str(m["resources"]["gpus"]),
                      f"{m['tokens_per_second']:,.0f}", f"{m['hours_per_trial']:.3g}",
                      f"{m['usd_per_trial']:.4g}", trials, _calibrated(m))  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)
    print(f"calibration: {calibration.path()} (measured over planned seconds of this machine's finished trials)")


def _calibrated(m: dict[str, Any]) -> str:
    n = m["calibrated_on_trials"]
    return f"{n} trial{'s' if n != 1 else ''}" if n else "built-in rates"

