"""The budget ledger: what each trial has cost and whether one more fits. No Ray here: the sweep's
Ray parts (admission searcher, stop signal, stopper, sync callback) live in sweeps/budget.py."""

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

BUDGET_EXAMPLE = "pass e.g. --budget 30"
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


def result_cost(result: Mapping[str, Any] | None) -> float | None:
    """cost_usd of a Tune result, or None when the result carries none (e.g. Tune's own done marker)."""
    value = (result or {}).get("cost_usd")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return None


def add_report(entry: dict[str, Any], cost_usd: float) -> None:
    """One more cost_usd report of a trial into its ledger entry. A restarted trial (a retried worker, a
    resumed sweep) reports a lower cost_usd than before, whether it counts from zero or from its
    checkpoint: the drop was spent by the lost attempt and is kept in `carried`."""
    if cost_usd < entry["cost"]:
        entry["carried"] += entry["cost"] - cost_usd
    elif cost_usd > entry["cost"]:
        entry["step"] = cost_usd - entry["cost"]  # one report interval, for the stop margin
    entry["cost"] = float(cost_usd)


class BudgetLedger:
    """What each trial has cost, and whether one more trial fits in what is left.

    Per trial: `cost` (the last cost_usd it reported), `carried` (see add_report), `step` (its last
    report interval's cost), `finished`, `final` (it reached its final evaluation, i.e. was not pruned)
    and `restart`, and `method` (None when unknown). Projections are per method (`estimates` gives each
    method's before any of its trials has finished), so a full fine-tuning trial is never admitted at a
    LoRA trial's price; a trial of unknown method counts for every method. A restarted trial's ledger misses at most the new attempt's first report interval and
    never counts anything twice. The baseline (the base model's evaluation, before any trial) is paid out
    of the same budget: `spent()` is the sweep's whole spend.
    """

    def __init__(
        self,
        budget_usd: float,
        estimate_usd: float,
        reserve_usd: float = 0.0,
        path: str | Path | None = None,
        baseline_usd: float = 0.0,
        estimates: Mapping[str, float] | None = None,
    ) -> None:
        self.budget_usd = validate_budget(budget_usd)
        if not (math.isfinite(baseline_usd) and baseline_usd >= 0):
            raise BudgetError(f"baseline_usd: {baseline_usd!r}: give the baseline evaluation's cost, >= 0")
        self.baseline_usd = float(baseline_usd)
        if not (math.isfinite(estimate_usd) and estimate_usd > 0):
            raise BudgetError(f"estimate_usd: {estimate_usd!r}: give a positive projected cost of one trial")
        if not (math.isfinite(reserve_usd) and reserve_usd >= 0):
            raise BudgetError(f"reserve_usd: {reserve_usd!r}: give one final evaluation's cost, >= 0")
        self.estimate_usd = float(estimate_usd)
        self.reserve_usd = float(reserve_usd)
        self.estimates = _estimates(estimates)
        self.path = str(path) if path is not None else None
        self.stop_requested = False
        self.ended_because: str | None = None  # why no more trials start, once none will
        self.trials: dict[str, dict[str, Any]] = {}
        self._saved_at = 0.0
        self.uid = uuid.uuid4().hex
        _LEDGERS[self.uid] = self

    def open(self, trial_id: str, method: str | None = None) -> None:
        """An admitted trial: it holds its method's projected cost from now on, before its first report."""
        entry: dict[str, Any] = {"cost": 0.0, "carried": 0.0, "step": 0.0, "finished": False, "final": False,
                                 "method": None}  # fmt: skip
        entry = self.trials.setdefault(trial_id, entry)
        if method is not None:
            entry["method"] = method

    def record(
        self, trial_id: str, cost_usd: float | None, finished: bool = False, final: bool = False
    ) -> None:
        self.open(trial_id)
        entry = self.trials[trial_id]
        if cost_usd is not None:
            add_report(entry, cost_usd)
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
        return self.baseline_usd + sum(self.trial_cost(trial_id) for trial_id in self.trials)

    def running(self) -> list[str]:
        return [trial_id for trial_id, entry in self.trials.items() if not entry["finished"]]

    def projected_trial_cost(self, method: str | None = None) -> float:
        """What the next trial of `method` is expected to cost, erring high: the dearest trial of that
        method that ran to its end, or, before one has, the method's estimate. Pruned trials and running
        ones only ever raise it. Without a method: the dearest method's projection."""
        if method is None:
            methods = {None, *self.estimates, *(e.get("method") for e in self.trials.values())}
            return max(self._projection(m) for m in methods)
        return self._projection(method)

    def _projection(self, method: str | None) -> float:
        mine = {t: e for t, e in self.trials.items() if method is None or e.get("method") in (method, None)}
        complete = [self.trial_cost(t) for t, e in mine.items() if e["final"] and e["finished"]]
        others = [self.trial_cost(t) for t, e in mine.items() if not (e["final"] and e["finished"])]
        estimate = self.estimates.get(method, self.estimate_usd) if method is not None else self.estimate_usd
        return max([*others, *(complete or [estimate])])

    def held_for_running(self) -> float:
        """Money the running trials still need: what is left of their projection after their current
        attempt's progress, and never less than the reserve for their final evaluation (a trial past
        its projection still evaluates)."""
        held = 0.0
        for trial_id in self.running():
            entry = self.trials[trial_id]
            progress = 0.0 if entry.get("restart") else entry["cost"]
            held += max(self.projected_trial_cost(entry.get("method")) - progress, self.reserve_usd)
        return held

    def remaining(self) -> float:
        return self.budget_usd - self.spent() - self.held_for_running()

    def admits(self, method: str | None = None) -> tuple[bool, str]:
        """Whether one more trial of `method` fits (without one: of the dearest method), and why not."""
        if self.stop_requested:
            return False, f"the budget {usd(self.budget_usd)} is used up; running trials are finishing"
        need = max(self.projected_trial_cost(method), self.reserve_usd)
        remaining = self.remaining()
        if need > remaining:
            which = f"{method} " if method else ""
            return False, (
                f"next {which}trial's projected cost {usd(need)} exceeds what remains {usd(max(remaining, 0.0))} "
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
            self.open(trial.trial_id, (getattr(trial, "config", None) or {}).get("method"))
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
        self.estimates = _estimates(state.get("estimates")) or self.estimates
        self.merge(state)
        if self.path and Path(self.path).exists():
            self.merge(json.loads(Path(self.path).read_text(encoding="utf-8")))

    def merge(self, state: Mapping[str, Any]) -> None:
        """Another record of the same sweep: per trial the larger total wins; a stop stays requested."""
        self.stop_requested = self.stop_requested or bool(state["stop_requested"])
        self.baseline_usd = max(self.baseline_usd, float(state.get("baseline_usd", 0.0)))
        self.ended_because = self.ended_because or state.get("ended_because")
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
            "estimates": dict(self.estimates),
            "stop_requested": self.stop_requested,
            "ended_because": self.ended_because,
            "baseline_usd": self.baseline_usd,
            "spent_usd": self.spent(),  # the sweep's spend, baseline included; recomputed on load
            "trials": {trial_id: dict(entry) for trial_id, entry in self.trials.items()},
        }

    def update_from_dict(self, state: Mapping[str, Any]) -> None:
        """Take over a saved state in place, so every holder of this ledger sees the restored one."""
        self.budget_usd = validate_budget(state["budget_usd"])
        self.estimate_usd = float(state["estimate_usd"])
        self.reserve_usd = float(state["reserve_usd"])
        self.estimates = _estimates(state.get("estimates"))
        self.stop_requested = bool(state["stop_requested"])
        self.ended_because = state.get("ended_because")
        self.baseline_usd = float(state.get("baseline_usd", 0.0))
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
        # On object storage, through to the bucket: a write it does not take raises (StorageError), as
        # the budget's record must not be lost silently; the mirror keeps the newer copy meanwhile.
        from sweeps import storage

        storage.push(target)
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


