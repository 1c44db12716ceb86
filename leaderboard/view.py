"""What the human-facing formats (terminal, Markdown, HTML) show: columns, formatted cells, row classes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from leaderboard import fmt
from leaderboard.decision import Decision

# (header, column, formatter); CSV and JSON carry every column raw instead.
DISPLAY: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("#", "position", fmt.integer),
    ("run", "run_name", fmt.text),
    ("run id", "run_id", lambda v: fmt.text(v)[:8]),
    ("method", "method", fmt.text),
    ("r", "rank", fmt.integer),
    ("alpha", "alpha", fmt.integer),
    ("targets", "target_modules", fmt.modules),
    ("lr", "learning_rate", fmt.rate),
    ("test quality", "test_quality", fmt.quality),
    ("95% CI", "ci", fmt.text),
    ("val quality", "val_quality", fmt.quality),
    ("cost", "cost_usd", fmt.usd),
    ("device h", "device_hours", lambda v: fmt.number(v, 3)),
    ("quality/$", "quality_per_dollar", fmt.number),
    ("lift", "lift_over_baseline", fmt.signed),
    ("Pareto", "pareto", fmt.flag),
    ("best (val)", "best", fmt.flag),
    ("tied w/ best", "tied_with_best", fmt.flag),
    ("p vs best", "p_vs_best", fmt.p_value),
    ("below floor", "below_floor", fmt.flag),
    ("status", "status", fmt.text),
    ("peak MB", "peak_memory_mb", lambda v: fmt.number(v, 0)),
    ("adapter MB", "adapter_mb", lambda v: fmt.number(v, 1)),
    ("commit", "git_commit", lambda v: fmt.text(v)[:10]),
)
HEADERS = [header for header, _, _ in DISPLAY]


def records(ranked: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (numpy scalars unwrapped, NaN/NA as None), column names as keys."""
    return [{k: plain(v) for k, v in row.items()} for row in ranked.to_dict(orient="records")]


def display_rows(ranked: pd.DataFrame) -> list[list[str]]:
    """Rows of formatted strings in DISPLAY order (not escaped: each format escapes for itself)."""
    out = []
    for row in records(ranked):
        row["ci"] = fmt.interval(row["test_quality_ci_low"], row["test_quality_ci_high"])
        out.append([formatter(row.get(column)) for _, column, formatter in DISPLAY])
    return out


def row_class(record: dict[str, Any], decision: Decision) -> str:
    """Space-separated: failed, pareto, below (the floor), best, tied (with the best), recommended."""
    classes = [name for name, on in (
        ("failed", record.get("status") == "failed"),
        ("pareto", record.get("pareto")),
        ("best", record.get("best")),
        ("below", record.get("below_floor") and record.get("status") != "failed"),
        ("tied", record.get("tied_with_best")),
        ("recommended", record.get("run_id") == recommended_id(decision)),
    ) if on]
    return " ".join(classes)


def recommended_id(decision: Decision) -> str | None:
    return None if decision.recommended is None else decision.recommended.get("run_id")


def title(ranked: pd.DataFrame) -> str:
    return f"Leaderboard: {', '.join(sweeps(ranked)) or '(no runs)'}"


def caption(ranked: pd.DataFrame, decision: Decision) -> str:
    shas = sorted({str(s) for s in ranked["test_set_sha256"].dropna()})
    floor = "-" if decision.min_quality is None else f"{decision.min_quality:.3f}"
    default = " (90% of the best)" if ranked.attrs.get("floor_is_default") else ""
    return (f"{len(ranked)} runs; metric {decision.metric or 'mixed/unknown'}; "
            f"quality floor {floor}{default}; margin {decision.margin:.3g}; "
            f"locked test set sha256 {', '.join(s[:12] for s in shas) or '-'}. {selection(decision)}")


def selection(decision: Decision) -> str:
    """Which split chose, said on every format."""
    floor = "" if decision.val_floor is None else f", validation floor {decision.val_floor:.3f}"
    return (f"Best, tied and recommended runs chosen on {decision.selected_on} (val_quality{floor}); "
            "quality shown, ranked and compared is the locked test score.")


def sweeps(ranked: pd.DataFrame) -> list[str]:
    """The sweeps asked for (kept by load_runs even when one has no runs), else those in the rows."""
    named = [str(s) for s in ranked.attrs.get("sweeps", [])]
    seen = [str(s) for s in dict.fromkeys(ranked["sweep"].dropna())] if "sweep" in ranked else []
    return named + [s for s in seen if s not in named]


def plain(value: object) -> Any:
    """JSON-friendly: numpy scalars unwrapped, NaN/NA/inf as None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if fmt.is_missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value
