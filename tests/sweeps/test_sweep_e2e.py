"""Whole sweeps through the CLI, as a user runs them: real Ray Tune, real MLflow (SQLite), tiny model.

Each sweep runs in its own process and folder, so Ray and MLflow state never leak between tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from tracking import names

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "configs" / "smoke.yaml"
pytestmark = pytest.mark.slow


def refused_port() -> int:
    """A local port no server answers on, held for this process's life so nothing else can take it: bound
    but never listening, so connecting is refused (instead of a fixed number such as 9, which may serve)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])


_HELD: list[socket.socket] = []
REFUSED_PORT = refused_port()


def sweep_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        SWEEPBOARD_CACHE=str(REPO / ".cache"),  # the tiny model is built once and shared
        PYTHONUNBUFFERED="1",
        RAY_DEDUP_LOGS="0",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def kill_node(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a driver started with start_new_session and every process of its session. Ray's workers run
    in process groups of their own (so a kill of the driver's group alone leaves a trial training on for a
    moment, and reporting into the sweep's folder or bucket after the driver is gone), but stay in its
    session: this is the node dying, the case a kill -9 test is about."""
    session = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _sid(int(pid)) == proc.pid]
    for pid in {proc.pid, *session}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def sweepboard(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sweeps.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def smoke_config(tmp_path: Path, name: str, **changes: Any) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    trial = raw["trial"]
    trial.update(changes.pop("trial", {}))
    raw.update(changes, name=name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def runs_of(tmp_path: Path, sweep: str) -> list[Any]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep)
    assert experiment is not None, f"no MLflow experiment {sweep}"
    return client.search_runs([experiment.experiment_id], max_results=1000)


def children(runs: list[Any]) -> list[Any]:
    return [r for r in runs if r.data.tags.get(names.TAG_ROLE) in ("trial", "baseline")]


def first_trial_projections(cfg: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """What the sweep's admission should project for each method's first trial, and the plans behind it."""
    from sweeps import config as sweep_config
    from sweeps.sweep import _load_space, _plan, _quote, first_trial_costs

    loaded = sweep_config.load(str(cfg))
    plans = _plan(loaded, _load_space(loaded.space))
    return first_trial_costs(loaded, _quote(loaded), plans), plans


def assert_calibrated(tmp_path: Path, cfg: Path, finished: list[Any], before: dict[str, Any]) -> None:
    """Every trial that ran all its steps left its measured over planned seconds, and the next plan uses them."""
    from tracking import calibration

    entries = calibration.load()
    finished_ids = {r.data.tags[names.TAG_TRIAL_ID] for r in finished}
    assert {e["trial_id"] for e in entries} == finished_ids and len(entries) == len(finished_ids)
    for e in entries:
        assert e["device"].startswith("cpu|") and set(e["factors"]) == set(calibration.PHASES)
        assert all(f > 0 for f in e["factors"].values())
    after = sweepboard(tmp_path, "plan", "--config", str(cfg), "--format", "json")
    assert after.returncode == 0, after.stderr[-2000:]
    for method, plan in json.loads(after.stdout)["methods"].items():
        mine = [e for e in entries if e["method"] == method]
        assert plan["calibrated_on_trials"] == len(mine)
        if mine:  # the built-in plan of each phase, times the median factor this machine measured
            for phase in calibration.PHASES:
                factor = statistics.median(e["factors"][phase] for e in mine)
                assert plan["seconds"][phase] == pytest.approx(before[method]["seconds"][phase] * factor, rel=0.01,
                                                               abs=2e-3)  # fmt: skip


def test_smoke_sweep_logs_one_run_per_trial_and_writes_the_board(tmp_path: Path) -> None:
    # Full fine-tuning reserves 2 CPUs, the others 1: each trial is charged its own method's reservation.
    cfg = smoke_config(tmp_path, "e2e", resources={"default": {"cpus": 1, "gpus": 0}, "full": {"cpus": 2}})
    planned, plans = first_trial_projections(cfg)  # before any trial: the built-in rates
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "budget" in done.stdout and "Leaderboard" in done.stdout and "make ui" in done.stdout
    banner = " ".join(done.stdout.split())
    assert "price lora $0.045/h for 1 vCPU" in banner and "price full $0.09/h for 2 vCPU" in banner
    assert "plan full fits" in banner and "built-in rates, not yet calibrated here" in banner
    # Admission: each method's first trial was projected from the plan at its price.
    ledger = json.loads((tmp_path / "runs" / "sweeps" / "e2e" / "budget.json").read_text())
    assert ledger["estimates"] == pytest.approx(planned, rel=1e-9)

    runs = runs_of(tmp_path, "e2e")
    parents = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    assert len(parents) == 1
    kids = children(runs)
    trials = [r for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]
    baselines = [r for r in kids if r.data.tags[names.TAG_ROLE] == "baseline"]
    assert len(baselines) == 1 and baselines[0].data.params["method"] == "none"
    assert len(trials) == 4
    trial_ids = [r.data.tags[names.TAG_TRIAL_ID] for r in trials]
    assert len(set(trial_ids)) == len(trial_ids)  # never two runs for one trial
    lock = json.loads((REPO / ".cache" / "locks").glob("dates-n300-*").__next__().joinpath("manifest.json")
                      .read_text())  # fmt: skip
    for run in kids:
        tags = run.data.tags
        assert tags[names.TAG_PARENT] == parents[0].info.run_id
        assert tags[names.TAG_SWEEP] == "e2e"
        assert tags[names.TAG_STATUS] in ("finished", "pruned", "stopped")
        assert tags[names.TAG_TEST_SHA] == lock["sha256"]
        assert tags[names.TAG_METHOD] == run.data.params["method"]
        assert run.data.metrics["cost_usd"] > 0
    priced = {r.data.params["method"]: r.data.metrics["cost_usd"] * 3600 / r.data.metrics["wall_seconds"]
              for r in trials if r.data.metrics.get("wall_seconds")}  # fmt: skip
    # Seconds x the method's price: 1 or 2 vCPU at $0.045 (a pruned trial logs no wall_seconds).
    assert "lora" in priced and len(priced) >= 2, priced
    assert priced == pytest.approx({m: (2 if m == "full" else 1) * 0.045 for m in priced})
    finished = [r for r in trials if r.data.tags[names.TAG_STATUS] == "finished"]
    assert finished, "no trial reached its final test evaluation"
    for run in finished:
        assert 0 <= run.data.metrics["test_quality"] <= 1 and run.data.metrics["n_test"] == 40
        assert_one_final_model(tmp_path / "runs" / "sweeps" / "e2e" / f"trial_{run.data.tags[names.TAG_TRIAL_ID]}",
                               run.data.params["method"])  # fmt: skip
    # One copy of each checkpoint: what Tune keeps of a training checkpoint is its state.json, never the
    # weights, and a trial pruned (or stopped) before its test evaluation loses its training state when it
    # ends. So no training state is left anywhere in the sweep.
    sweep_dir = tmp_path / "runs" / "sweeps" / "e2e"
    assert not sorted(sweep_dir.rglob("*.pt")), sorted(map(str, sweep_dir.rglob("*.pt")))
    kept = [d for d in sweep_dir.rglob("checkpoint_0*") if d.is_dir()]
    assert kept and all({f.name for f in d.iterdir()} <= {"state.json", "metrics.json", "test_predictions.jsonl",
                                                           "adapter"} for d in kept)  # fmt: skip
    # The production default (r8 in the smoke space) first, then every other method measured.
    # (Two trials start together at concurrency 2, so "first" is checked by content, not by start time.)
    defaults = [r for r in trials if r.data.params["method"] == "lora" and r.data.params["rank"] == "8"
                and float(r.data.params["learning_rate"]) == 2e-4]  # fmt: skip
    assert defaults, "the production-default point was not evaluated"
    assert {r.data.params["method"] for r in trials} == {"lora", "qlora", "full"}
    # The books close: the parent's spend is the baseline plus every trial, pruned ones included.
    spent = parents[0].data.metrics["spent_usd"]
    assert spent == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-6)
    assert spent <= 5
    board = tmp_path / "runs" / "sweeps" / "e2e" / "leaderboard"
    for fmt in ("csv", "json", "md", "html"):
        assert (board / f"leaderboard.{fmt}").stat().st_size > 0
    exported = json.loads((board / "leaderboard.json").read_text())
    rows = exported["rows"]
    assert len(rows) == 5
    # The decision's evidence as data: each group's learning-rate bracket over the runs it tried, with the
    # family the ladder held fixed (the smoke default's for adapters) and the scores it compared.
    brackets = exported["decision"]["brackets"]
    assert set(brackets) == {"adapter", "full"} and brackets["adapter"] is not None
    adapter = brackets["adapter"]
    assert adapter["family"] == {"method": "lora", "rank": 8, "alpha": 16, "target_modules": "attention",
                                 "lora_dropout": 0.05}  # fmt: skip
    tried = {float(r) for r in adapter["rates"]}
    assert 2e-4 in tried and adapter["best_rate"] in tried and isinstance(adapter["bracketed"], bool)
    assert "adapter_rate_bracketed" in exported["decision"]["escalation_conditions"]
    assert_calibrated(tmp_path, cfg, finished, plans)

    # The same name again: refused, nothing overwritten, no new runs.
    again = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert (
        again.returncode == 2 and "already exists" in again.stderr and "make resume NAME=e2e" in again.stderr
    )
    assert len(runs_of(tmp_path, "e2e")) == len(runs)


def assert_one_final_model(folder: Path, method: str) -> None:
    """What a finished trial leaves on disk: no training state (trainable weights, optimizer), its final
    model once (a full fine-tuning model as one safetensors folder with its tokenizer, not logged to
    MLflow), and nothing much else."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert not [f for f in files if f.suffix == ".pt"], f"training state left in {folder}"
    weights = [f for f in files if f.suffix == ".safetensors"]
    if method == "full":
        assert [f.relative_to(folder) for f in weights] == [Path("work/model/model.safetensors")]
        assert (folder / "work" / "model" / "config.json").is_file()
        assert (folder / "work" / "model" / "tokenizer_config.json").is_file()
    else:  # the adapter: in the trial's work/ folder and in the final checkpoint that MLflow logs it from
        assert len(weights) == 2 and all(f.parent.name == "adapter" for f in weights)
    shipped = folder / "work" / ("model" if method == "full" else "adapter")
    model_bytes = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())  # weights and tokenizer
    assert sum(f.stat().st_size for f in files) < 1.1 * model_bytes + 2**20, sorted(map(str, files))


@pytest.mark.parametrize("price", [60.0, 100.0])
def test_budget_is_never_exceeded_and_admission_stops_new_trials(tmp_path: Path, price: float) -> None:
    # $0.30 buys 18 s (at $60/h) or 11 s (at $100/h) of trial time: a smoke trial takes 4-20 s (a quiet or a
    # busy machine) and the baseline 2-10 s, so the budget, never max_trials, ends the sweep.
    budget = 0.3
    cfg = smoke_config(tmp_path, "tight", max_trials=8, concurrency=1, estimate_trial_seconds=5)
    done = sweepboard(tmp_path, "sweep", "--budget", str(budget), "--config", str(cfg), "--price-per-hour",
                      str(price))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kids = children(runs_of(tmp_path, "tight"))
    spent = sum(r.data.metrics.get("cost_usd", 0.0) for r in kids)
    longest = max(r.data.metrics.get("wall_seconds", 0.0) for r in kids)
    # Tolerance from the contract: one report interval of the running trial (a trial's length bounds it).
    assert spent <= budget + price * longest / 3600 / 3
    assert len([r for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]) < 8
    ledger = json.loads((tmp_path / "runs" / "sweeps" / "tight" / "budget.json").read_text())
    assert ledger["ended_because"].startswith("the budget"), ledger["ended_because"]


def results_of(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Per trial id, every result Ray recorded for it (its result.json), in order."""
    from sweeps.reconcile import read_results  # skips a line the driver is still writing

    return {folder.name.removeprefix("trial_"): read_results(folder / "result.json")
            for folder in root.glob("trial_*") if (folder / "result.json").is_file()}  # fmt: skip


def test_killed_driver_one_resume_takes_over_within_a_binding_budget_and_one_spent_figure(
    tmp_path: Path,
) -> None:
    # $1 per trial-second. Measured on 2 busy cores: the baseline $9, a 30-step trial $6-8, the interrupted
    # one $14 (two start-ups), so $45 pays for the baseline and 2-3 trials; a machine 2x faster runs about
    # 7, still far from max_trials 20. grace_period past the last report: no pruning, so only the budget
    # ends the sweep early.
    budget, price, steps, every, max_trials = 45.0, 3600.0, 30, 3, 20
    cfg = smoke_config(tmp_path, "crash", max_trials=max_trials, concurrency=1, estimate_trial_seconds=20,
                       grace_period=12, trial={"steps": steps, "eval_every": every})  # fmt: skip
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", str(budget), "--config", str(cfg),
           "--price-per-hour", str(price)]  # fmt: skip
    # The first driver's trials hold after their first training report (a fault drill the resume does not
    # set), so the kill lands mid-trial however fast or busy the machine is.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**sweep_env(tmp_path), "SWEEPBOARD_FAULT": f"pause@step={every + 1}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    root = tmp_path / "runs" / "sweeps" / "crash"
    host = socket.gethostname()
    try:
        wait_until(lambda: (root / "sweepboard.json").is_file(), proc)
        # While it lives: a second driver of the same sweep is refused before anything is spent.
        second = sweepboard(tmp_path, "resume", "crash", timeout=300)
        assert second.returncode == 2 and f"pid {proc.pid} on host {host}" in second.stderr, second.stderr
        again = sweepboard(tmp_path, "sweep", "--budget", str(budget), "--config", str(cfg), timeout=300)
        assert again.returncode == 2 and f"it is running now (pid {proc.pid} on host {host}" in again.stderr
        # Kill once the driver has recorded a trial's first training report (its checkpoint is written by
        # the trial itself, a moment before).
        wait_until(lambda: any(r.get("phase") == "train" for rs in results_of(root).values() for r in rs), proc)
    finally:
        kill_node(proc)  # the driver and everything it started, mid-trial
    before = results_of(root)
    interrupted = [t for t, results in before.items() if results]
    assert len(interrupted) == 1, before
    trial = interrupted[0]
    reported = [r["step"] for r in before[trial] if "step" in r]
    # It really was interrupted: it had reported some steps, not all, and no final result.
    assert reported and max(reported) < steps and all(r.get("phase") != "final" for r in before[trial])

    # Two resumes at once: exactly one drives, taking over the dead driver's lock; the other is refused.
    resumes = [subprocess.Popen([sys.executable, "-m", "sweeps.cli", "resume", "crash"], cwd=tmp_path,
                                env=sweep_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=900) for p in resumes]
    codes = sorted(p.returncode for p in resumes)
    assert codes == [0, 2], [out[1][-3000:] for out in outputs]
    winner = next(i for i, p in enumerate(resumes) if p.returncode == 0)
    stdout, stderr = outputs[winner]
    assert f"taking over sweep 'crash' from a driver that is gone (pid {proc.pid} on host {host}" in stderr
    refused = outputs[1 - winner][1]
    assert f"pid {resumes[winner].pid} on host {host}" in refused and "one driver per sweep" in refused

    # The budget ended the sweep, not max_trials, and it was kept (tolerance: one report interval).
    ledger = json.loads((root / "budget.json").read_text())
    assert ledger["ended_because"].startswith("the budget"), ledger["ended_because"]
    assert "no more trials: the budget" in stdout
    after = results_of(root)
    assert 1 <= len(after) < max_trials
    # One report interval: the dearest step between two training reports of one driver's attempt.
    attempts = [*before.values(), *(results[len(before.get(t, [])):] for t, results in after.items())]
    interval = max(b["cost_usd"] - a["cost_usd"] for results in attempts
                   for a, b in zip(results, results[1:], strict=False)
                   if a.get("phase") == b.get("phase") == "train")  # fmt: skip
    assert ledger["spent_usd"] <= budget + interval

    # The interrupted trial went on from its checkpoint: the step it resumed from is the next it reports
    # after, no step is reported twice, and its tokens are those of the same steps in another trial.
    resumed_from = int(re.findall(r"resuming from step (\d+)", (root / f"trial_{trial}" / "trial.log").read_text())[-1])
    assert max(reported) <= resumed_from < steps
    later = [r for r in after[trial][len(before[trial]):] if "step" in r and r.get("phase") != "final"]
    assert later and later[0]["step"] == resumed_from + every
    training = [r for r in after[trial] if "step" in r and r.get("phase") != "final"]
    assert [r["step"] for r in training] == sorted({r["step"] for r in training})
    tokens = {r["step"]: r["tokens_trained"] for results in after.values() for r in results
              if "tokens_trained" in r and r.get("phase") != "final"}  # fmt: skip
    assert all(r["tokens_trained"] == tokens[r["step"]] for r in training)

    # One MLflow run per trial; one spent figure: ledger == parent's spent_usd == sync == sum of the runs.
    runs = runs_of(tmp_path, "crash")
    kids = children(runs)
    trial_ids = [r.data.tags[names.TAG_TRIAL_ID] for r in kids if r.data.tags[names.TAG_ROLE] == "trial"]
    assert sorted(trial_ids) == sorted(after)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = next(r for r in kids if r.data.tags[names.TAG_TRIAL_ID] == trial)
    curve = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert curve == sorted(set(curve)), f"steps logged twice after resume: {curve}"
    parent = next(r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep")
    spent = parent.data.metrics["spent_usd"]
    assert spent == pytest.approx(ledger["spent_usd"], rel=1e-9)
    assert spent == pytest.approx(sum(r.data.metrics["cost_usd"] for r in kids), rel=1e-9)
    synced = sweepboard(tmp_path, "sync", "crash")
    assert synced.returncode == 0, synced.stdout[-3000:] + synced.stderr[-3000:]
    assert float(re.findall(r"spent \$([0-9.]+)", synced.stdout)[-1]) == pytest.approx(spent, abs=5e-5)
    history = client.get_metric_history(parent.info.run_id, "spent_usd")
    assert [m.value for m in history] == [spent]  # sync had no other figure to write


def wait_until(ready: Any, proc: subprocess.Popen[Any], timeout_s: float = 600) -> None:
    """Poll `ready` while the driver runs (a generous safety deadline, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"the driver ended early (exit {proc.returncode})"
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "-3"], "budget"),
        (["--budget", "abc"], "budget"),
        (["--budget", "0"], "budget"),
        (["--budget", "5", "--space", "no-such-space"], "no-such-space"),
        (["--budget", "5", "--max-trials", "0"], "max_trials"),
        (["--budget", "5", "--tracking-uri", f"http://127.0.0.1:{REFUSED_PORT}/"], f"127.0.0.1:{REFUSED_PORT}"),
    ],
)
def test_bad_input_fails_before_ray_starts(tmp_path: Path, args: list[str], message: str) -> None:
    done = sweepboard(tmp_path, "sweep", "--config", "smoke", *args, timeout=600)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing written half-way


def test_unknown_sweep_to_resume_is_named(tmp_path: Path) -> None:
    done = sweepboard(tmp_path, "resume", "nope", timeout=120)
    assert done.returncode == 2 and "nope" in done.stderr and "make sweep" in done.stderr
