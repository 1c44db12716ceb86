"""tracking.registry against a real MLflow SQLite store (tracking and Model Registry) with real PEFT on the
tiny model: a LoRA adapter and a merged model folder, registered, aliased and loaded back through
`models:/NAME@champion`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.transformers
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from safetensors.torch import load_file

from tracking.names import (
    ALIAS_CHAMPION,
    TAG_BASE_MODEL,
    TAG_COST,
    TAG_EXPORT_KIND,
    TAG_ROLE,
    TAG_STATUS,
    TAG_TEST_QUALITY,
    TAG_TEST_SHA,
)
from tracking.registry import register_export
from trainers.config import TrialConfig
from trainers.model import load, resolve

MODEL_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "models"
PROMPT = "Question: what is 12 plus 7?\nAnswer:"
NEW_TOKENS = 8
SHA = "d" * 64


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter on the tiny model (B matrices made non-zero, so it changes what the model says), the
    same adapter merged into a model folder, and the greedy tokens both generate for PROMPT."""
    root = tmp_path_factory.mktemp("exports")
    cfg = TrialConfig(method="lora", model="builtin:tiny", cache_dir=str(MODEL_CACHE), rank=4, alpha=8)
    base = resolve(cfg)
    tok, model = load(base, cfg, "cpu", torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(std=0.5)
    model.eval()
    model.save_pretrained(root / "adapter")
    expected = _greedy(model, tok)
    with model.disable_adapter():
        untouched = _greedy(model, tok)
    assert expected != untouched  # else loading back could drop the adapter unseen
    merged = model.merge_and_unload()
    merged.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "model" / "README.md").write_text("# tiny merged\n\nA model card.\n")
    return {"base": base, "adapter": root / "adapter", "model": root / "model", "expected": expected,
            "text": tok.decode(expected, skip_special_tokens=True)}


@pytest.fixture(autouse=True)
def _away_from_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing MLflow writes by default lands in the repository


