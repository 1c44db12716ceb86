"""Choosing on validation, and pairing two runs' test scores.

The search pruned and promoted trials on validation quality, so validation is the split that chooses here
too: the best run, the recommended run and the method decision are picked by val_quality. The locked test
score of the chosen runs is what is reported; picking by it would make the reported score the maximum of many
noisy test scores (an optimistic one), and the test set would no longer be held out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from leaderboard import paired

SELECTED_ON = "validation"
SELECTION_COLUMN = "val_quality"


def eligible(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs that can be chosen: a test score to report and a validation score to choose by."""
    return rows[rows["test_quality"].notna() & rows[SELECTION_COLUMN].notna()]


def best_by_validation(rows: pd.DataFrame) -> pd.Series | None:
    """The eligible run with the highest validation quality; on equal validation quality the cheaper, then
    the first by run id (never the test score: that would choose on test after all)."""
    candidates = eligible(rows)
    if candidates.empty:
        return None
    ordered = candidates.assign(_cost=candidates["cost_usd"].fillna(np.inf)).sort_values(
        [SELECTION_COLUMN, "_cost", "run_id"], ascending=[False, True, True], kind="stable")
    return ordered.drop(columns="_cost").iloc[0]


def scores_by_run(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """run_id -> per-example test scores, for the rows that have them."""
    if "scores" not in rows:
        return {}
    out = {}
    for run_id, scores in zip(rows["run_id"], rows["scores"], strict=True):
        if isinstance(scores, (list, tuple, np.ndarray)) and len(scores) > 0:
            out[str(run_id)] = np.asarray(scores, dtype=float)
    return out


def pair(a: pd.Series, b: pd.Series, scores: Mapping[str, np.ndarray]) -> paired.Paired | None:
    """The paired test of run a against run b on the locked test set, or None when they cannot be paired:
    a per-example score file missing, another test set (or no hash to tell), another metric, another length."""
    x, y = scores.get(str(a["run_id"])), scores.get(str(b["run_id"]))
    if x is None or y is None or len(x) != len(y):
        return None
    sha_a, sha_b = a.get("test_set_sha256"), b.get("test_set_sha256")
    if not isinstance(sha_a, str) or sha_a != sha_b or a.get("metric") != b.get("metric"):
        return None
    return paired.compare(x, y)
