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

import json
import time
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback, Stopper
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from sweeps.ledger import (  # noqa: F401  re-exported: the sweep and tests import them from here
    _LEDGERS,
    BUDGET_EXAMPLE,
    BudgetError,
    BudgetLedger,
    _shared_ledger,
    result_cost,
    usd,
    validate_budget,
)

NAMESPACE = "sweepboard"
_SIGNALS: dict[str, Any] = {}  # sweep -> actor handle, per process (one lookup per trial worker)
_ABSENT_UNTIL: dict[str, float] = {}  # sweep -> monotonic time before which we do not look again


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
            self.ledger.ended_because = self.why_waiting
            return Searcher.FINISHED  # type: ignore[return-value]
        # The method is known only once the searcher has proposed, so a trial must fit at the dearest
        # method's projection; it then holds its own method's projection.
        fits, why = self.ledger.admits()
        if not fits:
            self.why_waiting = why
            # Running trials may finish below their projection and free money; with none running and
            # nothing fitting, waiting cannot help.
            if self.ledger.running() and not self.ledger.stop_requested:
                return None
            self.ledger.ended_because = f"the budget: {why}"
            return Searcher.FINISHED  # type: ignore[return-value]
        suggestion = self.searcher.suggest(trial_id)
        if isinstance(suggestion, dict):
            self.ledger.open(trial_id, suggestion.get("method"))
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
        if not self.ledger.exhausted():
            return False
        self.ledger.ended_because = (
            f"the budget: {usd(self.ledger.spent())} of {usd(self.ledger.budget_usd)} spent"
        )
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_signal": None, "_signalled": False}


class BudgetSync(Callback):
    """Creates the signal actor at the start of a run; on the first step (after a restore) and at the
    end merges the trials' last results and status into the ledger; marks retried trials restarting."""

    def __init__(self, ledger: BudgetLedger, sweep_name: str) -> None:
        self.ledger = ledger
        self.sweep_name = sweep_name
        self._synced = False

    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
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
