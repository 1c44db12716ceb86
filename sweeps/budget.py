"""The budget of a sweep in US dollars: a ledger of what trials cost, admission of new trials, and the
signal that tells running trials to stop training and evaluate when the money runs out.

Wiring (one ledger object shared by all three, so nothing is counted twice):
    ledger = BudgetLedger(budget, estimate_usd=..., reserve_usd=..., path=run_dir / "budget.json")
    TuneConfig(search_alg=BudgetSearcher(searcher, ledger, max_trials), num_samples=max_trials)
    RunConfig(stop=BudgetStopper(ledger, sweep), callbacks=[BudgetSync(ledger, sweep), ...])
Costs are per-trial "last cost_usd seen", so the stopper, the searcher and the sync callback may all
record the same result: recording is idempotent. On Tuner.restore the ledger comes back from Tune's
searcher state, merged with its own file (saved on every finished trial, so often newer) and with the
restored trials' last results; every unpickled copy of it in a process is the same object.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback, Stopper
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from tracking.prices import PriceQuote

NAMESPACE = "sweepboard"
BUDGET_EXAMPLE = "pass e.g. --budget 30"
_SIGNALS: dict[str, Any] = {}  # sweep -> actor handle, per process (one lookup per trial worker)
_ABSENT_UNTIL: dict[str, float] = {}  # sweep -> monotonic time before which we do not look again
_LEDGERS: dict[str, BudgetLedger] = {}  # ledger uid -> its one instance in this process


class BudgetError(ValueError):
    """A budget that cannot be used: missing, not a positive amount, or too small for one trial."""


def usd(amount: float) -> str:
    """Dollars for people: cents, or two significant digits below a cent (CPU trials cost that little)."""
    if amount == 0 or abs(amount) >= 0.01 or not math.isfinite(amount):
        return f"${amount:,.2f}"
    return f"${amount:.{1 - math.floor(math.log10(abs(amount)))}f}"


def validate_budget(value: object) -> float:
    """The budget as a positive, finite float; a BudgetError naming the bad value and the fix otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BudgetError(f"--budget is required, in US dollars: {BUDGET_EXAMPLE}")
    amount = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):  # stays NaN, refused below with the same message
            amount = float(value.strip().removeprefix("$").replace(",", ""))
    if not (math.isfinite(amount) and amount > 0):
        raise BudgetError(
            f"--budget must be a positive number of US dollars, got {str(value)!r}: {BUDGET_EXAMPLE}"
        )
    return amount


def check_affordable(budget_usd: float, projected_trial_usd: float, quote: PriceQuote | None = None) -> None:
    """Refuse a sweep whose budget cannot pay for even one trial, before anything is spent."""
    if budget_usd < projected_trial_usd:
        price = f" at {usd(quote.usd_per_hour)}/h" if quote is not None else ""
        raise BudgetError(
            f"budget {usd(budget_usd)} is below one trial's projected cost "
            f"{usd(projected_trial_usd)}{price}: raise --budget or lower steps"
        )


def signal_name(sweep_name: str) -> str:
    return f"sweepboard-budget-{sweep_name}"


class _BudgetSignal:
    """Holds one flag the trials poll; it lives as long as the driver that created it (not detached)."""

    def __init__(self) -> None:
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop

    def request_stop(self) -> None:
        self.stop = True


BudgetSignal = ray.remote(num_cpus=0)(_BudgetSignal)  # no CPU: it must not take a trial's slot


def open_budget_signal(sweep_name: str) -> Any:
    """The sweep's signal actor, created on first use (call from the driver, after ray.init).

    The handle is kept for the life of the process: Ray destroys a non-detached actor, named or not,
    as soon as no handle to it is left, and trials would then find no signal.
    """
    if sweep_name not in _SIGNALS:
        options = {"name": signal_name(sweep_name), "namespace": NAMESPACE, "get_if_exists": True}
        _SIGNALS[sweep_name] = BudgetSignal.options(**options).remote()
    return _SIGNALS[sweep_name]


