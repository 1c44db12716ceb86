"""Exports of a ranked board and its decision: terminal table, CSV, JSON, Markdown, self-contained HTML."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from leaderboard import view
from leaderboard.decision import Decision
from leaderboard.html_page import render_html
from leaderboard.terminal import print_table

FORMATS = ("table", "csv", "json", "md", "html")
FILE_NAMES = {"csv": "leaderboard.csv", "json": "leaderboard.json", "md": "leaderboard.md",
              "html": "leaderboard.html"}


def to_csv(ranked: pd.DataFrame) -> str:
    out = ranked
    if "val_curve" in ranked:  # a step -> value dict: JSON in its cell, not a Python repr
        out = ranked.assign(val_curve=[None if not isinstance(c, dict) else json.dumps(c, allow_nan=False)
                                       for c in ranked["val_curve"]])
    return out.to_csv(index=False, quoting=csv.QUOTE_MINIMAL)


def to_json(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    document = {
        "sweeps": view.sweeps(ranked),
        "test_set_sha256": sorted({s for s in ranked["test_set_sha256"].dropna()}),
        "min_quality": decision.min_quality,
        "margin": decision.margin,
        "metric": decision.metric,
        "selected_on": decision.selected_on,
        "selection_metric": "val_quality",
        "reported_on": "test",
        "val_floor": decision.val_floor,
        "best_run_id": ranked.attrs.get("best_run_id"),
        "warnings": list(warnings),
        "columns": list(ranked.columns),
        "rows": view.records(ranked),
        "decision": view.plain(decision.to_dict()),
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def to_markdown(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    lines = [f"# {_md(view.title(ranked))}", "", _md(view.caption(ranked, decision)), "", "## Decision", ""]
    lines += [f"- {_md(line)}" for line in decision.lines]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {_md(w)}" for w in warnings]
    lines += ["", "## Runs", "", "| " + " | ".join(view.HEADERS) + " |", "|" + "---|" * len(view.HEADERS)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in view.display_rows(ranked)]
    return "\n".join(lines) + "\n"


def to_html(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = ()) -> str:
    return render_html(
        title=view.title(ranked),
        caption=view.caption(ranked, decision),
        headers=view.HEADERS,
        rows=view.display_rows(ranked),
        row_classes=[view.row_class(r, decision) for r in view.records(ranked)],
        decision_lines=decision.lines,
        warnings=list(warnings),
        ranked=ranked,
        recommended_run_id=view.recommended_id(decision),
    )


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


def _md(value: str) -> str:
    """Literal text in a Markdown table cell: no HTML, no column breaks."""
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))
