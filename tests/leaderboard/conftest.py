"""Hand-made leaderboard rows, shaped like load_runs output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from leaderboard.load import RAW_COLUMNS

SHA = "a" * 64


def row(name: str, method: str = "lora", quality: float | None = 0.8, cost: float | None = 1.0,
        **extra: Any) -> dict[str, Any]:
    """A run whose validation quality equals its test quality unless `val_quality=` says otherwise."""
    values: dict[str, Any] = {column: None for column in RAW_COLUMNS}
    values.update(
        sweep="demo", run_id=f"id-{name}", run_name=name, role="baseline" if method == "none" else "trial",
        method=method, status="finished", metric="exact_match", test_quality=quality, val_quality=quality,
        n_test=400,
        cost_usd=cost, device_hours=None if cost is None else cost / 2.5, test_set_sha256=SHA,
        git_commit="0123456789abcdef",
    )
    if method in ("lora", "qlora"):
        values.update(rank=16, alpha=32, target_modules="q_proj,k_proj,v_proj,o_proj", learning_rate=2e-4,
                      adapter_mb=6.5)
    values.update(extra)
    return values


@pytest.fixture
def frame() -> Callable[..., pd.DataFrame]:
    def build(*rows: dict[str, Any]) -> pd.DataFrame:
        return pd.DataFrame(list(rows), columns=list(RAW_COLUMNS))

    return build


@pytest.fixture
def make_row() -> Callable[..., dict[str, Any]]:
    return row
