"""The embedded default task: normalise messy, human-written dates to ISO 8601 (YYYY-MM-DD).

A format job of the kind the fine-tuning guides call LoRA's strength: the model already knows what a date
is; it must learn one strict output format and a dozen surface forms. Generated from a seed, no downloads.
Only unambiguous surface forms are used (month names, year-first numbers, or day.month.year with dots),
so every input has exactly one right answer and exact match is a fair metric.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

INSTRUCTION = "Rewrite the date as YYYY-MM-DD.\nDate: "
ANSWER_PREFIX = "\nISO: "

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d: dt.date, rng: random.Random) -> str:
    name = MONTHS[d.month - 1]
    # Abbreviations with and without a dot, as people type them.
    return rng.choice([name, name[:3], name[:3] + "."]) if name != "May" else "May"


# Each format turns a date into one messy string. Year-first numeric and dotted day-first forms are the
# only purely numeric ones, because "03/04/2021" is ambiguous between US and European readings.
FORMATS: list[Callable[[dt.date, random.Random], str]] = [
    lambda d, r: f"{_month(d, r)} {d.day}, {d.year}",
    lambda d, r: f"{d.day} {_month(d, r)} {d.year}",
    lambda d, r: f"{_month(d, r)} {_ordinal(d.day)} {d.year}",
    lambda d, r: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    lambda d, r: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d, r: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {_month(d, r)} {d.year}",
    lambda d, r: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d, r: f"{d.year}.{d.month}.{d.day}",
    lambda d, r: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d, r: f"{d.year}{d.month:02d}{d.day:02d}",
    lambda d, r: f"{_month(d, r)} {d.day} '{d.year % 100:02d}",
    lambda d, r: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
]

FIRST_DAY = dt.date(1950, 1, 1)
LAST_DAY = dt.date(2049, 12, 31)


def _noise(text: str, rng: random.Random) -> str:
    """Case and spacing noise: the messiness of real forms, without changing the meaning."""
    roll = rng.random()
    if roll < 0.15:
        text = text.upper()
    elif roll < 0.3:
        text = text.lower()
    if rng.random() < 0.15:
        text = "  " + text
    if rng.random() < 0.15:
        text = text + " "
    return text


def make_dates(n: int, seed: int) -> list[dict[str, str]]:
    """`n` distinct examples {"prompt", "completion"}, deterministic in `seed`."""
    rng = random.Random(seed)
    span = (LAST_DAY - FIRST_DAY).days
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(span + 1))
        fmt = rng.randrange(len(FORMATS))
        if fmt == 10 and not 2000 <= day.year <= 2039:
            continue  # two-digit years are read as 20xx; keep them unambiguous
        messy = _noise(FORMATS[fmt](day, rng), rng)
        key = " ".join(messy.lower().split())
        if key in seen:
            continue
        seen.add(key)
        rows.append({"prompt": f"{INSTRUCTION}{messy}{ANSWER_PREFIX}", "completion": day.isoformat()})
    return rows
