"""The board in a terminal (rich). Columns are dropped, least looked-up first, until the table fits."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from leaderboard.decision import Decision
from leaderboard.view import HEADERS, caption, display_rows, records, row_class, title

# The three yes/no columns become one "flags" column of letters in the terminal.
FLAGS = (("Pareto", "P"), ("best (val)", "B"), ("tied w/ best", "T"), ("below floor", "<"))
DROP_ORDER = ("commit", "peak MB", "device h", "run id", "p vs best", "adapter MB", "targets", "lift",
              "alpha", "95% CI", "lr", "status")
# Short headers where the terminal is tight; the caption says test quality is shown and validation chose.
SHORT = {"test quality": "test", "val quality": "val"}
STYLES = {"failed": "red", "pareto": "bold", "below": "dim", "recommended": "reverse"}


def print_table(ranked: pd.DataFrame, decision: Decision, warnings: Sequence[str] = (),
                console: Console | None = None) -> None:
    console = console or Console()
    flag_at = {HEADERS.index(h): letter for h, letter in FLAGS}
    headers = [h for i, h in enumerate(HEADERS) if i not in flag_at] + ["flags"]
    rows = [[c for i, c in enumerate(row) if i not in flag_at]
            + ["".join(letter for i, letter in flag_at.items() if row[i]) or "-"]
            for row in display_rows(ranked)]

    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(headers)]
    shown = list(range(len(headers)))
    hidden: list[str] = []
    for header in DROP_ORDER:
        run_width = min(widths[headers.index("run")], 24)  # long run names fold instead
        total = sum(run_width if headers[j] == "run" else widths[j] for j in shown) + 3 * len(shown) + 1
        if total <= console.width:
            break
        shown.remove(headers.index(header))
        hidden.append(header)

    table = Table(title=title(ranked), caption=caption(ranked, decision), header_style="bold")
    for j in shown:
        table.add_column(SHORT.get(headers[j], headers[j]), overflow="fold", no_wrap=headers[j] != "run")
    for row, record in zip(rows, records(ranked), strict=True):
        style = " ".join(STYLES[c] for c in row_class(record, decision).split() if c in STYLES)
        # Text(...) rather than str: a run name like "[red]x" must not be read as rich markup.
        table.add_row(*(Text(row[j]) for j in shown), style=style)
    console.print(table)
    note = ("flags: P Pareto-optimal, B best by validation quality, T statistically tied with the best, "
            "< below the quality floor")
    if hidden:
        note += f"; hidden to fit the terminal: {', '.join(hidden)} (all columns: --format csv/json/md/html)"
    console.print(Text(note, style="dim"))
    for line in decision.lines:
        console.print(Text(line))
    for warning in warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
