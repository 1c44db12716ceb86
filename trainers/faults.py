"""A fault drill: make a trial fail on purpose, to test (and rehearse) what a sweep does when one does.

Set SWEEPBOARD_FAULT in the environment of the processes that run trials (a local sweep's Ray workers
inherit the driver's environment; on a cluster, set it where the workers start). Unset, nothing happens.

    SWEEPBOARD_FAULT="error@step=3,method=full"   # raise RuntimeError("injected fault ...") before step 3
    SWEEPBOARD_FAULT="kill@step=4,method=lora"    # SIGKILL the trial's own process before step 4, once
    SWEEPBOARD_FAULT="pause@step=6"               # hang before step 6 for PAUSE_SECONDS (a stalled worker)
    SWEEPBOARD_FAULT="error@step=1;kill@step=5"   # several faults, separated by ';'

`step=N` fires just before the training loop trains step N (1-based, the step numbering of the reports),
so `step=1` fails right after the model has loaded and `step=eval_every + 1` just after the first
checkpoint. `step=steps + 1` (e.g. 7 for a 6-step trial) fires in a sweep's trial after its test evaluation,
before its final report. `method=` limits the fault to trials of one method; without it every training
trial is hit.

An `error` fires every time the step comes round, like a bug in the code would: a retried trial fails
again. A `kill` stands for a lost worker (out of memory, a preempted node): it fires once per trial folder
(a marker file `fault-kill-stepN` in the trial's output folder), so the retried attempt runs through.
A `pause` stands for a stalled worker: it holds the trial at a known point (after a checkpoint, say) while
something else happens to the sweep, such as its driver being killed.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "SWEEPBOARD_FAULT"
KINDS = ("error", "kill", "pause")
PAUSE_SECONDS = 300.0
METHODS = ("lora", "qlora", "full")  # the methods that train
EXAMPLE = "e.g. SWEEPBOARD_FAULT='error@step=3,method=full'"


@dataclass(frozen=True)
class Fault:
    kind: str  # "error" | "kill" | "pause"
    step: int  # fires before the loop trains this step (1-based)
    method: str | None = None  # only trials of this method; None: every trial


def inject(step: int, method: str, out: Path) -> None:
    """Called by the training loop before it trains `step`; does nothing unless SWEEPBOARD_FAULT asks."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return
    for fault in parse(text):
        if fault.step != step or fault.method not in (None, method):
            continue
        if fault.kind == "error":
            raise RuntimeError(
                f"injected fault: error before step {step} of a {method} trial ({ENV}={text!r})"
            )
        if fault.kind == "pause":
            print(f"sweepboard: fault drill: pausing before step {step} for {PAUSE_SECONDS:g} s", flush=True)
            time.sleep(PAUSE_SECONDS)
            continue
        marker = out / f"fault-kill-step{step}"
        if marker.exists():
            continue  # this trial was killed here once already: the retried attempt goes on
        marker.write_text(f"pid {os.getpid()} killed itself before step {step} ({ENV}={text!r})\n")
        os.kill(os.getpid(), signal.SIGKILL)


@functools.lru_cache(maxsize=8)
def parse(text: str) -> tuple[Fault, ...]:
    """The faults in `text`; a ValueError naming every bad part and the fix (cached: called every step)."""
    faults, problems = [], []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            faults.append(_parse_one(part))
        except ValueError as exc:
            problems.append(f"{part!r}: {exc}")
    if problems:
        raise ValueError(f"{ENV}: " + "; ".join(problems) + f" ({EXAMPLE})")
    return tuple(faults)


def _parse_one(part: str) -> Fault:
    kind, _, rest = part.partition("@")
    kind = kind.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r}: use one of {', '.join(KINDS)}")
    settings: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in ("step", "method"):
            raise ValueError(f"{item!r}: give step=N and optionally method=M")
        settings[key.strip()] = value.strip()
    if not settings.get("step", "").isdigit() or int(settings["step"]) < 1:
        raise ValueError(f"step: {settings.get('step')!r}: give the step to fail before, a whole number >= 1")
    method = settings.get("method")
    if method is not None and method not in METHODS:
        raise ValueError(f"method: {method!r}: use one of {', '.join(METHODS)}")
    return Fault(kind, int(settings["step"]), method)
