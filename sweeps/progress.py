"""What a sweep shows while it runs: a start banner (budget, price, what it affords) and one live status
line (spend against budget, trials done/running/pruned/failed, best validation score).

The line is a Ray Tune Callback. It keeps no state of its own: every refresh recomputes the line from
Tune's trials and the budget ledger, so it is right again after Tuner.restore. On a terminal it is a
rich Live line redrawn at most once per `min_interval_s`; elsewhere (CI logs, files) it prints one
plain line whenever something a reader cares about changes, not on every result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sweeps.budget import BudgetLedger, result_cost, usd
from tracking.cost import affordable_seconds, device_hours
from tracking.prices import PriceQuote


@dataclass(frozen=True)
class Snapshot:
    spent_usd: float
    budget_usd: float
    done: int  # reached the final test evaluation
    running: int
    pending: int
    pruned: int  # stopped before the final report (by the scheduler or the budget backstop)
    failed: int
    best: float | None  # best validation score of any trial so far

    @property
    def fraction(self) -> float:
        return self.spent_usd / self.budget_usd if self.budget_usd > 0 else 0.0


def snapshot(
    trials: list[Any], budget_usd: float, ledger: BudgetLedger | None = None, baseline_cost: float = 0.0,
    metric: str = "val_quality", mode: str = "max",
) -> Snapshot:
    """The sweep's state from Tune's Trial objects; spending from the ledger when there is one (it also
    counts lost attempts), else from the trials' last reported cost_usd."""
    counts = {"done": 0, "running": 0, "pending": 0, "pruned": 0, "failed": 0}
    bests: list[float] = []
    for trial in trials:
        last = trial.last_result or {}
        if trial.status == "ERROR":
            counts["failed"] += 1
        elif trial.status == "TERMINATED":
            phase = last.get("phase")
            counts["done" if phase == "final" else "failed" if phase == "failed" else "pruned"] += 1
        elif trial.status == "PENDING":
            counts["pending"] += 1
        else:
            counts["running"] += 1  # RUNNING, PAUSED
        value = (trial.metric_analysis.get(metric) or {}).get(mode)
        if isinstance(value, (int, float)) and math.isfinite(value):
            bests.append(float(value))
    if ledger is not None:
        spent, budget = ledger.spent(), ledger.budget_usd
    else:
        spent, budget = sum(result_cost(t.last_result) or 0.0 for t in trials), budget_usd
    best = (max(bests) if mode == "max" else min(bests)) if bests else None
    return Snapshot(spent + baseline_cost, budget + baseline_cost, best=best, **counts)


def render_line(s: Snapshot, metric: str = "val_quality") -> str:
    best = f"{s.best:.4f}" if s.best is not None else "-"
    pending = f", {s.pending} waiting" if s.pending else ""
    return (
        f"spent {usd(s.spent_usd)} / {usd(s.budget_usd)} ({100 * s.fraction:.0f}%) | trials: {s.done} done, "
        f"{s.running} running{pending}, {s.pruned} pruned, {s.failed} failed | best {metric} {best}"
    )


def render(s: Snapshot, metric: str = "val_quality") -> Table:
    grid = Table.grid(padding=(0, 1))
    bar = ProgressBar(total=max(s.budget_usd, 1e-12), completed=min(s.spent_usd, s.budget_usd), width=24)
    grid.add_row(bar, Text(render_line(s, metric)))
    return grid


