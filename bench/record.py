"""`make bench-record`: run every configuration of bench/grid.yaml once on the embedded default and keep
its results (validation curve, test score, cost) as data in bench/record/trials.jsonl.

The search benchmark replays searches against this table instead of training again, so it is recorded
once (hours on 2 CPU cores) and committed. Each trial runs in its own process (peak memory and torch's
threads stay per trial) with the trial settings of sweeps/configs/default.yaml, one at a time with every
core. The recording resumes: finished configurations are skipped, and an interrupted one continues from
its checkpoint under runs/bench-record/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GRID = HERE / "grid.yaml"
TABLE = HERE / "record" / "trials.jsonl"
WORK = Path("runs") / "bench-record"


def grid_configs(grid: Path = GRID) -> list[dict[str, Any]]:
    """The grid, the sweep's first points first and the rest in a fixed shuffled order: a recording cut
    short still holds the first points and a spread of every method."""
    from search_spaces.loader import load_space

    space = load_space(grid)
    first = [_from_point(space, point) for point in _first_points(space)]
    rest = [c for c in space.grid(1) if c not in first]
    random.Random(0).shuffle(rest)
    return first + rest


def config_key(config: dict[str, Any]) -> str:
    """A stable, readable name: lora-r16-a32-attention-lr2e-04."""
    lr = f"lr{float(config['learning_rate']):.0e}"
    if config["method"] == "full":
        return f"full-{lr}"
    return f"{config['method']}-r{config['rank']}-a{config['alpha']}-{config['target_modules']}-{lr}"


def trial_settings() -> dict[str, Any]:
    """The default sweep's fixed trial settings: the table is what the default sweep's trials would do."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "default.yaml").read_text())
    return dict(raw["trial"])


def load_table(path: Path = TABLE) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(grid: Path = GRID, table: Path = TABLE, limit: int | None = None, threads: int = 1) -> int:
    """Run what is missing. Several recorders may run at once (each claims a configuration first)."""
    done = {row["key"] for row in load_table(table)}
    todo = [c for c in grid_configs(grid) if config_key(c) not in done]
    if limit is not None:
        todo = todo[:limit]
    print(f"bench-record: {len(done)} recorded, {len(todo)} to run -> {table}", flush=True)
    table.parent.mkdir(parents=True, exist_ok=True)
    for i, config in enumerate(todo, 1):
        key = config_key(config)
        if key in {row["key"] for row in load_table(table)} or not _claim(WORK / key):
            continue  # another recorder has it
        started = time.time()
        print(f"[{i}/{len(todo)}] {key} ...", flush=True)
        result = WORK / key / "record.json"
        result.unlink(missing_ok=True)
        # A child process per trial: its peak memory and its threads are its own.
        cmd = [sys.executable, "-m", "bench.record", "--one", json.dumps(config), "--result", str(result),
               "--threads", str(threads)]  # fmt: skip
        code = subprocess.run(cmd, check=False).returncode
        (WORK / key / "claim").unlink(missing_ok=True)
        if code != 0 or not result.is_file():
            print(f"  {key} failed (exit {code}); it will run again next time", flush=True)
            continue
        row = json.loads(result.read_text())
        from filelock import FileLock

        with FileLock(str(table) + ".lock"), table.open("a") as f:
            f.write(json.dumps(row) + "\n")
        final = row["final"]
        print(
            f"  test {final['test_quality']:.3f}  val {final['val_quality']:.3f}  "
            f"${final['cost_usd']:.4f}  {time.time() - started:.0f} s",
            flush=True,
        )
    return 0


def _claim(folder: Path) -> bool:
    """Take a configuration for this recorder; a claim whose process is gone is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / "claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(claim.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            claim.unlink(missing_ok=True)
            return _claim(folder)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_one(config: dict[str, Any], result: Path, threads: int = 1) -> None:
    """One grid trial, its curve captured from the trial's own reports.

    Besides the trial's own cost (wall time x price), each point carries `cpu_cost_usd`: CPU seconds over
    threads x price, what the trial costs on a quiet machine. The replay uses it, so trials recorded while
    the machine was busy are not charged for the wait.
    """
    from trainers import run_trial

    key = config_key(config)
    chosen = {k: v for k, v in config.items() if v is not None}  # full fine-tuning has no adapter settings
    settings = {**trial_settings(), **chosen, "out": str(WORK / key), "threads": threads}
    saved = WORK / key / "curve.jsonl"
    # A trial resumed from its checkpoint: the CPU time of the process that trained up to it counts too.
    earlier = _curve(saved)
    spent_before = float(earlier[-1]["cpu_seconds"]) if earlier else 0.0

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> bool:
        # Written as it comes: a trial killed and resumed from its checkpoint reports only its later steps.
        point = {**_pick(metrics, CURVE_KEYS), "cpu_seconds": spent_before + _cpu_seconds()}
        with saved.open("a") as f:
            f.write(json.dumps(point) + "\n")
        return False

    metrics = run_trial(settings, report=report)
    per_cpu_second = float(metrics["usd_per_hour"]) / 3600 / threads
    curve = [{**p, "cpu_cost_usd": p["cpu_seconds"] * per_cpu_second} for p in _curve(saved)]
    cpu = spent_before + _cpu_seconds()
    row = {
        "key": key,
        "config": config,
        "settings": {k: v for k, v in settings.items() if k not in ("out", "threads")},
        "curve": curve,
        "final": {**_pick(metrics, FINAL_KEYS), "cpu_seconds": cpu, "cpu_cost_usd": cpu * per_cpu_second},
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threads": settings["threads"],
    }
    result.write_text(json.dumps(row))


CURVE_KEYS = ("step", "train_loss", "val_loss", "val_quality", "tokens_trained", "elapsed_seconds", "cost_usd")
FINAL_KEYS = (
    "test_quality", "val_quality", "val_loss", "steps_done", "wall_seconds", "load_seconds", "step_seconds",
    "validate_seconds", "test_seconds", "tokens_per_second", "peak_memory_mb", "weights_mb", "trainable_params",
    "adapter_mb", "cost_usd", "usd_per_hour", "device", "precision", "n_test",
)  # fmt: skip


def _pick(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: metrics[k] for k in keys if k in metrics}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _curve(saved: Path) -> list[dict[str, Any]]:
    """One point per step (a step reported again after a resume keeps its latest report)."""
    points = [json.loads(x) for x in saved.read_text().splitlines() if x.strip()] if saved.is_file() else []
    by_step = {int(p["step"]): p for p in points}
    return [by_step[s] for s in sorted(by_step)]


def _first_points(space: Any) -> list[dict[str, Any]]:
    from sweeps.search import first_points

    return first_points(space)


def _from_point(space: Any, point: dict[str, Any]) -> dict[str, Any]:
    """Optuna's "lora.rank" naming back to a flat trial config."""
    from search_spaces.space import to_config

    method = point.get("method") or space.method_names[0]
    values = {k.split(".", 1)[1]: v for k, v in point.items() if "." in k}
    for name, spec in space.methods[method].params.items():
        values.setdefault(name, getattr(spec, "value", None))
    return to_config(method, values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=GRID)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--limit", type=int, help="run at most this many configurations now")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trial (1: CPU time, hence cost, barely depends on machine load)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(json.loads(args.one), args.result, args.threads)
        return 0
    return record(args.grid, args.table, args.limit, args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
