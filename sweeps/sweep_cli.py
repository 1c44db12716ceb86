"""The `sweep` and `resume` subcommands (wired to sweeps.sweep)."""

from __future__ import annotations

from typing import Any


def add(sub: Any) -> None:
    """Registered once sweeps.sweep exists."""