def print_start_banner(
    console: Console, budget_usd: float, quote: PriceQuote, projected_trial_cost: float,
    max_trials: int | None, per_method: Mapping[str, PriceQuote] | None = None,
    plans: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The resolved budget, the price it is spent at (and where that price comes from), and what it buys.
    `quote` is the dearest method's price, the one `projected_trial_cost` is at; `per_method` lists each;
    `plans` the plan of each method's trial (sweeps/plan_cli.py), which projects its first trial's cost."""
    seconds = affordable_seconds(budget_usd, quote)
    if quote.gpus > 0 or quote.cpus > 0:
        unit = "GPU-hours" if quote.gpus > 0 else "vCPU-hours"
        hours = f"{device_hours(seconds, quote.gpus, quote.cpus):,.1f} {unit}"
    else:
        hours = f"{seconds / 3600:,.1f} machine-hours"
    trials = math.floor(budget_usd / projected_trial_cost) if projected_trial_cost > 0 else 0
    cap = f"; max_trials {max_trials}, so up to {min(trials, max_trials)}" if max_trials else ""
    as_of = f", prices as of {quote.as_of}" if quote.as_of and quote.as_of != "override" else ""
    table = Table.grid(padding=(0, 2))
    table.add_row("budget", f"{usd(budget_usd)} (US dollars)")
    if per_method:
        for method, q in per_method.items():
            rate = usd(q.usd_per_hour) if q.usd_per_hour >= 0.1 else f"${q.usd_per_hour:.2g}"  # CPUs: $0.045
            table.add_row(f"price {method}", f"{rate}/h for {_reserved(q)} ({q.source}{as_of})")
            plan = (plans or {}).get(method) or {}
            if "status" in plan:
                table.add_row(f"plan {method}", plan_line(plan, q.usd_per_hour))
    else:
        table.add_row("price", f"{usd(quote.usd_per_hour)}/h ({quote.source}{as_of})")
    table.add_row(
        "affords", f"about {trials} trial(s) at {usd(projected_trial_cost)} projected each{cap}; {hours}"
    )
    console.print(table, highlight=False)


def plan_line(plan: Mapping[str, Any], usd_per_hour: float) -> str:
    seconds = sum(plan["seconds"].values())
    cost = usd_per_hour * seconds / 3600
    n = plan["calibrated_on_trials"]
    basis = f"calibrated on {n} finished trial(s) here" if n else "built-in rates, not yet calibrated here"
    return (f"{plan['status']} ({plan['memory_gb']:.3g} GB), {seconds:,.0f} s and "
            f"{usd(cost) if cost >= 0.01 else f'${cost:.2g}'} a trial, {plan['tokens_per_second']:,.0f} tokens/s "
            f"({basis})")


class SweepProgress(Callback):
    """The live status line of a sweep, as a Tune callback (pass it in RunConfig(callbacks=[...]))."""

    def __init__(
        self,
        console: Console | None = None,
        ledger: BudgetLedger | None = None,
        budget_usd: float | None = None,
        baseline_cost: float = 0.0,
        metric: str = "val_quality",
        mode: str = "max",
        min_interval_s: float = 1.0,
    ) -> None:
        if ledger is None and budget_usd is None:
            raise ValueError("SweepProgress needs the budget: pass ledger= or budget_usd=")
        self.ledger = ledger
        self.budget_usd = budget_usd if budget_usd is not None else 0.0
        self.baseline_cost = baseline_cost
        self.metric = metric
        self.mode = mode
        self.min_interval_s = min_interval_s
        self._console = console
        self._live: Live | None = None
        self._shown_at = -math.inf
        self._last_key: tuple[Any, ...] | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(highlight=False)
        return self._console

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:  # fmt: skip
        if self.console.is_terminal:
            self._live = Live(Text("starting trials..."), console=self.console, auto_refresh=False)
            self._live.start()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.show(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.show(trials, force=True)  # a finished trial is news worth the redraw

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.show(trials, force=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.show(trials, force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.ledger is not None:  # why the sweep ends here: the budget, max_trials, or all trials ran
            why = getattr(self.ledger, "ended_because", None) or f"all {len(trials)} trial(s) ran"
            self.console.print(f"no more trials: {why}", markup=False, highlight=False, soft_wrap=True)

    def show(self, trials: list[Any], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown_at < self.min_interval_s:
            return
        self._shown_at = now
        s = snapshot(trials, self.budget_usd, self.ledger, self.baseline_cost, self.metric, self.mode)
        if self._live is not None:
            self._live.update(render(s, self.metric), refresh=True)
            return
        # Plain output: a line only when counts, the best score or the spend's tenth of budget change.
        best = round(s.best, 4) if s.best is not None else None
        key = (s.done, s.running, s.pending, s.pruned, s.failed, best, math.floor(10 * s.fraction))
        if key != self._last_key:
            self._last_key = key
            self.console.print(render_line(s, self.metric), markup=False, highlight=False, soft_wrap=True)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into tuner.pkl; a Console holds locks and streams, a Live a thread.
        return {**self.__dict__, "_console": None, "_live": None, "_shown_at": -math.inf, "_last_key": None}


def _reserved(quote: PriceQuote) -> str:
    """What one trial of the method holds, as the price is made of it: "1 GPU (h100-sxm) + 2 vCPU"."""
    model = f" ({quote.device_key})" if quote.device_key not in ("override", "cpu") else ""
    gpus = f"{quote.gpus:g} GPU{model}" if quote.gpus else ""
    cpus = f"{quote.cpus:g} vCPU" if quote.cpus else ""
    return " + ".join(x for x in (gpus, cpus) if x) or "its resources"
