"""Cost of a trial, device-hours, and the projections the budget ledger uses."""

from __future__ import annotations

import pytest

from tracking.cost import affordable_seconds, device_hours, trial_cost
from tracking.prices import DeviceInfo, price_per_hour


def test_trial_cost_is_wall_hours_times_price() -> None:
    quote = price_per_hour(DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 1, 16, 85.0), gpus=1, cpus=8)
    assert quote.usd_per_hour == pytest.approx(3.36)
    assert trial_cost(1800, quote) == pytest.approx(1.68)
    assert trial_cost(0, quote) == 0.0
    cpu = price_per_hour("cpu", gpus=0, cpus=2)
    assert trial_cost(3600, cpu) == pytest.approx(0.09)


def test_override_quote_is_used_as_is() -> None:
    quote = price_per_hour("cpu", 0, 2, override=10.0)
    assert trial_cost(360, quote) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_wall_times_are_rejected(bad: float) -> None:
    quote = price_per_hour("cpu", 0, 2)
    with pytest.raises(ValueError, match="wall_seconds"):
        trial_cost(bad, quote)
    with pytest.raises(ValueError, match="wall_seconds"):
        device_hours(bad, 1, 0)


def test_device_hours_counts_gpus_else_vcpus() -> None:
    assert device_hours(7200, gpus=2, cpus=16) == pytest.approx(4.0)
    assert device_hours(1800, gpus=0, cpus=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cannot be negative"):
        device_hours(10, gpus=-1, cpus=2)


def test_affordable_seconds_is_the_budget_over_the_price() -> None:
    quote = price_per_hour("NVIDIA A100-SXM4-80GB", gpus=1, cpus=0)
    assert affordable_seconds(1.30, quote) == pytest.approx(3600)
    assert affordable_seconds(-5, quote) == 0.0
