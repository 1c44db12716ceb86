"""What a trial run records about its settings and its data: params from a nested config, dataset inputs.

No ray import: the settings arrive as plain data (sweeps/reconcile.py builds them from a Tune config).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Run
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE, MAX_PARAM_VAL_LENGTH

from tracking.mlflow_conn import retry
from tracking.names import TAG_DATASET_CONTEXT

# The splits a trial reads, as MLflow's dataset context, with the metrics.json keys of their hash and size.
SPLITS = (("test", "test_set_sha256", "n_test"), ("validation", "val_set_sha256", "n_val"),
          ("train", "train_set_sha256", "n_train"))
TAG_SHA256 = "sweepboard.sha256"  # the whole hash on the input (MLflow keeps a digest of 36 characters)
DIGEST_CHARS = 12  # as the console prints a lock's hash; a short digest reads well in the Dataset column
TRUNCATED = "…"


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys: {"data": {"source": s}} -> {"data.source": s}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def param_value(value: Any) -> str | None:
    """How a setting reads as an MLflow param; None for one that is not set. A value past MLflow's limit
    (a long prompt template, many labels) keeps its start and ends in an ellipsis, so it reads as cut."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)  # target_modules read back as "q_proj,k_proj,..."
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[:MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
    return text


def dataset_inputs(params: Mapping[str, Any], final: Mapping[str, Any]) -> list[DatasetInput]:
    """The locked test set, the validation and the training set a trial used, as MLflow dataset inputs.

    `params` are the run's settings (data.source, data.test_source, data.lock_dir), `final` its metrics.json:
    a split is logged once its hash is known (an evaluated trial's metrics hold them), never guessed."""
    source = str(params.get("data.source") or "")
    test_source = str(params.get("data.test_source") or "")
    lock_dir = str(params.get("data.lock_dir") or "")
    inputs = []
    for context, sha_key, count_key in SPLITS:
        sha = final.get(sha_key)
        if not isinstance(sha, str) or not sha:
            continue
        origin = (test_source or source) if context == "test" else source
        name = f"{_stem(origin)}-{'locked-test' if context == 'test' else context}"
        # The locked rows live in the lock folder; train and validation are carved from the source.
        where = {"uri": lock_dir or origin, "from": origin} if context == "test" else {"uri": origin}
        count = final.get(count_key)
        profile = json.dumps({"num_rows": int(count)}) if isinstance(count, (int, float)) else None
        dataset = Dataset(name=name, digest=sha[:min(DIGEST_CHARS, MAX_DATASET_DIGEST_SIZE)],
                          source_type="local", source=json.dumps(where), schema=None, profile=profile)
        inputs.append(DatasetInput(dataset, [InputTag(TAG_DATASET_CONTEXT, context), InputTag(TAG_SHA256, sha)]))
    return inputs


def missing_inputs(run: Run, inputs: list[DatasetInput]) -> list[DatasetInput]:
    """The inputs the run does not hold yet (by name and digest), so a resume or a sync logs none twice."""
    logged = {(i.dataset.name, i.dataset.digest) for i in (run.inputs.dataset_inputs if run.inputs else [])}
    return [i for i in inputs if (i.dataset.name, i.dataset.digest) not in logged]


def log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    if inputs:
        retry(lambda: client.log_inputs(run_id, datasets=inputs), f"dataset inputs of run {run_id}", client)


def _stem(source: str) -> str:
    """A short name for a data source: builtin:dates -> dates, /data/intents.csv -> intents."""
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    return Path(source).stem or "data"
