"""Each method end to end on the tiny model: what run_trial returns, and what it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from search_spaces.targets import TargetModulesError
from trainers import run_trial
from trainers.data import LockMismatchError

REQUIRED = {
    "method", "rank", "alpha", "target_modules", "learning_rate", "steps", "test_quality", "val_quality",
    "test_set_sha256", "n_test", "wall_seconds", "load_seconds", "train_seconds", "eval_seconds",
    "tokens_trained", "tokens_per_second", "peak_memory_mb", "trainable_params", "total_params",
    "adapter_mb", "device", "cost_usd", "status", "epochs", "n_train", "n_val", "train_set_sha256",
    "val_set_sha256", "truncated_train", "truncated_val", "truncated_test", "data_format",
}  # fmt: skip


@pytest.mark.parametrize("method", ["none", "lora", "qlora", "full"])
def test_each_method_writes_metrics(method: str, tiny_config: dict[str, Any]) -> None:
    reports: list[dict[str, Any]] = []
    metrics = run_trial({**tiny_config, "method": method}, report=lambda m, ckpt: reports.append(m))
    out = Path(tiny_config["out"])
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) >= REQUIRED
    assert written == json.loads(json.dumps(metrics))
    assert written["method"] == method and written["status"] == "finished"
    assert written["n_test"] == 40 and len(written["test_set_sha256"]) == 64
    assert (written["n_train"], written["n_val"], written["data_format"]) == (200, 20, "plain")
    assert written["truncated_train"] == written["truncated_val"] == written["truncated_test"] == 0
    assert 0.0 <= written["test_quality"] <= 1.0
    preds = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 40 and all({"expected", "predicted", "score"} <= set(p) for p in preds)
    assert written["test_quality"] == pytest.approx(sum(p["score"] for p in preds) / 40)
    assert written["cost_usd"] > 0 and written["wall_seconds"] >= written["train_seconds"]
    assert written["peak_memory_mb"] > 0
    if method == "none":
        assert reports == [] and written["trainable_params"] == 0 and written["tokens_trained"] == 0
        return
    # Periodic validation reached the callback at steps 2 and 4, with cost so far.
    assert [r["step"] for r in reports] == [2, 4]
    assert all(r["cost_usd"] > 0 and r["phase"] == "train" for r in reports)
    assert written["steps_done"] == 4 and written["tokens_trained"] > 0
    # A finished trial keeps its final model once, in Hugging Face format, and no optimizer state.
    assert not (out / "checkpoint").exists()
    assert not [f for f in out.rglob("*.pt")]
    if method in ("lora", "qlora"):
        assert (out / "adapter" / "adapter_config.json").is_file()
        assert not (out / "model").exists()
        assert 0 < written["trainable_params"] < written["total_params"] / 10
        assert written["target_modules"] == "k_proj,o_proj,q_proj,v_proj"
    else:
        assert written["trainable_params"] == written["total_params"]
        assert written["rank"] is None and written["target_modules"] is None
        assert not (out / "adapter").exists()
        shipped = _loads_as_trained(out / "model")
        assert shipped == pytest.approx(written["adapter_mb"] * 2**20, rel=0.02)  # one copy of the weights


def test_qlora_weights_take_less_memory_than_lora(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    # fp32: NF4 against an fp32 base. (On CUDA with bf16 LoRA's base is bf16, and the tiny model is mostly its
    # embedding matrix, which QLoRA keeps unquantized in fp32, so there the bf16 LoRA base would be smaller.)
    fp32 = {**tiny_config, "steps": 2, "precision": "fp32"}
    lora = run_trial({**fp32, "method": "lora", "out": str(tmp_path / "l")})
    qlora = run_trial({**fp32, "method": "qlora", "out": str(tmp_path / "q")})
    assert qlora["weights_mb"] < lora["weights_mb"]
    assert (lora["weight_dtype"], qlora["weight_dtype"]) == ("float32", "nf4")
    bf16 = run_trial({**fp32, "method": "lora", "precision": "bf16", "out": str(tmp_path / "b")})
    # Under bf16 autocast LoRA's frozen base is held in bf16 too: half its weight memory.
    assert (bf16["weight_dtype"], bf16["compute_dtype"]) == ("bfloat16", "bfloat16")
    assert bf16["weights_mb"] < lora["weights_mb"]


def test_qlora_holds_base_in_nf4(tiny_config: dict[str, Any]) -> None:
    import bitsandbytes as bnb

    from trainers import model as model_mod
    from trainers.config import from_dict

    cfg = from_dict({**tiny_config, "method": "qlora"})
    _, model = model_mod.load(model_mod.resolve(cfg), cfg, "cpu", __import__("torch").float32)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_type == "nf4"
    assert q_proj.lora_A["default"].weight.requires_grad


def test_killed_trial_continues_from_its_checkpoint(tiny_config: dict[str, Any]) -> None:
    cfg = {**tiny_config, "method": "lora", "steps": 6}

    class Killed(Exception):
        pass

    def die_after_first(metrics: dict[str, Any], ckpt: str | None) -> None:
        raise Killed  # the trial's process dies right after its first checkpoint

    with pytest.raises(Killed):
        run_trial(cfg, report=die_after_first)
    state = json.loads((Path(cfg["out"]) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    seen: list[int] = []
    metrics = run_trial(cfg, report=lambda m, ckpt: seen.append(m["step"]))
    assert seen == [4, 6]  # steps 1-2 were not trained again
    assert metrics["steps_done"] == 6
    assert metrics["wall_seconds"] > state["elapsed_seconds"]  # the first attempt's time is billed too


def test_report_can_stop_training_early(tiny_config: dict[str, Any]) -> None:
    metrics = run_trial({**tiny_config, "method": "lora", "steps": 8}, report=lambda m, ckpt: True)
    assert metrics["status"] == "stopped" and metrics["steps_done"] == 2
    assert metrics["n_test"] == 40  # a stopped trial still gets its final test score


def test_unknown_target_module_is_named(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(TargetModulesError, match="qkv_proj.*available"):
        run_trial({**tiny_config, "method": "lora", "target_modules": "qkv_proj"})


def test_changed_test_set_stops_the_trial(tiny_config: dict[str, Any]) -> None:
    run_trial({**tiny_config, "method": "none"})
    test_file = Path(tiny_config["data"]["lock_dir"]) / "test.jsonl"
    lines = test_file.read_text().splitlines()
    lines[0] = lines[0].replace("ISO", "iso")
    test_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        LockMismatchError, match="changed: sha256 is [0-9a-f]{64}, the lock says [0-9a-f]{64}"
    ):
        run_trial({**tiny_config, "method": "none"})


def test_a_sweep_trial_pays_for_what_ray_reserved(tiny_config: dict[str, Any]) -> None:
    """The sweep hands a trial its method's reservation (all workers' GPUs and CPUs, and the GPU model the
    driver priced): cost and device hours are for all of it, not for the one process that ran here."""
    from tracking.prices import gpu_by_key, load_catalog

    handed = {"reserved_gpus": 2, "reserved_cpus": 16, "gpu": "a100-80gb"}
    m = run_trial({**tiny_config, "method": "none", **handed})
    catalog = load_catalog()
    usd = 2 * gpu_by_key(catalog, "a100-80gb").usd_per_hour + 16 * catalog.cpu_usd_per_vcpu_hour
    assert m["usd_per_hour"] == pytest.approx(usd) and m["cost_usd"] == pytest.approx(m["wall_seconds"] * usd / 3600)
    assert m["device_hours"] == pytest.approx(2 * m["wall_seconds"] / 3600)  # GPU-hours of both GPUs
    assert m["device"] == "cpu"  # where it ran: this machine has no GPU


def _loads_as_trained(folder: Path) -> int:
    """The full fine-tuning model folder loads with transformers' own from_pretrained (model and tokenizer);
    returns the bytes of its safetensors weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = list(folder.glob("*.safetensors"))
    assert weights, f"no safetensors weights in {folder}"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.num_parameters() > 0 and tok("12 May").input_ids
    return sum(f.stat().st_size for f in weights)