def sweep_spent(root: str | Path) -> float:
    """The sweep's spent total, THE one figure: the baseline's cost plus, per trial, what Ray's storage says
    it cost (every result it reported, over all its attempts, summed as the ledger sums them). The
    parent run's spent_usd, `sweepboard sync` and the ledger file (after close_books) all report it."""
    return _baseline_cost(Path(root)) + sum(e["cost"] + e["carried"] for e in stored_trials(root).values())


def close_books(root: str | Path, ledger: BudgetLedger | None = None) -> float:
    """At the end of a drive: make the ledger file agree with Ray's storage, and return sweep_spent(root).
    The file is the newest record (Tune's own ledger writes it, which after a restore is not `ledger`)."""
    path = Path(root) / "budget.json"
    book = BudgetLedger.load(path) if path.is_file() else ledger
    if book is None:
        return sweep_spent(root)
    for trial_id, stored in stored_trials(root).items():
        book.open(trial_id)
        book.trials[trial_id].update(cost=stored["cost"], carried=stored["carried"])
    book.baseline_usd = _baseline_cost(Path(root))
    book.save(path)
    return book.spent()


def stored_trials(root: str | Path) -> dict[str, dict[str, Any]]:
    """Per trial id, {cost, carried} from the result.json Ray keeps in each trial folder (appended to by
    every attempt, also after a resume; a torn last line from a killed driver is skipped). Every trial
    folder counts, also one Ray's last experiment snapshot does not know (started just before a kill)."""
    from sweeps import storage

    # On object storage Ray keeps them in the bucket: the mirror gets the current ones first.
    storage.pull(Path(root), only=lambda rel: rel.count("/") == 1 and rel.endswith("/result.json"))
    trials: dict[str, dict[str, Any]] = {}
    for results in sorted(Path(root).glob("*/result.json")):  # trial_ID/ here; Ray's own names elsewhere
        entry = {"cost": 0.0, "carried": 0.0, "step": 0.0}
        trial_id = results.parent.name.removeprefix("trial_")
        for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            trial_id = str(result.get("trial_id") or trial_id)
            if (cost := result_cost(result)) is not None:
                add_report(entry, cost)
        trials[trial_id] = entry
    return trials


def _baseline_cost(root: Path) -> float:
    metrics = root / "baseline" / "metrics.json"  # tune_run.BASELINE_ID; written by the baseline's trial
    if not metrics.is_file():
        return 0.0
    return result_cost(json.loads(metrics.read_text(encoding="utf-8"))) or 0.0


def _estimates(estimates: Mapping[str, float] | None) -> dict[str, float]:
    out = {str(m): float(v) for m, v in (estimates or {}).items()}
    for method, value in out.items():
        if not (math.isfinite(value) and value > 0):
            raise BudgetError(f"estimates.{method}: {value!r}: give a positive projected cost of one trial")
    return out