def trial_should_stop(sweep_name: str) -> bool:
    """For the trial wrapper, at each report: has the sweep run out of money for training?

    False outside Ray (a standalone trial) and while the actor is absent; a missing actor is looked up
    again only every 10 s, so a sweep without a signal costs nothing per report.
    """
    if not ray.is_initialized():
        return False
    handle = _SIGNALS.get(sweep_name)
    if handle is None:
        if time.monotonic() < _ABSENT_UNTIL.get(sweep_name, 0.0):
            return False
        try:
            handle = ray.get_actor(signal_name(sweep_name), namespace=NAMESPACE)
        except ValueError:
            _ABSENT_UNTIL[sweep_name] = time.monotonic() + 10.0
            return False
        _SIGNALS[sweep_name] = handle
    try:
        return bool(ray.get(handle.should_stop.remote(), timeout=10))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        _SIGNALS.pop(sweep_name, None)  # the driver went away or restarted: look it up afresh next time
        return False


def result_cost(result: Mapping[str, Any] | None) -> float | None:
    """cost_usd of a Tune result, or None when the result carries none (e.g. Tune's own done marker)."""
    value = (result or {}).get("cost_usd")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return None


class BudgetLedger:
    """What each trial has cost, and whether one more trial fits in what is left.

    Per trial: `cost` (the last cost_usd it reported), `carried`, `step` (its last report interval's
    cost), `finished`, `final` (it reached its final evaluation, i.e. was not pruned) and `restart`.
    A restarted trial (a retried worker, a resumed sweep) reports a lower cost_usd than before, whether
    it counts from zero or from its checkpoint; the drop was spent by the lost attempt and is kept in
    `carried`. Either way the ledger then misses at most the new attempt's first report interval and
    never counts anything twice.
    """

    def __init__(
        self,
        budget_usd: float,
        estimate_usd: float,
        reserve_usd: float = 0.0,
        path: str | Path | None = None,
    ) -> None:
        self.budget_usd = validate_budget(budget_usd)
        if not (math.isfinite(estimate_usd) and estimate_usd > 0):
            raise BudgetError(f"estimate_usd: {estimate_usd!r}: give a positive projected cost of one trial")
        if not (math.isfinite(reserve_usd) and reserve_usd >= 0):
            raise BudgetError(f"reserve_usd: {reserve_usd!r}: give one final evaluation's cost, >= 0")
        self.estimate_usd = float(estimate_usd)
        self.reserve_usd = float(reserve_usd)
        self.path = str(path) if path is not None else None
        self.stop_requested = False
        self.trials: dict[str, dict[str, Any]] = {}
        self._saved_at = 0.0
        self.uid = uuid.uuid4().hex
        _LEDGERS[self.uid] = self

    def open(self, trial_id: str) -> None:
        """An admitted trial: it holds its projected cost from now on, before its first report."""
        entry = {"cost": 0.0, "carried": 0.0, "step": 0.0, "finished": False, "final": False}
        self.trials.setdefault(trial_id, entry)

    def record(
        self, trial_id: str, cost_usd: float | None, finished: bool = False, final: bool = False
    ) -> None:
        self.open(trial_id)
        entry = self.trials[trial_id]
        if cost_usd is not None:
            if cost_usd < entry["cost"]:
                entry["carried"] += entry["cost"] - cost_usd
            elif cost_usd > entry["cost"]:
                entry["step"] = cost_usd - entry["cost"]  # one report interval, for the stop margin
            entry["cost"] = float(cost_usd)
            entry["restart"] = False
        entry["finished"] = entry["finished"] or finished
        entry["final"] = entry["final"] or final
        self._autosave(force=finished)

    def restarting(self, trial_id: str) -> None:
        """The trial starts again (a retried worker, a resumed sweep): until it reports, it holds a
        whole projection, as it may start from zero."""
        self.open(trial_id)
        self.trials[trial_id]["restart"] = True

    def trial_cost(self, trial_id: str) -> float:
        entry = self.trials.get(trial_id)
        return entry["cost"] + entry["carried"] if entry else 0.0

    def spent(self) -> float:
        return sum(self.trial_cost(trial_id) for trial_id in self.trials)

    def running(self) -> list[str]:
        return [trial_id for trial_id, entry in self.trials.items() if not entry["finished"]]

    def projected_trial_cost(self) -> float:
        """What the next trial is expected to cost, erring high: the dearest trial that ran to its end,
        or, before one has, the sweep's estimate. Pruned trials and running ones only ever raise it."""
        complete = [self.trial_cost(t) for t, e in self.trials.items() if e["final"] and e["finished"]]
        others = [self.trial_cost(t) for t, e in self.trials.items() if not (e["final"] and e["finished"])]
        return max([*others, *(complete or [self.estimate_usd])])

    def held_for_running(self) -> float:
        """Money the running trials still need: what is left of their projection after their current
        attempt's progress, and never less than the reserve for their final evaluation (a trial past
        its projection still evaluates)."""
        projected = self.projected_trial_cost()
        held = 0.0
        for trial_id in self.running():
            entry = self.trials[trial_id]
            progress = 0.0 if entry.get("restart") else entry["cost"]
            held += max(projected - progress, self.reserve_usd)
        return held

    def remaining(self) -> float:
        return self.budget_usd - self.spent() - self.held_for_running()

    def admits(self) -> tuple[bool, str]:
        """Whether one more trial fits, and why not."""
        if self.stop_requested:
            return False, f"the budget {usd(self.budget_usd)} is used up; running trials are finishing"
        need = max(self.projected_trial_cost(), self.reserve_usd)
        remaining = self.remaining()
        if need > remaining:
            return False, (
                f"next trial's projected cost {usd(need)} exceeds what remains {usd(max(remaining, 0.0))} "
                f"of {usd(self.budget_usd)} (spent {usd(self.spent())}, held for "
                f"{len(self.running())} running trial(s) {usd(self.held_for_running())})"
            )
        return True, f"projected {usd(need)} fits in {usd(remaining)}"

    def training_must_stop(self) -> bool:
        """Spent plus, per running trial, one more report interval and its final evaluation has
        reached the budget. The interval because a trial sees the signal only after the step it is
        already training (the driver flips it while that step runs)."""
        margin = sum(self.reserve_usd + self.trials[t].get("step", 0.0) for t in self.running())
        return self.stop_requested or self.spent() + margin >= self.budget_usd

    def exhausted(self) -> bool:
        return self.spent() >= self.budget_usd

    def rebuild_from_trials(self, trials: Iterable[Any]) -> None:
        """Merge Ray's (restored) Trial objects, Tune's own record: per trial the larger cost wins.
        Whatever Tune will run again holds money again; a trial Tune does not know (admitted after its
        last checkpoint) will never run again, but what it spent stays spent."""
        known = set()
        for trial in trials:
            known.add(trial.trial_id)
            self.open(trial.trial_id)
            entry = self.trials[trial.trial_id]
            cost = result_cost(trial.last_result)
            if cost is not None and cost > self.trial_cost(trial.trial_id):
                entry["cost"] = cost - entry["carried"]
            entry["finished"] = trial.status in ("TERMINATED", "ERROR")
            entry["restart"] = not entry["finished"]  # Tune will start it again
            entry["final"] = entry["final"] or (trial.last_result or {}).get("phase") == "final"
        for trial_id, entry in self.trials.items():
            entry["finished"] = entry["finished"] or trial_id not in known
        self._autosave(force=True)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take in Tune's checkpoint of the ledger, then the ledger's own file, which is saved on every
        finished trial and so may be newer than Tune's checkpoint (written every few seconds at most).
        Merged, not replaced: a ledger that already knows more (a restore in the same process) keeps it."""
        self.budget_usd = validate_budget(state["budget_usd"])
        self.estimate_usd = float(state["estimate_usd"])
        self.reserve_usd = float(state["reserve_usd"])
        self.merge(state)
        if self.path and Path(self.path).exists():
            self.merge(json.loads(Path(self.path).read_text(encoding="utf-8")))

    def merge(self, state: Mapping[str, Any]) -> None:
        """Another record of the same sweep: per trial the larger total wins; a stop stays requested."""
        self.stop_requested = self.stop_requested or bool(state["stop_requested"])
        for trial_id, other in state["trials"].items():
            mine = self.trials.get(trial_id)
            if mine is None or other["cost"] + other["carried"] > mine["cost"] + mine["carried"]:
                flags = {k: bool(mine and mine[k]) or bool(other[k]) for k in ("finished", "final")}
                self.trials[trial_id] = {**dict(other), **flags}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "budget_usd": self.budget_usd,
            "estimate_usd": self.estimate_usd,
            "reserve_usd": self.reserve_usd,
            "stop_requested": self.stop_requested,
            "spent_usd": self.spent(),  # for people reading the file; recomputed on load
            "trials": {trial_id: dict(entry) for trial_id, entry in self.trials.items()},
        }

    def update_from_dict(self, state: Mapping[str, Any]) -> None:
        """Take over a saved state in place, so every holder of this ledger sees the restored one."""
        self.budget_usd = validate_budget(state["budget_usd"])
        self.estimate_usd = float(state["estimate_usd"])
        self.reserve_usd = float(state["reserve_usd"])
        self.stop_requested = bool(state["stop_requested"])
        self.trials = {str(k): dict(v) for k, v in state["trials"].items()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], path: str | Path | None = None) -> BudgetLedger:
        ledger = cls(state["budget_usd"], state["estimate_usd"], state["reserve_usd"], path)
        ledger.update_from_dict(state)
        return ledger

    def save(self, path: str | Path | None = None) -> None:
        """Write JSON atomically (temp file + os.replace): a crash leaves the old or the new file."""
        target = Path(path or self.path or "")
        if not str(target):
            raise ValueError("BudgetLedger.save: no path given and the ledger has none")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(self.to_dict(), file, indent=1, sort_keys=True)
        os.replace(tmp, target)
        self._saved_at = time.monotonic()

    @classmethod
    def load(cls, path: str | Path) -> BudgetLedger:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), path)

    def _autosave(self, force: bool) -> None:
        # Results arrive many times a second across trials; the file is for people and for a resume
        # fallback, so once a second is enough, plus every change that matters (finish, stop).
        if self.path and (force or time.monotonic() - self._saved_at >= 1.0):
            self.save()

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles the stopper into its experiment state apart from the searcher and callbacks,
        # and on restore puts that copy in place: unpickled, every copy must be the one ledger.
        return (_shared_ledger, (self.uid, {**self.__dict__, "_saved_at": 0.0}))


def _shared_ledger(uid: str, state: dict[str, Any]) -> BudgetLedger:
    """The process's instance of ledger `uid`; made from `state` only if there is none yet."""
    if uid not in _LEDGERS:
        ledger = BudgetLedger.__new__(BudgetLedger)
        ledger.__dict__.update(state)
        _LEDGERS[uid] = ledger
    return _LEDGERS[uid]


