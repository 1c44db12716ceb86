"""The planner's model against real things: a real tiny-model trial, the recorded default-model trials, the
model shapes transformers builds, the price catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench.record import load_table
from sweeps.cli import main
from tracking import plan_model as pm
from tracking import planner
from tracking.prices import check_catalog, load_catalog
from trainers.config import from_dict
from trainers.model import config_of, count_params, resolve
from trainers.rows import load_rows

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO / ".cache" / "models"


def _shape(model: str) -> pm.Shape:
    cfg = from_dict({"model": model, "cache_dir": str(MODEL_CACHE)})
    return pm.shape_of(config_of(resolve(cfg), cfg), model)


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv, "--format", "json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_shapes_count_the_parameters_transformers_builds() -> None:
    from transformers import AutoModelForCausalLM

    for model in ("builtin:tiny", "smollm2-135m"):
        cfg = from_dict({"model": model, "cache_dir": str(MODEL_CACHE)})
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config_of(resolve(cfg), cfg))
        assert _shape(model).total_params() == count_params(built)[1]
    # The recorded default-model trials: LoRA r16 on attention and on all linear layers, and full.
    default = _shape("smollm2-135m")
    assert pm.lora_params(default, ["q_proj", "k_proj", "v_proj", "o_proj"], 16) == 1843200
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert pm.lora_params(default, all_linear, 16) == 4884480
    assert default.total_params() == 134515008


def test_params_give_llama_2_7b_shape() -> None:
    shape = pm.llama_like(pm.parse_params("7B"))
    assert (shape.hidden, shape.layers, shape.intermediate, shape.vocab) == (4096, 32, 11008, 32000)
    assert shape.total_params() == pytest.approx(6.74e9, rel=0.01)
    assert pm.llama_like(pm.parse_params("13b")).hidden == 5120  # Llama-2-13B's hidden size
    for bad in ("0", "-7B", "seven", "7X"):
        with pytest.raises(ValueError, match="--params"):
            pm.parse_params(bad)


def test_cpu_calibration_is_what_the_recorded_trials_measure() -> None:
    cfg = from_dict({"model": "smollm2-135m", "cache_dir": str(MODEL_CACHE)})
    tokens, prompt = planner.measured_tokens(cfg, load_rows(cfg.data))
    rows = load_table()
    # The measured example length agrees with what the recorded trials trained on (60 steps x 8 rows).
    assert tokens == pytest.approx(rows[0]["curve"][-1]["tokens_trained"] / 480, rel=0.02)
    train, evaluate = planner.cpu_calibration(rows, _shape("smollm2-135m"), tokens, prompt)
    assert train == pytest.approx(planner.CPU_TRAIN_FLOPS_PER_THREAD, rel=0.01)
    assert evaluate == pytest.approx(planner.CPU_EVAL_FLOPS_PER_THREAD, rel=0.01)


def test_memory_against_the_recorded_default_model_trials() -> None:
    """The recorded trials ran fp32 (no native bf16 there): full fine-tuning peaked at 3.27-3.33 GiB, LoRA's
    weights (base + adapters) were 520.2 MiB, QLoRA's held the NF4 base."""
    shape, work = _shape("smollm2-135m"), None
    rows = {r["key"]: r["final"] for r in load_table()}
    cpu = planner.Device("cpu", "cpu", 24.0, 0.0, 0.0, False)
    settings = from_dict({"model": "smollm2-135m", "steps": 60, "batch_size": 8, "method": "full"})
    work = planner.Workload(settings, 3000 - 400, 100, 300, 42.9, 31.8)
    full = planner.plan_method(shape, "full", work, cpu, 0, 1, load_catalog())
    measured = rows["full-lr1e-05"]["peak_memory_mb"] * 2**20 / 1e9
    assert full["memory_gb"] == pytest.approx(measured, rel=0.15)  # planned 3.4 GB against 3.43 measured
    parts = pm.memory_bytes(shape, "lora", 1843200, 8, 43, False, False)
    assert parts["weights"] / 2**20 == pytest.approx(rows["lora-r16-a32-attention-lr2e-04"]["weights_mb"], rel=0.01)


