"""`make bench`: how well sweepboard does its job, measured side by side in one run.

Writes bench/results.json and bench/REPORT.md (with plots beside it):
1. overhead.compute_share: the share of trials' wall time spent in training and evaluation steps, in a
   real sweep on the embedded default (goal >= 0.9);
2. throughput.ratio_vs_hf_trainer: our trainer's tokens/s over a plain HF Trainer + PEFT script on the
   same LoRA trial, alternated in this process (goal >= 1.2), with both train losses;
3. search.cost_ratio_vs_random: dollars our search (the learning rate first, then TPE; ASHA) needs to reach
   95% of the best test quality, over random search's, replayed on the recorded table (goal <= 0.5);
   search.decision_agreement: the share of replayed sweeps (the default's trial count) whose method
   decision is the table's (goal >= 0.9); search.regret: the table's best test quality minus that of the
   run the sweep picks by validation (median, goal <= 0.02);
4. memory.<method>_mb: peak memory per method, and disk.default_sweep_gb: what that sweep left on disk
   (goal <= 3 GB), from the same sweep's trials;
5. planner.median_abs_error / worst_abs_error: the plan's trial cost against the measured one, over the
   recorded trials, a smoke sweep's and the default sweep's (bench/planner_accuracy.py; goal median <= 0.25);
6. gpu: the committed CUDA measurement (bench/gpu_results.json), when one was made.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import record, replay
from bench.report import write_report

HERE = Path(__file__).resolve().parent
GOALS = {"overhead.compute_share": (">=", 0.9), "throughput.ratio_vs_hf_trainer": (">=", 1.2),
         "search.cost_ratio_vs_random": ("<=", 0.5), "search.decision_agreement": (">=", 0.9),
         "search.regret": ("<=", 0.02), "disk.default_sweep_gb": ("<=", 3.0),
         "planner.median_abs_error": ("<=", 0.25)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmarks (make bench).")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and REPORT.md go")
    parser.add_argument("--only", nargs="*", choices=["overhead", "throughput", "search", "planner", "gpu"],
                        help="run only these parts (the others are kept from an earlier results.json)")  # fmt: skip
    parser.add_argument("--sweep-trials", type=int, default=4, help="trials in the overhead/memory sweep")
    parser.add_argument("--throughput-steps", type=int, default=20)
    parser.add_argument("--throughput-rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=20, help="seeds per search in the replay")
    args = parser.parse_args(argv)
    parts = set(args.only or ["overhead", "throughput", "search", "planner", "gpu"])
    out_json = args.out / "results.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if args.only and out_json.is_file() else {}
    # A partial run (--only) keeps the full run's date and duration and says which parts were run again.
    earlier = results.get("meta") if args.only else None
    results["meta"] = meta()
    started = time.perf_counter()
    trial = record.trial_settings()
    # The sweeps' trials write their measured over planned seconds here (the planner part reads them), not
    # into the user's calibration.
    calibration = Path(tempfile.mkdtemp(prefix="sweepboard-bench-cal-")) / "calibration.jsonl"
    os.environ["SWEEPBOARD_CALIBRATION"] = str(calibration)

    if "overhead" in parts:
        _step("1/4 overhead and memory: a sweep of the embedded default (baseline + "
              f"{args.sweep_trials} trials, the trial settings of sweeps/configs/default.yaml)")  # fmt: skip
        from bench import overhead

        with tempfile.TemporaryDirectory(prefix="sweepboard-bench-") as tmp:
            root, uri, name, wall = overhead.run_sweep(Path(tmp), args.sweep_trials)
            results.update(overhead.analyse(root, uri, name, wall))
        _say(f"compute share {results['overhead']['compute_share']:.3f}, "
             f"disk {results['disk']['default_sweep_gb']:.3f} GB")  # fmt: skip
    if "throughput" in parts:
        _step(f"2/4 trainer speed: ours vs HF Trainer + PEFT, {args.throughput_rounds} rounds of "
              f"{args.throughput_steps} steps each")  # fmt: skip
        from bench import throughput

        results["throughput"] = throughput.run(trial, args.throughput_steps, args.throughput_rounds)
        _say(f"ratio {results['throughput']['ratio_vs_hf_trainer']:.2f}")
        from bench import precision

        results["precision"] = precision.run(trial)
        _say(f"LoRA bf16 base / fp32 base: {results['precision'].get('lora_bf16_base_over_fp32_base', 'skipped')}")
    if "search" in parts:
        _step(f"3/4 search efficiency: replaying {args.seeds} seeds per search on {record.TABLE}")
        from search_spaces.loader import load_space

        table = record.load_table()
        results["search"] = replay.replay(table, load_space(record.GRID), args.seeds, asha_settings(trial),
                                          **search_settings(trial))
        results["search"]["grid_size"] = len(record.grid_configs())
        found = results["search"]
        _say(f"cost ratio vs random {found['cost_ratio_vs_random']}, decision agreement "
             f"{found['decision_agreement']}, regret {found['regret']}")
    if "planner" in parts:
        _step("planner accuracy: the recorded trials, a smoke sweep, and the default sweep's trials above")
        from bench import planner_accuracy

        with tempfile.TemporaryDirectory(prefix="sweepboard-bench-plan-") as tmp:
            planner_accuracy.run_smoke(Path(tmp), calibration)
        rows = planner_accuracy.recorded_rows() + planner_accuracy.sweep_rows(calibration)
        results["planner"] = planner_accuracy.summary(rows)
        _say(f"median |error| {results['planner']['median_abs_error']}, worst {results['planner']['worst_abs_error']}"
             f" over {results['planner']['trials']} trials")  # fmt: skip
    if "gpu" in parts:
        gpu = HERE / "gpu_results.json"
        results["gpu"] = json.loads(gpu.read_text()) if gpu.is_file() else {
            "available": False, "note": "no GPU measurement recorded (bench/gpu.py on a CUDA machine writes it)"}  # fmt: skip
    results["goals"] = goals(results)
    results["meta"]["bench_seconds"] = time.perf_counter() - started
    if earlier:
        rerun = {part: results["meta"]["date"] for part in sorted(parts)}
        results["meta"] = {**earlier, "rerun": {**earlier.get("rerun", {}), **rerun}}
    args.out.mkdir(parents=True, exist_ok=True)
    results = _finite(results)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    report = write_report(results, args.out)
    _step(f"wrote {out_json} and {report}")
    for key, verdict in results["goals"].items():
        _say(f"{key} = {_fmt(verdict['value'])} (goal {verdict['goal']}): {'met' if verdict['met'] else 'NOT met'}")
    return 0


def asha_settings(trial: dict[str, Any]) -> dict[str, Any]:
    """ASHA as the default sweep builds it (sweeps/tune_run.py): rungs counted in validation reports."""
    raw = yaml.safe_load((HERE.parent / "sweeps" / "configs" / "default.yaml").read_text())
    reports = math.ceil(int(trial["steps"]) / int(trial["eval_every"]))
    return {"max_t": reports + 2, "grace_period": int(raw.get("grace_period", 2)),
            "reduction_factor": float(raw.get("reduction_factor", 3))}  # fmt: skip


def search_settings(trial: dict[str, Any]) -> dict[str, Any]:
    """The default sweep's learning-rate priors (its model's width, its steps), its trial count and the
    steps it validates at (the replay reads the curve there)."""
    from sweeps import config as sweep_config
    from sweeps.tune_run import rate_priors

    cfg = sweep_config.load("default")
    steps, every = int(trial["steps"]), int(trial["eval_every"])
    return {"priors": rate_priors(cfg, steps) if cfg.rate_first else None, "max_trials": cfg.max_trials,
            "report_steps": tuple(sorted({*range(every, steps + 1, every), steps}))}  # fmt: skip


def goals(results: dict[str, Any]) -> dict[str, Any]:
    verdicts = {}
    for key, (op, goal) in GOALS.items():
        section, name = key.split(".")
        value = results.get(section, {}).get(name)
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        verdicts[key] = {"value": value, "goal": f"{op} {goal}", "met": met}
    return verdicts


def meta() -> dict[str, Any]:
    import torch

    from tracking.prices import detect_device

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE, check=False).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": detect_device().name if detect_device().kind == "cpu" else platform.processor(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> Any:
    """JSON has no infinity: a target never reached is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _step(text: str) -> None:
    print(f"\n== bench: {text}", flush=True)


def _say(text: str) -> None:
    print(f"   {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
