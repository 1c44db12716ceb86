"""Ship an exported model through MLflow: logged to its run as an MLflow model (the transformers flavor),
registered as a version of a registered model with the run's test-set hash, quality and cost as tags, and
the alias `champion` moved to it, so that `models:/NAME@champion` loads the shipped model.

A full or merged model folder is loaded (on the CPU, in its saved dtype) and logged as a pipeline, which the
flavor saves again in safetensors: its way of logging a folder unloaded is broken with transformers 5. An
adapter goes in the flavor's PEFT form: the adapter weights, the tokenizer and a reference to the base model
(a local folder by its path, a hub id by the commit the hub has now), never a copy of the base weights. The
flavor takes a PEFT adapter only as a PeftModel in a pipeline (its path form wants a config.json and copies
the folder as a plain model), so the adapter is loaded here onto a skeleton of its base on the meta device:
the base's weights are never read.

Logging to a finished run neither reopens nor ends it: the model is logged by run id, no run is started, so the
run's status and end time, which the leaderboard reads, stay as they are. Called by the CLI process, the one
writer of MLflow.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from tracking.mlflow_conn import first_line, retry
from tracking.mlflow_store import get_run
from tracking.names import ALIAS_CHAMPION, TAG_BASE_MODEL, TAG_EXPORT_KIND

KINDS = ("model", "adapter")
TASK: Final = "text-generation"
LOGGED_NAME = "export"  # the logged model's name in its run
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
# Prompts in, answers out, for pyfunc and `mlflow models serve`: greedy and without the prompt by default, as the
# trials evaluate; the flavor's default signature takes no generation settings at all.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 64), ParamSpec("do_sample", "boolean", False),
                        ParamSpec("return_full_text", "boolean", False)]),
)


def register_export(client: MlflowClient, run_id: str, folder: Path, kind: str, base_model: str | None,
                    name: str, tags: Mapping[str, str], champion: bool = True) -> str:
    """Log `folder` (kind "model": a safetensors model folder with its tokenizer; "adapter": a PEFT adapter
    folder on `base_model`, a local folder or a hub id, by default the one its adapter_config.json names) to
    run `run_id`, register it as a new version of `name` (created if missing) tagged with `tags` (the caller's:
    test-set hash, test quality, cost), the kind and the base model, and with `champion` move the alias
    `champion` to it. Returns the version. Refuses a bad folder, base or run before anything is written."""
    if not name.strip() or any(c in name for c in "/:"):
        raise ValueError(f"registered model name {name!r}: MLflow takes a non-empty name without '/' or ':'; "
                         "pass another name")
    folder = Path(folder).resolve()
    base = check_export(folder, kind, base_model)
    run = get_run(client, run_id)  # an unknown run raises here, before anything is logged
    if run.info.lifecycle_stage == "deleted":
        raise ValueError(f"run {run_id} is deleted in MLflow at {client.tracking_uri}; restore it "
                         f"(mlflow runs restore --run-id {run_id}) or export another run")
    # MLflow's own context manager puts back the unset URI too (set_tracking_uri(get_tracking_uri()) would
    # pin the default and hide a later MLFLOW_TRACKING_URI).
    with _use_tracking_uri(client.tracking_uri):
        info = _log_model(run_id, folder, kind, base)
    _ensure_registered_model(client, name)
    version_tags = {**tags, TAG_EXPORT_KIND: kind, **({TAG_BASE_MODEL: base} if base else {})}
    version = retry(partial(client.create_model_version, name, info.model_uri, run_id=run_id,
                            tags=version_tags, model_id=info.model_id), f"version of model {name!r}", client)
    if champion:
        retry(partial(client.set_registered_model_alias, name, ALIAS_CHAMPION, version.version),
              f"alias {ALIAS_CHAMPION} of model {name!r}", client)
    return str(version.version)


def check_export(folder: Path, kind: str, base_model: str | None) -> str | None:
    """The base model an export refers to (None for a model folder without one), or ValueError naming what
    is missing and the fix."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r}: an export is one of {', '.join(KINDS)}")
    if not folder.is_dir():
        raise ValueError(f"export folder {folder} does not exist; export the run first")
    files = {path.name for path in folder.iterdir()}
    if kind == "model":
        missing = [n for n in ("config.json",) if n not in files]
        if not any(n.endswith(".safetensors") for n in files):
            missing.append("*.safetensors")
        if not any(n in files for n in _TOKENIZER_FILES):
            missing.append(" or ".join(_TOKENIZER_FILES))
        if missing:
            raise ValueError(f"export folder {folder} is no safetensors model folder with a tokenizer (no "
                             f"{', '.join(missing)}); save it with save_pretrained of the model and tokenizer")
        return base_model
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if n not in files]
    if missing:
        raise ValueError(f"export folder {folder} is no PEFT adapter folder (no {', '.join(missing)}); save "
                         "it with save_pretrained of the PeftModel, or use kind 'model' for a model folder")
    base = base_model or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {folder}: no base model given and none in its adapter_config.json; pass "
                         "the base model (a local folder or a hub id)")
    if Path(base).is_dir():
        return str(Path(base).absolute())  # the flavor refers to a local base by its absolute path
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(base)
    except HFValidationError:
        raise ValueError(f"adapter {folder}: base model {base!r} is neither a folder here nor a hub id; pass "
                         "the folder the adapter was trained on (check that it has not moved)") from None
    return base