def finished_run(client: MlflowClient, root: Path, name: str = "demo") -> str:
    """A trial run as a finished sweep leaves it: tagged, with a final metric, FINISHED."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment_id, tags={TAG_ROLE: "trial", TAG_STATUS: "finished", TAG_TEST_SHA: SHA})
    client.log_metric(run.info.run_id, "cost_usd", 0.01, step=0)  # logging a model copies step-0 metrics
    client.log_metric(run.info.run_id, "test_quality", 0.5, step=4)
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)


def version_tags(quality: float, cost: float) -> dict[str, str]:
    return {TAG_TEST_SHA: SHA, TAG_TEST_QUALITY: str(quality), TAG_COST: str(cost)}


def test_adapter_registered_tagged_champion_and_loads(client, exports, tmp_path):
    run_id = finished_run(client, tmp_path)
    before = client.get_run(run_id)
    version = register_export(client, run_id, exports["adapter"], "adapter", exports["base"], "demo",
                              version_tags(0.5, 0.012))
    assert version == "1"
    registered = client.get_model_version("demo", version)
    assert registered.run_id == run_id
    assert registered.tags == {TAG_TEST_SHA: SHA, TAG_TEST_QUALITY: "0.5", TAG_COST: "0.012",
                               TAG_EXPORT_KIND: "adapter", TAG_BASE_MODEL: str(Path(exports["base"]).absolute())}
    assert str(client.get_model_version_by_alias("demo", ALIAS_CHAMPION).version) == "1"
    # The run keeps what the leaderboard reads: status, end time, tags; and it lists the model among its outputs.
    after = client.get_run(run_id)
    assert before.info.status == "FINISHED" and before.info.end_time
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert (after.data.tags, after.data.metrics) == (before.data.tags, before.data.metrics)
    assert client.list_artifacts(run_id) == []  # the model lives with the logged model, not the run's files
    assert [f"models:/{m.model_id}" for m in after.outputs.model_outputs] == [registered.source]
    # Stored as an adapter that refers to its base, not as a copy of the base's weights.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/demo/{version}", tracking_uri=client.tracking_uri,
                                                     dst_path=str(tmp_path / "dl")))
    stored = load_file(local / "peft" / "adapter_model.safetensors")
    shipped = load_file(exports["adapter"] / "adapter_model.safetensors")
    assert stored.keys() == shipped.keys() and all(torch.equal(stored[k], shipped[k]) for k in shipped)
    assert not (local / "model").exists()
    with _use_tracking_uri(client.tracking_uri):
        pipe = mlflow.transformers.load_model("models:/demo@champion")
    assert type(pipe.model).__name__ == "PeftModelForCausalLM"
    assert _greedy(pipe.model, pipe.tokenizer) == exports["expected"]


def test_model_folder_moves_the_alias_and_loads(client, exports, tmp_path):
    first = finished_run(client, tmp_path)
    second = finished_run(client, tmp_path)
    before = client.get_run(second).info
    assert register_export(client, first, exports["adapter"], "adapter", None, "demo",
                           version_tags(0.5, 0.012)) == "1"  # the base named by adapter_config.json
    version = register_export(client, second, exports["model"], "model", None, "demo", version_tags(0.75, 0.2))
    assert version == "2"
    assert client.get_model_version_by_alias("demo", ALIAS_CHAMPION).run_id == second
    assert client.get_model_version("demo", "2").tags == {**version_tags(0.75, 0.2), TAG_EXPORT_KIND: "model"}
    assert client.get_model_version("demo", "1").aliases == []
    after = client.get_run(second).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
    with _use_tracking_uri(client.tracking_uri):
        pipe = mlflow.transformers.load_model("models:/demo@champion")
        # Greedy and without the prompt unless told otherwise (the logged signature's defaults).
        answer = mlflow.pyfunc.load_model("models:/demo@champion").predict([PROMPT],
                                                                           params={"max_new_tokens": NEW_TOKENS})
    assert type(pipe.model).__name__ == "LlamaForCausalLM"
    # The merged model says what the adapter said (greedy; merging reorders float sums, not these tokens).
    assert _greedy(pipe.model, pipe.tokenizer) == exports["expected"]
    assert list(answer) == [exports["text"].lstrip()]  # pyfunc leaves out the space that starts the answer
    local = Path(mlflow.artifacts.download_artifacts(f"models:/demo/{version}", tracking_uri=client.tracking_uri,
                                                     dst_path=str(tmp_path / "dl")))
    assert "A model card." in (local / "model_card.md").read_text()


def test_not_champion_keeps_the_alias(client, exports, tmp_path):
    first, second = finished_run(client, tmp_path), finished_run(client, tmp_path)
    register_export(client, first, exports["model"], "model", None, "demo", version_tags(0.5, 0.1))
    assert register_export(client, second, exports["model"], "model", None, "demo", version_tags(0.4, 0.1),
                           champion=False) == "2"
    assert str(client.get_model_version_by_alias("demo", ALIAS_CHAMPION).version) == "1"


@pytest.mark.parametrize("case, fix", [
    ("kind", "an export is one of model, adapter"),
    ("adapter-as-model", "no safetensors model folder"),
    ("model-as-adapter", "use kind 'model'"),
    ("moved-base", "neither a folder here nor a hub id"),
    ("base-no-model", "cannot be read"),
    ("no-folder", "does not exist"),
    ("name", "without '/' or ':'"),
])
def test_bad_exports_refused_before_anything_is_written(client, exports, tmp_path, case, fix):
    run_id = finished_run(client, tmp_path)
    folder, kind, base = {
        "kind": (exports["model"], "merged", None),
        "adapter-as-model": (exports["adapter"], "model", None),
        "model-as-adapter": (exports["model"], "adapter", exports["base"]),
        "moved-base": (exports["adapter"], "adapter", str(tmp_path / "gone" / "tiny-llama")),
        "base-no-model": (exports["adapter"], "adapter", str(tmp_path)),
        "no-folder": (tmp_path / "nothing", "model", None),
        "name": (exports["model"], "model", None),
    }[case]
    with pytest.raises(ValueError, match=fix):
        register_export(client, run_id, folder, kind, base, "sweeps/demo" if case == "name" else "demo",
                        version_tags(0.5, 0.1))
    assert client.search_registered_models() == []
    assert client.get_run(run_id).outputs.model_outputs == []


def test_unknown_run_refused(client, exports):
    with pytest.raises(MlflowException, match="not found|does not exist|No Run"):
        register_export(client, "0" * 32, exports["model"], "model", None, "demo", version_tags(0.5, 0.1))
    assert client.search_registered_models() == []


def _greedy(model: Any, tok: Any) -> list[int]:
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return [int(t) for t in out[0, ids.shape[1]:]]
