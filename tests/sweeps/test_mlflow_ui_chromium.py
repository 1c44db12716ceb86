"""`make ui` on a smoke sweep's MLflow store, as headless Chromium renders it: the sweep's experiment opens on the
runs table (not MLflow 3's GenAI overview) with the trial runs, their test quality, cost and locked test set.

Needs /usr/bin/chromium: skipped without it on a developer's machine, failed without it in CI (CI=1)."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from test_sweep_e2e import REPO, runs_of, smoke_config, sweepboard

from tracking import mlflow_store, names

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")


def chromium_or_skip() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: CI must install chromium to run the MLflow UI page test")
    pytest.skip(f"{CHROMIUM} is absent (CI installs it)")


def start_ui(tmp_path: Path, uri: str) -> tuple[subprocess.Popen[str], str]:
    """`make ui` on port 0: the OS picks a free port, read back from the server's log."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    log = tmp_path / "ui.log"
    command = ["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", "ui", f"MLFLOW={mlflow_cli}",
               f"MLFLOW_TRACKING_URI={uri}", "HOST=127.0.0.1", "PORT=0"]
    with log.open("w") as out:
        ui = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and ui.poll() is None:
        found = re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            try:
                urllib.request.urlopen(f"{found.group(1)}/health", timeout=2).close()
                return ui, found.group(1)
            except OSError:
                pass  # bound, workers not answering yet
        time.sleep(0.5)
    stop(ui)
    pytest.fail(f"make ui did not start:\n{log.read_text()[-3000:]}")


def stop(ui: subprocess.Popen[str]) -> None:
    os.killpg(ui.pid, signal.SIGTERM)
    try:
        ui.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


def page_text(url: str, profile: Path) -> str:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=2400,1400", "--virtual-time-budget=30000",
               "--dump-dom", url]  # fmt: skip
    dom = subprocess.run(command, check=True, capture_output=True, text=True, timeout=240).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_make_ui_opens_the_sweep_on_its_runs_with_quality_and_cost(tmp_path: Path) -> None:
    chromium_or_skip()
    cfg = smoke_config(tmp_path, "ui", max_trials=2)
    done = sweepboard(tmp_path, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("ui")
    path = mlflow_store.ui_path(experiment.experiment_id)
    assert path in re.sub(r"\s+", "", done.stdout)  # the sweep says where to look
    trials = [r for r in runs_of(tmp_path, "ui") if r.data.tags[names.TAG_ROLE] == "trial"]
    ui, address = start_ui(tmp_path, uri)
    try:
        text = page_text(address + path, tmp_path / "profile")
    finally:
        stop(ui)
    assert "Observability" not in text and "Token Usage" not in text  # not the GenAI overview
    for column in ("test_quality", "cost_usd", "val_quality", "Dataset", "method"):
        assert column in text, text[:3000]
    for run in trials:
        assert run.info.run_name in text, text[:3000]
    scored = [r for r in trials if "test_quality" in r.data.metrics]
    assert scored and "dates-locked-test" in text  # the test set each run was scored on
    assert "ui-sweep" not in text  # the view lists the trials, not the parent run