def _log_model(run_id: str, folder: Path, kind: str, base: str | None) -> Any:
    """The flavor's ModelInfo of `folder` logged to the run. MLflow's model logging reads the global
    tracking URI, which the caller sets."""
    import mlflow.transformers

    common: dict[str, Any] = {"name": LOGGED_NAME, "task": TASK, "run_id": run_id, "signature": SIGNATURE,
                              "model_card": _model_card(folder), "pip_requirements": _requirements(kind)}
    if kind == "model":
        return mlflow.transformers.log_model(_model_pipeline(folder), **common)
    assert base is not None  # check_export gives an adapter its base
    local_base = base if Path(base).is_dir() else None  # a hub id: the flavor records the hub's commit
    return mlflow.transformers.log_model(_adapter_pipeline(folder, base), base_model_path=local_base, **common)


def _model_pipeline(folder: Path) -> Any:
    """The model folder loaded, in the dtype it was saved in, on the CPU. The flavor's way of logging a folder
    without loading it (transformers_model=path) fails in MLflow 3.17 with transformers 5: it takes the class
    name of check_task's "impl", which transformers 5 gives as a dotted string."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
    return pipeline(TASK, model=model, tokenizer=AutoTokenizer.from_pretrained(str(folder)), device="cpu")


def _adapter_pipeline(folder: Path, base: str) -> Any:
    """A text-generation pipeline of the adapter on a weightless (meta device) skeleton of its base: the
    flavor saves the adapter's weights and the tokenizer and only refers to the base, so loading the base's
    weights (minutes and its size in memory for a 7B base) would buy nothing."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as exc:  # a hub id where the hub cannot be reached, a folder of no model
        raise ValueError(f"adapter {folder}: base model {base!r} cannot be read ({first_line(exc)}); pass its "
                         "local folder, or a hub id where the hub is reachable") from exc
    with torch.device("meta"):
        # The base's own dtype: the flavor records the model's dtype and loads the base in it.
        skeleton = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None))
    with warnings.catch_warnings():
        # One warning per adapter tensor that loading it into the meta skeleton does nothing: done below.
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        # Any: the pipeline's types know no PeftModel, which it runs all the same.
        model: Any = PeftModel.from_pretrained(skeleton, str(folder))
    _load_adapter_weights(model, folder)
    has_tokenizer = any((folder / n).is_file() for n in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(folder) if has_tokenizer else base)
    # device "meta": a pipeline otherwise moves its model to the CPU or GPU, which meta tensors cannot do.
    return pipeline(TASK, model=model, tokenizer=tokenizer, device="meta")


def _load_adapter_weights(model: Any, folder: Path) -> None:
    """The adapter's own tensors in CPU memory, loaded from `folder`. PEFT puts an adapter on the device of the
    layer it adapts, the meta device of the skeleton here (also with low_cpu_mem_usage), where loading the
    weights is a no-op; so the adapter's layers get memory of their own first."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import load_peft_weights

    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for layer_name in module.adapter_layer_names:  # lora_A, lora_B, lora_embedding_A, ...
            layer = getattr(module, layer_name)
            for key in list(layer.keys()):
                if isinstance(layer[key], torch.nn.Module):
                    layer[key].to_empty(device="cpu")
                else:  # a ParameterDict's entry
                    layer[key] = torch.nn.Parameter(torch.empty_like(layer[key], device="cpu"),
                                                    requires_grad=False)
    weights = load_peft_weights(str(folder), device="cpu")
    set_peft_model_state_dict(model, weights)
    held = get_peft_model_state_dict(model)
    if set(held) != set(weights) or any(t.is_meta for t in held.values()):
        missing = sorted(set(weights) - {k for k, t in held.items() if not t.is_meta})
        raise ValueError(f"adapter {folder}: {len(missing)} of its tensors were not loaded ({', '.join(missing[:3])}"
                         "...); is it an adapter of another kind than LoRA? Export it merged (kind 'model')")


def _requirements(kind: str) -> list[str]:
    """What serving the model needs, pinned to what is installed here. The flavor's own list always pins
    torchvision too, and fails where it is not installed (it is no dependency here)."""
    from importlib.metadata import version

    names = ["transformers", "torch", "accelerate", "safetensors", *(["peft"] if kind == "adapter" else [])]
    return [f"{n}=={version(n).split('+')[0]}" for n in names]  # torch 2.13.0+cpu: the build is the user's


def _model_card(folder: Path) -> Any:
    """The export's own model card (its README.md) for the flavor, which otherwise asks the hub for one."""
    if not (folder / "README.md").is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    def create() -> None:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            # Also a create whose answer was lost and that a retry sent again.
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    retry(create, f"registered model {name!r}", client)


