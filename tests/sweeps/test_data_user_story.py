"""A new user's first sweep on real-shaped data, through the CLI with no hand edits: a CSV of support tickets
(about 2,000 rows, 20 labels, a few repeated prompts, one that disagrees on its label) and a test file of
their own; `sweepboard lock`, then a sweep whose config sets a prompt template and metric accuracy without
listing the labels. Nothing may train on a test row, and the test scores must come from real predictions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from trainers.config import DataConfig
from trainers.data import check, content_sha256, row_key

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

LABELS = ["card_arrival", "card_lost", "refund_late", "exchange_rate", "pin_blocked", "top_up_failed",
          "transfer_pending", "cash_withdrawal", "wrong_amount", "account_closed", "fee_charged", "apple_pay",
          "verify_identity", "change_address", "card_declined", "direct_debit", "beneficiary", "age_limit",
          "country_support", "disposable_card"]  # fmt: skip
ROWS, REPEATS, CONFLICTS, TEST_ROWS, SHARED = 2000, 3, 1, 200, 15


def ticket(i: int) -> dict[str, str]:
    label = LABELS[i % len(LABELS)]
    return {"text": f"Hi, about my {label.replace('_', ' ')} issue, case {i}: can you help?", "category": label}


def write_data(folder: Path) -> None:
    unique = [ticket(i) for i in range(ROWS - REPEATS - CONFLICTS)]
    repeats = [{**unique[i], "text": "  " + unique[i]["text"].upper()} for i in (10, 20, 30)]  # same answer
    conflict = [{**unique[40], "category": LABELS[(40 + 1) % len(LABELS)]}]  # same prompt, another label
    pd.DataFrame(unique + repeats + conflict).to_csv(folder / "train.csv", index=False)
    test = [ticket(i) for i in range(5000, 5000 + TEST_ROWS - SHARED)] + [unique[i] for i in range(100, 100 + SHARED)]
    pd.DataFrame(test).to_csv(folder / "test.csv", index=False)


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", PYTHONUNBUFFERED="1",
               SWEEPBOARD_CACHE=str(folder / "cache"), RAY_DEDUP_LOGS="0")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_lock_then_sweep_with_a_template_on_real_shaped_data(tmp_path: Path) -> None:
    write_data(tmp_path)
    locked = cli(tmp_path, "lock", "--data", "train.csv", "--prompt-column", "text", "--completion-column",
                 "category", "--test-source", "test.csv")  # fmt: skip
    assert locked.returncode == 0, locked.stderr[-3000:]
    for says in (f"{TEST_ROWS} examples", f"{ROWS} plain rows", "3 duplicate prompt(s) dropped",
                 "2 row(s) with conflicting duplicates dropped", f"{SHARED} row(s) matching a test row removed"):  # fmt: skip
        assert says in locked.stdout, locked.stdout

    template = "Ticket: {prompt}\nCategory:"
    data = {"source": "train.csv", "test_source": "test.csv", "prompt_column": "text", "completion_column": "category",
            "prompt_template": template, "metric": "accuracy", "val_size": 100}  # fmt: skip
    config = {"name": "story", "space": "smoke", "max_trials": 2, "concurrency": 2, "estimate_trial_seconds": 30,
              "resources": {"default": {"cpus": 1, "gpus": 0}},
              "trial": {"model": "builtin:tiny", "cache_dir": str(REPO / ".cache" / "models"), "steps": 4,
                        "batch_size": 4, "eval_every": 2, "max_new_tokens": 8, "threads": 1, "data": data}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    swept = cli(tmp_path, "sweep", "--budget", "5", "--config", "cfg.yaml")
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    assert "locked test set (verified)" in swept.stdout  # the sweep met the lock `lock` made, not a new one

    lock_dir = next((tmp_path / "cache" / "locks").iterdir())
    manifest = json.loads((lock_dir / "manifest.json").read_text())
    dropped = manifest["duplicates_dropped"] + manifest["conflicting_dropped"]
    assert (manifest["duplicates_dropped"], manifest["conflicting_dropped"]) == (3, 2)
    splits = check(DataConfig(**{**data, "source": str(tmp_path / "train.csv"), "lock_dir": str(lock_dir),
                                 "test_source": str(tmp_path / "test.csv")}))  # fmt: skip
    test_keys = {row_key(r) for r in splits.test}
    assert not test_keys & {row_key(r) for r in splits.train + splits.val}

    runs = [json.loads(p.read_text()) | {"_dir": str(p.parent)} for p in (tmp_path / "runs").rglob("metrics.json")]
    trials = [m for m in runs if m["method"] != "none"]
    assert len(trials) >= 1 and any(m["method"] == "none" for m in runs)
    for m in runs:
        assert m["n_test"] == TEST_ROWS and m["test_set_sha256"] == manifest["sha256"]
        assert m["n_train"] + m["n_val"] + manifest["removed_matching_test"] == ROWS - dropped
        assert m["train_set_sha256"] == content_sha256(splits.train)  # trained on these rows, none a test row
        assert sorted(m["labels"]) == sorted(LABELS)  # inferred from the data, not typed into the config
        preds = [json.loads(line) for line in Path(m["_dir"], "test_predictions.jsonl").read_text().splitlines()]
        assert len(preds) == TEST_ROWS and all(p["prompt"].startswith("Ticket: ") for p in preds)
        assert all(isinstance(p["predicted"], str) and p["score"] in (0.0, 1.0) for p in preds)
        assert math.isfinite(m["test_quality"])
        assert m["test_quality"] == pytest.approx(sum(p["score"] for p in preds) / TEST_ROWS)
