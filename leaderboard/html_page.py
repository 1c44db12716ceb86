"""One self-contained HTML page: inline CSS, the plot as a base64 PNG, no script, nothing fetched.

Every string that reaches the page goes through html.escape: run names, modules, commits and warnings come
from users and from MLflow, not from us.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from leaderboard.plot import scatter_png

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #1b1f23; }
h1 { font-size: 22px; margin: 0 0 4px 0; }
h2 { font-size: 17px; margin: 22px 0 8px 0; }
p.caption { color: #586069; margin: 0 0 12px 0; font-size: 13px; }
ul.decision li { margin: 3px 0; }
ul.warnings li { color: #8a6d3b; }
figure { margin: 8px 0; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: 12px; color: #586069; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #e1e4e8; padding: 3px 6px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
tr.pareto td { font-weight: 600; }
tr.below td { color: #8b949e; }
tr.failed td { color: #b31d28; background: #ffeef0; }
tr.tied td:first-child { border-left: 4px solid #2ea44f; }
tr.best td:first-child { border-left: 4px solid #0366d6; }
tr.recommended td, .recommended-key { background: #fff5b1; }
div.scroll { overflow-x: auto; }
td:nth-child(2) { white-space: normal; min-width: 9em; max-width: 18em; word-break: break-all; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
"""


def render_html(*, title: str, caption: str, headers: list[str], rows: list[list[str]],
                row_classes: list[str], decision_lines: list[str], warnings: list[str],
                ranked: pd.DataFrame, recommended_run_id: str | None = None) -> str:
    e = html.escape
    png = base64.b64encode(scatter_png(ranked, recommended_run_id=recommended_run_id)).decode("ascii")
    not_plotted = int((ranked["test_quality"].isna() | ranked["cost_usd"].isna()).sum())
    plot_note = f" {not_plotted} run(s) without a test quality or a cost are in the table only." \
        if not_plotted else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        # Forbid any fetch: the page must render identically offline and can never phone home.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'img-src data:; style-src \'unsafe-inline\'">',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="caption">{e(caption)}</p>',
        "<h2>Decision</h2>",
        '<ul class="decision">' + "".join(f"<li>{e(line)}</li>" for line in decision_lines) + "</ul>",
    ]
    if warnings:
        parts += ["<h2>Warnings</h2>",
                  '<ul class="warnings">' + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>"]
    parts += [
        "<h2>Quality versus cost</h2>",
        f'<figure><img alt="{e("test quality versus cost, Pareto front drawn")}" '
        f'src="data:image/png;base64,{png}">',
        f"<figcaption>Each point is a run; bars are 95% intervals; the black step line is the Pareto front "
        f"(no other run is as good and as cheap); hollow points are below the quality floor; the star is the "
        f"recommended run.{e(plot_note)}"
        "</figcaption></figure>",
        "<h2>Runs</h2>",
        '<p class="legend"><span><strong>bold</strong>: Pareto-optimal</span>'
        '<span style="color:#8b949e">grey: below the quality floor</span>'
        '<span style="color:#b31d28">red: failed</span>'
        '<span>blue edge: the best run, chosen on validation quality</span>'
        "<span>green edge: statistically tied with the best (paired test on the test examples)</span>"
        '<span class="recommended-key">yellow: recommended</span>'
        "<span>targets: module names without _proj</span></p>",
        '<div class="scroll"><table><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in headers)
        + "</tr></thead><tbody>",
    ]
    for row, css_class in zip(rows, row_classes, strict=True):
        attr = f' class="{e(css_class)}"' if css_class else ""
        parts.append(f"<tr{attr}>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    parts += ["</tbody></table></div>", "</body></html>"]
    return "\n".join(parts) + "\n"
