"""planner.median_abs_error / worst_abs_error: the plan's trial cost against the measured one.

A trial's cost is its wall seconds x the price of what it reserved, and the plan prices the same reservation,
so the relative error of the cost is that of the wall time. Planned here with the built-in rates alone (what a
machine without calibration gets, and what the calibration's factors are measured against), over:
- the 24 recorded SmolLM2-135M trials (bench/record/trials.jsonl, 1 thread, fp32): the rates were fitted on
  the quiet ones among them, so this part is in-sample;
- the trials of a smoke sweep (the 2-layer tiny model: seconds of Python overhead, not FLOPs) run here;
- the default sweep's trials, when the overhead part ran in the same bench run.
The sweeps' trials are read from the calibration file their driver wrote (each with its planned seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def recorded_rows() -> list[dict[str, Any]]:
    from bench.record import load_table
    from tracking import plan_model as pm
    from tracking import planner
    from tracking.prices import load_catalog
    from trainers import model as model_mod
    from trainers.config import from_dict
    from trainers.rows import load_rows

    cfg = from_dict({"model": "smollm2-135m"})
    shape = pm.shape_of(model_mod.config_of(model_mod.resolve(cfg), cfg), cfg.model)
    tokens, prompt = planner.measured_tokens(cfg, load_rows(cfg.data))
    cpu = planner.Device("cpu", "cpu", 24.0, 0.0, 0.0, False)  # they ran in fp32
    out = []
    for row in load_table():
        settings = {k: v for k, v in row["settings"].items() if k not in ("data", "model")}
        trial = from_dict(settings)
        final = row["final"]
        work = planner.Workload(trial, 2550, int(row["settings"]["data"]["val_size"]), int(final["n_test"]),
                                tokens, prompt)  # fmt: skip
        plan = planner.plan_method(shape, trial.method, work, cpu, 0, float(row.get("threads", 1)), load_catalog())
        out.append(_row("recorded", row["key"], sum(plan["seconds"].values()), final["wall_seconds"]))
    return out


def run_smoke(workdir: Path, calibration: Path) -> None:
    raw = yaml.safe_load((REPO / "sweeps" / "configs" / "smoke.yaml").read_text())
    raw.update(name="bench-planner", storage=str(workdir / "sweeps"), tracking_uri=f"sqlite:///{workdir / 'm.db'}")
    config = workdir / "smoke.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "SWEEPBOARD_CALIBRATION": str(calibration), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "1", "--config", str(config)],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def sweep_rows(calibration: Path) -> list[dict[str, Any]]:
    from tracking import calibration as cal

    names = {"builtin:tiny": "smoke sweep", "smollm2-135m": "default sweep"}
    return [_row(names.get(e.get("model", ""), str(e.get("model"))), f"{e['method']} {e['trial_id']}",
                 sum(e["planned_seconds"].values()), e["wall_seconds"])
            for e in cal.load(calibration) if e.get("planned_seconds")]  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(r["error"]) for r in rows]
    by_source: dict[str, list[float]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(abs(r["error"]))
    return {"median_abs_error": round(median(errors), 3), "worst_abs_error": round(max(errors), 3),
            "trials": len(rows),
            "by_source": {s: {"trials": len(v), "median_abs_error": round(median(v), 3),
                              "worst_abs_error": round(max(v), 3)} for s, v in by_source.items()},
            "rows": rows}  # fmt: skip


def _row(source: str, key: str, planned: float, measured: float) -> dict[str, Any]:
    return {"source": source, "trial": key, "planned_seconds": round(planned, 2),
            "measured_seconds": round(float(measured), 2), "error": round(planned / float(measured) - 1, 4)}  # fmt: skip