class BudgetSearcher(Searcher):
    """Admits a trial from the wrapped searcher only when its projected cost fits the ledger.

    Follows Ray's wrapper pattern (ConcurrencyLimiter, Repeater): the wrapped searcher is `.searcher`,
    so Tune's SearchGenerator saves our get_state() next to the base searcher's own checkpoint and
    hands it back through set_state() on Tuner.restore.
    """

    def __init__(self, searcher: Searcher, ledger: BudgetLedger, max_trials: int | None = None) -> None:
        if not isinstance(searcher, Searcher):
            raise TypeError(f"BudgetSearcher wraps a ray.tune.search.Searcher, got {type(searcher).__name__}")
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials: {max_trials!r}: give a positive number of trials, e.g. 20")
        self.searcher = searcher
        self.ledger = ledger
        self.max_trials = max_trials
        self.why_waiting = ""  # the last refusal, for the progress line and the final summary
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def metric(self) -> Any:
        return self.searcher.metric

    @property
    def mode(self) -> Any:
        return self.searcher.mode

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED
        if self.max_trials is not None and len(self.ledger.trials) >= self.max_trials:
            self.why_waiting = f"max_trials {self.max_trials} reached"
            return Searcher.FINISHED  # type: ignore[return-value]
        fits, why = self.ledger.admits()
        if not fits:
            self.why_waiting = why
            # Running trials may finish below their projection and free money; with none running and
            # nothing fitting, waiting cannot help.
            running = self.ledger.running() and not self.ledger.stop_requested
            return None if running else Searcher.FINISHED  # type: ignore[return-value]
        suggestion = self.searcher.suggest(trial_id)
        if isinstance(suggestion, dict):
            self.ledger.open(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.ledger.record(trial_id, result_cost(result), final=result.get("phase") == "final")
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        final = (result or {}).get("phase") == "final"
        self.ledger.record(trial_id, result_cost(result), finished=True, final=final)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return _set_search_properties_backwards_compatible(
            self.searcher.set_search_properties, metric, mode, config, **spec
        )

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def get_state(self) -> dict[str, Any]:
        return {"ledger": self.ledger.to_dict(), "max_trials": self.max_trials}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ledger.restore(state["ledger"])
        self.max_trials = state["max_trials"]

    def save(self, checkpoint_path: str) -> None:
        # Tune itself saves the base searcher and calls get_state() on wrappers; this is for manual use.
        self.searcher.save(checkpoint_path)
        self.ledger.save(checkpoint_path + ".budget.json")

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
        sidecar = Path(checkpoint_path + ".budget.json")
        if sidecar.exists():
            self.ledger.restore(json.loads(sidecar.read_text(encoding="utf-8")))


class BudgetStopper(Stopper):
    """Tells running trials to stop training once the ledger reaches the budget minus their final
    evaluations; stops the whole experiment if spending reaches the budget itself (the backstop)."""

    def __init__(self, ledger: BudgetLedger, sweep_name: str) -> None:
        self.ledger = ledger
        self.sweep_name = sweep_name
        self._signal: Any = None  # actor handle: per driver process, never pickled
        self._signalled = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        final = result.get("phase") == "final"
        self.ledger.record(trial_id, result_cost(result), final=final)
        if self.ledger.training_must_stop():
            self.signal_stop()
        return False

    def signal_stop(self) -> None:
        if self._signalled:
            return
        self.ledger.stop_requested = True
        self.ledger._autosave(force=True)
        if self._signal is None:
            self._signal = open_budget_signal(self.sweep_name)
        # Wait for it: Tune resumes the trial right after this result, and its next poll must see it.
        ray.get(self._signal.request_stop.remote(), timeout=30)
        self._signalled = True

    def stop_all(self) -> bool:
        return self.ledger.exhausted()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_signal": None, "_signalled": False}


class BudgetSync(Callback):
    """Creates the signal actor at the start of a run; on the first step (after a restore) and at the
    end merges the trials' last results and status into the ledger; marks retried trials restarting."""

    def __init__(self, ledger: BudgetLedger, sweep_name: str) -> None:
        self.ledger = ledger
        self.sweep_name = sweep_name
        self._synced = False

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        open_budget_signal(self.sweep_name)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._synced:
            self.ledger.rebuild_from_trials(trials)
            self._synced = True

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ledger.restarting(trial.trial_id)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # Stopping all (the backstop) ends trials without telling the searcher: take their status here.
        self.ledger.rebuild_from_trials(trials)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_synced": False}
