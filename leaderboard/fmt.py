"""Formatting of leaderboard values for people (the table, Markdown, HTML and the decision text)."""

from __future__ import annotations

import math

import pandas as pd


def is_missing(value: object) -> bool:
    """None, NaN and pd.NA; never true for a list or a string."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def quality(value: object) -> str:
    return "-" if is_missing(value) else f"{float(value):.3f}"  # type: ignore[arg-type]


def interval(low: object, high: object) -> str:
    return "-" if is_missing(low) or is_missing(high) else f"[{float(low):.3f}, {float(high):.3f}]"  # type: ignore[arg-type]


def usd(value: object) -> str:
    if is_missing(value):
        return "-"
    x = float(value)  # type: ignore[arg-type]
    if x != 0 and abs(x) < 0.01:
        return f"${x:.2g}" if abs(x) < 0.0001 else f"${x:.4f}"
    return f"${x:,.2f}"


def number(value: object, digits: int = 2) -> str:
    if is_missing(value):
        return "-"
    x = float(value)  # type: ignore[arg-type]
    if math.isinf(x):
        return "inf"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.{digits}g}"
    return f"{x:,.{digits}f}"


def signed(value: object) -> str:
    return "-" if is_missing(value) else f"{float(value):+.3f}"  # type: ignore[arg-type]


def integer(value: object) -> str:
    return "-" if is_missing(value) else str(int(float(value)))  # type: ignore[arg-type]


def rate(value: object) -> str:
    return "-" if is_missing(value) else f"{float(value):.0e}".replace("e-0", "e-")  # type: ignore[arg-type]


def text(value: object) -> str:
    return "-" if is_missing(value) else str(value)


def modules(value: object) -> str:
    """Target modules, short: "q_proj,k_proj" reads as "q,k" (every Llama-style target ends in _proj)."""
    if is_missing(value):
        return "-"
    names = [m.strip() for m in str(value).split(",") if m.strip()]
    if names and all(m.endswith("_proj") for m in names):
        return ",".join(m[: -len("_proj")] for m in names)
    return ",".join(names)


def flag(value: object) -> str:
    return "yes" if not is_missing(value) and bool(value) else ""


def p_value(value: object) -> str:
    if is_missing(value):
        return "-"
    x = float(value)  # type: ignore[arg-type]
    return f"{x:.1e}" if x < 0.001 else f"{x:.3f}"
