"""Quality versus cost scatter with the Pareto front, as PNG bytes (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: the leaderboard runs on headless machines and in CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

METHOD_COLOURS = {"none": "#7f7f7f", "lora": "#1f77b4", "qlora": "#2ca02c", "full": "#d62728"}
OTHER_COLOUR = "#9467bd"


def scatter_png(ranked: pd.DataFrame, title: str = "", dpi: int = 110,
                recommended_run_id: str | None = None) -> bytes:
    """Test quality (95% intervals) against cost in dollars, one colour per method; Pareto front drawn."""
    data = ranked[ranked["test_quality"].notna() & ranked["cost_usd"].notna()]
    fig, ax = plt.subplots(figsize=(8.0, 5.0), dpi=dpi)
    try:
        methods = list(dict.fromkeys(data["method"].astype(str)))
        for method in methods:
            rows = data[data["method"].astype(str) == method]
            colour = METHOD_COLOURS.get(method, OTHER_COLOUR)
            low = rows["test_quality_ci_low"].astype(float)
            high = rows["test_quality_ci_high"].astype(float)
            quality = rows["test_quality"].astype(float)
            yerr = [(quality - low).fillna(0).clip(lower=0), (high - quality).fillna(0).clip(lower=0)]
            ax.errorbar(rows["cost_usd"].astype(float), quality, yerr=yerr, fmt="none", ecolor=colour,
                        alpha=0.35, capsize=2, zorder=1)
            below = rows["below_floor"].astype(bool)
            ax.scatter(rows.loc[~below, "cost_usd"], rows.loc[~below, "test_quality"], color=colour, s=42,
                       label=f"{method} ({len(rows)})", zorder=3, edgecolors="black", linewidths=0.4)
            ax.scatter(rows.loc[below, "cost_usd"], rows.loc[below, "test_quality"], facecolors="none",
                       edgecolors=colour, s=42, zorder=3, linewidths=1.2)
        front = data[data["pareto"].astype(bool)].sort_values("cost_usd")
        if not front.empty:
            ax.step(front["cost_usd"].astype(float), front["test_quality"].astype(float), where="post",
                    color="black", linewidth=1.2, linestyle="-", zorder=2, label="Pareto front")
            for row in front.itertuples(index=False):
                ax.annotate(_short(str(row.run_name)), (float(row.cost_usd), float(row.test_quality)),
                            textcoords="offset points", xytext=(5, 5), fontsize=7)
        chosen = data[data["run_id"] == recommended_run_id] if recommended_run_id else data.iloc[0:0]
        if not chosen.empty:
            ax.scatter(chosen["cost_usd"].astype(float), chosen["test_quality"].astype(float), marker="*",
                       s=260, color="#ffd33d", edgecolors="black", linewidths=0.8, zorder=4,
                       label="recommended")
        floor = ranked.attrs.get("min_quality")
        if floor is not None and not data.empty:
            ax.axhline(float(floor), color="#ff7f0e", linestyle="--", linewidth=1,
                       label=f"quality floor {float(floor):.3f}")
        if data.empty:
            ax.text(0.5, 0.5, "no run with a test quality and a cost yet", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("cost (US dollars)")
        ax.set_ylabel("test quality (95% CI)")
        ax.set_title((title or "Quality versus cost").replace("$", r"\$"))
        ax.grid(True, alpha=0.3)
        if methods:
            ax.legend(loc="lower right", fontsize=8, title="hollow: below floor", title_fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _short(name: str, limit: int = 24) -> str:
    short = name if len(name) <= limit else name[: limit - 1] + "…"
    return short.replace("$", r"\$")  # a bare "$" would start matplotlib mathtext
