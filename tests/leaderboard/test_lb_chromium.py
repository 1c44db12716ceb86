"""The HTML page as a browser renders it: headless Chromium takes a screenshot, offline."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from leaderboard.decision import decide
from leaderboard.exports import export
from leaderboard.rank import rank_runs

CHROMIUM = Path("/usr/bin/chromium")


def screenshot(html: Path, out_dir: Path) -> Path:
    png = out_dir / "page.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={out_dir / 'profile'}", f"--screenshot={png}", "--window-size=1280,1600",
        html.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    return png


def demo_board(frame, make_row):
    ranked = rank_runs(frame(
        make_row("baseline", "none", 0.35, 0.02),
        make_row("lora-r16-default", "lora", 0.74, 0.40, adapter_mb=7.0),
        make_row("qlora-r8", "qlora", 0.75, 0.30, rank=8, alpha=16, adapter_mb=3.5),
        make_row("lora-r32-mlp", "lora", 0.76, 0.55, rank=32, alpha=64, adapter_mb=28.0,
                 target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
        make_row("full-lr1e-5", "full", 0.78, 2.5, learning_rate=1e-5),
        make_row("lora-r64-pruned", "lora", 0.60, 0.10, rank=64, alpha=128, status="pruned"),
        make_row("<script>alert(1)</script>", "qlora", 0.70, 0.25),
        make_row("lora-oom", "lora", None, 0.05, status="failed"),
    ))
    return ranked, decide(ranked)


# Skipped only outside CI: .ci/run installs Chromium and sets CI=1, and there a missing browser is a failure.
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason="/usr/bin/chromium is absent (CI installs it via .ci/run; with CI set this fails)")
def test_html_page_renders_in_headless_chromium(frame, make_row, tmp_path) -> None:
    ranked, decision = demo_board(frame, make_row)
    html = export(ranked, decision, "html", tmp_path / "leaderboard.html", ["an example warning"])
    assert html is not None
    png = screenshot(html, tmp_path)
    assert png.exists() and png.stat().st_size > 50_000  # a blank 1280x1600 page is a few kB
    pixels = image.imread(png)
    assert pixels.shape[:2] == (1600, 1280)
    grey = pixels[..., :3].mean(axis=2)
    # Text, table borders and the plot: a real share of the page is not background, and the page has colour
    # (the method colours in the plot, the red failed row), so it is not an error page or an empty one.
    assert (grey < 0.9).mean() > 0.02
    rgb = pixels[..., :3]
    assert (np.ptp(rgb, axis=2) > 0.3).mean() > 0.001