def test_tiny_plan_against_a_real_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One real LoRA trial on the 2-layer tiny Llama, and the plan of the same trial. Band: wall time and cost
    within a factor of 2, peak memory within 25% (planned 4.3 s, $5.3e-5, 0.857 GB; measured 4.15-4.17 s,
    $5.2e-5, 0.864-0.866 GB on a busy 2-core machine). The tiny model's FLOPs are nothing: its seconds
    are the startup and the per-call overhead, so it checks those; the FLOP rates are checked against the
    recorded default-model trials (test_cpu_calibration_is_what_the_recorded_trials_measure)."""
    # One thread, as bench/record.py records: two threads on a shared 2-core machine wait on each other.
    trial = {"model": "builtin:tiny", "cache_dir": str(MODEL_CACHE), "threads": 1, "steps": 6, "eval_every": 3, "batch_size": 4,
             "max_new_tokens": 12, "data": {"n_examples": 300, "test_size": 40, "val_size": 20,
                                            "lock_dir": str(tmp_path / "lock")}}  # fmt: skip
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "resources": {"default": {"cpus": 1}}, "trial": trial}))
    lora = _plan(capsys, "--config", str(config))["methods"]["lora"]
    # Its own process, as `sweepboard train` runs it: the peak memory is the trial's, not this test run's.
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump({**trial, "method": "lora", "learning_rate": 1e-3}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sweeps.cli", "train", "--config", str(tmp_path / "trial.yaml"), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    measured = json.loads((out / "metrics.json").read_text())
    assert lora["tokens_to_train"] == pytest.approx(measured["tokens_trained"], rel=0.1)
    assert 0.5 <= lora["hours_per_trial"] * 3600 / measured["wall_seconds"] <= 2.0
    assert 0.5 <= lora["usd_per_trial"] / measured["cost_usd"] <= 2.0
    assert lora["memory_gb"] == pytest.approx(measured["peak_memory_mb"] * 2**20 / 1e9, rel=0.25)
    assert lora["trained_params"] == measured["trainable_params"]


def test_guides_7b_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    """The guides' 7B inputs: 5,000 examples of 512 tokens, 3 epochs, batch 4. They put LoRA on one A100 at
    1-3 h and $10-30, QLoRA on a 16 GB T4 at 2-4 h and $5-15, full on 2x A100 80GB at 4-8 h and $50-150.
    The hours of LoRA land; the dollars cannot at the catalog's $1.30 per A100-hour ($10-30 for 1-3 h is
    $10/h, a hyperscaler's 8-GPU node); full fine-tuning at the LoRA-derived MFU takes under an hour on two
    A100s (4-8 h would be 2-5% MFU); the T4 at 17% of its 65 TFLOPS with checkpointing takes about 10 h."""
    common = ("--params", "7B", "--examples", "5000", "--seq-len", "512", "--epochs", "3", "--batch-size", "4")
    a100 = _plan(capsys, *common, "--gpu", "a100-80gb", "--budget", "300")["methods"]
    assert a100["lora"]["fits"] and 1.0 <= a100["lora"]["hours_per_trial"] <= 3.0
    assert 1.0 <= a100["lora"]["usd_per_trial"] <= 3.0  # below the guide's $10-30, see above
    assert a100["lora"]["trials_affordable"] >= 100
    assert a100["full"]["status"] == "needs 2 GPUs" and a100["full"]["gpus_needed"] == 2
    two = _plan(capsys, *common, "--gpu", "a100-80gb", "--gpus", "2")["methods"]["full"]
    assert two["fits"] and two["resources"]["gpus"] == 2 and 0.5 <= two["hours_per_trial"] <= 1.5
    t4 = _plan(capsys, *common, "--gpu", "t4")["methods"]
    assert t4["qlora"]["fits"] and t4["qlora"]["gradient_checkpointing"]
    assert t4["qlora"]["memory_gb"] < 16 < t4["none"]["memory_gb"]  # the fp32 baseline does not fit a T4
    assert 5.0 <= t4["qlora"]["hours_per_trial"] <= 15.0 and t4["qlora"]["usd_per_trial"] < 15


def test_catalog_gpu_specs_are_checked() -> None:
    data = yaml.safe_load((REPO / "tracking" / "prices.yaml").read_text())
    assert all(load_catalog().gpus[i].specs for i in range(len(data["gpus"])))
    data["gpus"]["t4"]["peak_tflops_bf16"] = -1
    data["gpus"]["l4"]["spec_source"] = "a blog"
    problems = check_catalog(data, "prices.yaml")
    assert any("gpus.t4.peak_tflops_bf16" in p and "positive" in p for p in problems)
    assert any("gpus.l4.spec_source" in p for p in problems)
