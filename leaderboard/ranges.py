"""Each method group's learning-rate range, from the sweep's search space: where a rate bracket may close
at the edge of the range instead of needing a tried neighbour (search_spaces/rates.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from search_spaces.rates import RateRange, rate_ranges


def from_space(source: str | Path | None) -> dict[str, RateRange] | None:
    """The ranges of a search space (a built-in name or a YAML path, as load_space takes it); None when it
    cannot be read here (moved, edited into an invalid file, a board built on another machine)."""
    if not source:
        return None
    from search_spaces.loader import load_space

    try:
        return rate_ranges(load_space(source)) or None
    except (OSError, ValueError):  # SearchSpaceError is a ValueError; the decision falls back to UNKNOWN_RANGE
        return None


def from_sources(sources: Iterable[str | Path | None]) -> dict[str, RateRange] | None:
    """The first readable space of several (one per sweep of a board; a board of several sweeps compares
    them as one search, so the first sweep's space stands for the rest)."""
    for source in sources:
        found = from_space(source)
        if found is not None:
            return found
    return None
