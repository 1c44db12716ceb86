"""A trial run's validation curve, read back from MLflow for the decision's learning-rate brackets."""

from __future__ import annotations

import math

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CURVE_METRIC = "val_quality"  # logged with step = the training step (tracking/names.py)


def val_curve(client: MlflowClient, run: Run) -> dict[int, float] | None:
    """Step -> val_quality of one run (one history call); None when it logged no finite value.

    Rates are compared at a step every compared trial reached (search_spaces/rates.py), so the whole curve
    is needed, not the final value: a pruned trial's last point is an earlier step than a finished one's."""
    if CURVE_METRIC not in run.data.metrics:
        return None  # no history to ask for: spares a call per run that failed before validating
    try:
        history = client.get_metric_history(run.info.run_id, CURVE_METRIC)
    except MlflowException:  # a store that stopped answering costs the brackets a point, not the board
        return None
    curve: dict[int, float] = {}
    # A resumed trial may report a step again: the later value is what it logged last at that step.
    for point in sorted(history, key=lambda m: (m.step, m.timestamp)):
        if math.isfinite(point.value):  # a diverged or failed trial reports NaN
            curve[int(point.step)] = float(point.value)
    return curve or None
