"""Exports of a ranked board and its decision: terminal table, CSV, JSON, Markdown and self-contained HTML."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from leaderboard import fmt
from leaderboard.decide import Decision
from leaderboard.html_page import render_html

FORMATS = ("table", "csv", "json", "md", "html")
FILE_NAMES = {"csv": "leaderboard.csv", "json": "leaderboard.json", "md": "leaderboard.md",
              "html": "leaderboard.html"}

# (header, column, formatter) for the human-facing formats; CSV and JSON carry every column raw.
DISPLAY: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("#", "position", fmt.integer),
    ("run", "run_name", fmt.text),
    ("run id", "run_id", lambda v: fmt.text(v)[:8]),
    ("method", "method", fmt.text),
    ("r", "rank", fmt.integer),
    ("alpha", "alpha", fmt.integer),
    ("targets", "target_modules", fmt.text),
    ("lr", "learning_rate", fmt.rate),
    ("quality", "test_quality", fmt.quality),
    ("95% CI", "ci", fmt.text),
    ("cost", "cost_usd", fmt.usd),
    ("device h", "device_hours", lambda v: fmt.number(v, 3)),
    ("quality/$", "quality_per_dollar", fmt.number),
    ("lift", "lift_over_baseline", fmt.signed),
    ("Pareto", "pareto", fmt.flag),
    ("tied w/ best", "tied_with_best", fmt.flag),
    ("below floor", "below_floor", fmt.flag),
    ("status", "status", fmt.text),
    ("peak MB", "peak_memory_mb", lambda v: fmt.number(v, 0)),
    ("adapter MB", "adapter_mb", lambda v: fmt.number(v, 1)),
    ("commit", "git_commit", lambda v: fmt.text(v)[:10]),
)


def records(ranked: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (numpy scalars unwrapped, NaN/NA as None), column names as keys."""
    return [{k: _plain(v) for k, v in row.items()} for row in ranked.to_dict(orient="records")]


def display_rows(ranked: pd.DataFrame) -> list[list[str]]:
    """Rows of formatted strings in DISPLAY order (not escaped: each format escapes for itself)."""
    out = []
    for row in records(ranked):
        row["ci"] = fmt.interval(row["test_quality_ci_low"], row["test_quality_ci_high"])
        out.append([formatter(row.get(column)) for _, column, formatter in DISPLAY])
    return out


def to_csv(ranked: pd.DataFrame) -> str:
    return ranked.to_csv(index=False, quoting=csv.QUOTE_MINIMAL)


def to_json(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    document = {
        "sweeps": _sweeps(ranked),
        "test_set_sha256": sorted({s for s in ranked["test_set_sha256"].dropna()}),
        "min_quality": decision.min_quality,
        "margin": decision.margin,
        "metric": decision.metric,
        "warnings": list(warnings),
        "columns": list(ranked.columns),
        "rows": records(ranked),
        "decision": {k: _plain_deep(v) for k, v in decision.to_dict().items()},
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def to_markdown(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    lines = [f"# Leaderboard: {_md(', '.join(_sweeps(ranked)))}", "", _caption(ranked, decision, _md), "",
             "## Decision", ""]
    lines += [f"- {_md(line)}" for line in decision.lines]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {_md(w)}" for w in warnings]
    headers = [h for h, _, _ in DISPLAY]
    lines += ["", "## Runs", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in display_rows(ranked)]
    return "\n".join(lines) + "\n"


def to_html(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    return render_html(
        title=f"Leaderboard: {', '.join(_sweeps(ranked))}",
        caption=_caption(ranked, decision, str),
        headers=[h for h, _, _ in DISPLAY],
        rows=display_rows(ranked),
        row_classes=[_row_class(r) for r in records(ranked)],
        decision_lines=decision.lines,
        warnings=list(warnings),
        ranked=ranked,
    )


def print_table(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = (),
                console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"Leaderboard: {', '.join(_sweeps(ranked))}", caption=_caption(ranked, decision, str),
                  show_lines=False, header_style="bold")
    for header, _, _ in DISPLAY:
        table.add_column(header, overflow="fold")
    styles = {"pareto": "bold", "below": "dim", "failed": "red", "": ""}
    for row, record in zip(display_rows(ranked), records(ranked), strict=True):
        # Text(...) rather than str: a run name like "[red]x" must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in row), style=styles[_row_class(record).split(" ")[0]])
    console.print(table)
    for line in decision.lines:
        console.print(Text(line))
    for warning in warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))


def export(ranked: pd.DataFrame, decision: Decision, fmt_name: str, out_path: str | Path | None = None,
           warnings: Sequence[str] = ()) -> Path | None:
    """Write one format to `out_path` (created with its folder), or to stdout when None."""
    if fmt_name not in FORMATS:
        raise ValueError(f"unknown format {fmt_name!r}; choose one of {', '.join(FORMATS)}")
    if fmt_name == "table":
        if out_path is None:
            print_table(ranked, decision, warnings)
            return None
        buffer = io.StringIO()
        print_table(ranked, decision, warnings, Console(file=buffer, width=200, color_system=None))
        content = buffer.getvalue()
    else:
        content = {"csv": lambda: to_csv(ranked), "json": lambda: to_json(ranked, decision, warnings),
                   "md": lambda: to_markdown(ranked, decision, warnings),
                   "html": lambda: to_html(ranked, decision, warnings)}[fmt_name]()
    if out_path is None:
        sys.stdout.write(content)
        return None
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def export_all(ranked: pd.DataFrame, decision: Decision, out_dir: str | Path,
               warnings: Sequence[str] = ()) -> list[Path]:
    """leaderboard.csv/.json/.md/.html in `out_dir`; returns their paths (for logging as MLflow artifacts)."""
    folder = Path(out_dir)
    paths = [export(ranked, decision, name, folder / file, warnings) for name, file in FILE_NAMES.items()]
    return [p for p in paths if p is not None]


def _row_class(record: dict[str, Any]) -> str:
    classes = []
    if record.get("status") == "failed":
        classes.append("failed")
    elif record.get("pareto"):
        classes.append("pareto")
    elif record.get("below_floor"):
        classes.append("below")
    if record.get("tied_with_best"):
        classes.append("tied")
    return " ".join(classes)


def _caption(ranked: pd.DataFrame, decision: Decision, escape: Callable[[str], str]) -> str:
    shas = sorted({str(s) for s in ranked["test_set_sha256"].dropna()})
    floor = "-" if decision.min_quality is None else f"{decision.min_quality:.3f}"
    default = " (90% of the best)" if ranked.attrs.get("floor_is_default") else ""
    return escape(
        f"{len(ranked)} runs; metric {decision.metric or 'mixed/unknown'}; quality floor {floor}{default}; "
        f"margin {decision.margin:.3g}; locked test set sha256 {', '.join(s[:12] for s in shas) or '-'}"
    )


def _sweeps(ranked: pd.DataFrame) -> list[str]:
    return [str(s) for s in dict.fromkeys(ranked["sweep"].dropna())] if "sweep" in ranked else []


def _md(value: str) -> str:
    """Literal text in a Markdown table cell: no HTML, no column breaks."""
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _plain(value: object) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if fmt.is_missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _plain_deep(value: object) -> Any:
    if isinstance(value, dict):
        return {k: _plain_deep(v) for k, v in value.items()}
    return _plain(value)
