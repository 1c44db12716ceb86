"""`sweepboard plan`: its JSON, its table, and each bad input as a named error with exit code 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sweeps.cli import main

REPO = Path(__file__).resolve().parents[2]
KEYS = {"fits", "gpus_needed", "memory_gb", "tokens_per_second", "hours_per_trial", "usd_per_trial",
        "trials_affordable"}  # fmt: skip
SEVEN_B = ["--params", "7B", "--examples", "5000", "--seq-len", "512", "--epochs", "3"]


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["plan", *argv]) == 2
    return capsys.readouterr().err


def test_json_has_every_key_per_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SEVEN_B, "--gpu", "h100-sxm", "--budget", "300", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert list(plan["methods"]) == ["none", "lora", "qlora", "full"]
    for method, entry in plan["methods"].items():
        assert set(entry) >= KEYS, method
        assert entry["trials_affordable"] == int(300 // entry["usd_per_trial"])
        assert set(entry["memory_breakdown_gb"]) == {"weights", "gradients", "optimizer", "activations", "runtime"}
    assert plan["inputs"]["n_train"] == 5000 - 300 - 100  # the test and validation sets come out of the data
    methods = plan["methods"]
    # Same base, same tokens: full fine-tuning computes 6N a token against LoRA's 4N (per GPU: it needs two
    # H100s), and QLoRA holds less.
    full, lora = methods["full"], methods["lora"]
    assert full["gpus_needed"] == 2 and lora["gpus_needed"] == 1
    assert full["tokens_per_second"] / 2 < lora["tokens_per_second"]
    assert methods["qlora"]["memory_gb"] < methods["lora"]["memory_gb"] < methods["full"]["memory_gb"]


def test_table_names_each_method_and_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SEVEN_B, "--gpu", "a100-80gb"]) == 0
    out = capsys.readouterr().out
    for word in ("none", "lora", "qlora", "full", "needs 2 GPUs", "$/trial", "6.74B"):
        assert word in out


def test_default_config_plans_on_this_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", "default", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    lora = plan["methods"]["lora"]
    assert lora["fits"] and lora["resources"] == {"gpus": 0, "cpus": 2.0, "gpu": None}
    assert lora["tokens_to_train"] == pytest.approx(60 * 8 * 42.9, rel=0.05)  # the recorded trials' 20,610
    assert lora["usd_per_hour"] == pytest.approx(2 * 0.045)


def test_unknown_gpu_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, "--params", "7B", "--gpu", "b200")
    assert "'b200'" in err and "a100-80gb" in err and "t4" in err


def test_unreadable_model_suggests_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--params 7B" in _error(capsys, "--model", str(tmp_path / "no-such-model"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))  # GPT-2 names its sizes
    (odd / "model.safetensors").write_text("")
    assert "--params" in _error(capsys, "--model", str(odd), "--examples", "1000")


@pytest.mark.parametrize(
    "argv",
    [["--seq-len", "0"], ["--examples", "-5"], ["--batch-size", "0"], ["--epochs", "-1"], ["--budget", "0"],
     ["--gpus", "0", "--gpu", "t4"], ["--params", "0"]],
)  # fmt: skip
def test_zero_or_negative_sizes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    flag = argv[0] if argv[0] != "--gpus" else "--gpus"
    base = [] if "--params" in argv else ["--params", "7B"]
    assert flag in _error(capsys, *base, *argv)


def test_budget_that_buys_no_trial(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, *SEVEN_B, "--gpu", "a100-80gb", "--budget", "0.01")
    assert "buys no trial" in err and "raise the budget" in err


def test_too_few_examples_and_gpus_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert "no training rows" in _error(capsys, "--params", "7B", "--examples", "350")
    assert "--gpu KEY" in _error(capsys, "--params", "7B", "--gpus", "2")


def test_make_plan_passes_its_options() -> None:
    dry = subprocess.run(["make", "-n", "plan", "PARAMS=7B", "GPU=t4", "BUDGET=300", "FORMAT=json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "sweepboard plan" in dry and "--params \"7B\"" in dry and "--gpu \"t4\"" in dry
    assert "--budget \"300\"" in dry and "--format \"json\"" in dry


def test_data_file_is_counted_and_tokenized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(600)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = str(REPO / ".cache")
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps({"name": "sums", "gpu": "a100-80gb", "resources": {"full": {"gpus": 2, "workers": 2}},
                                  "trial": {"model": "builtin:tiny", "cache_dir": cache + "/models", "steps": 10}}))
    assert main(["plan", "--config", str(config), "--data", str(data), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"]["n_train"] == 600 - 300 - 100
    assert 5 < plan["inputs"]["tokens_per_example"] < 30  # a short sum and its answer, by the model's tokenizer
    methods = plan["methods"]
    assert methods["full"]["resources"] == {"gpus": 4, "cpus": 2.0, "gpu": "a100-80gb"}  # 2 workers x 2 GPUs
    # The config reserves no GPU for LoRA, so its trials run, and are planned, on CPU.
    assert methods["lora"]["resources"] == {"gpus": 0, "cpus": 2.0, "gpu": None}


def test_sweep_refuses_a_method_that_does_not_fit_its_resources(tmp_path: Path) -> None:
    """Full fine-tuning of a 7B shape on one 16 GB T4 cannot run: the sweep says so before anything starts,
    naming the GPUs the plan needs, together with the other problems of the config."""
    from sweeps.sweep import run
    from trainers.config import ConfigError

    model = tmp_path / "llama-7b-shape"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}))  # fmt: skip
    config = tmp_path / "big.yaml"
    config.write_text(json.dumps({
        "name": "big", "space": "smoke", "gpu": "t4", "storage": str(tmp_path / "runs"),
        "resources": {"default": {"cpus": 4, "gpus": 1}},
        "trial": {"model": str(model), "max_seq_len": 512, "data": {"lock_dir": str(tmp_path / "lock")}}}))  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        run(100, str(config), {})
    problems = [p for p in caught.value.problems if p.startswith("method full:")]
    assert len(problems) == 1, caught.value.problems
    assert "needs" in problems[0] and "GPUs" in problems[0] and "resources.full gives 1 x 1 GPU(s)" in problems[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_calibration_file_keeps_one_entry_per_trial_and_survives_a_torn_line(tmp_path: Path) -> None:
    from tracking import calibration

    file = tmp_path / "cal.jsonl"
    entry = {"device": "cpu|X|fp32", "method": "lora", "factors": {"startup": 1.0, "train": 2.0, "evaluate": 3.0},
             "sweep_id": "s", "trial_id": "t1"}  # fmt: skip
    calibration.append(entry, file)
    calibration.append(entry, file)  # a resumed sweep reporting the finished trial again
    with open(file, "a") as f:
        f.write('{"device": "cpu|X|fp32", "meth')  # a writer killed mid-line
    calibration.append({**entry, "trial_id": "t2", "factors": {"train": 4.0}}, file)
    rows = calibration.load(file)
    assert [r["trial_id"] for r in rows] == ["t1", "t2"]
    got = calibration.factors("cpu|X|fp32", rows)
    assert got == {"lora": {"startup": 1.0, "train": 3.0, "evaluate": 3.0, "trials": 2}}
    assert calibration.factors("cpu|Y|fp32", rows) == {}
    final = {"steps_done": 6, "steps": 6, "wall_seconds": 10.0, "step_seconds": 4.0, "validate_seconds": 1.0,
             "test_seconds": 2.0}  # fmt: skip
    assert calibration.measured({"startup": 1.5, "train": 2.0, "evaluate": 1.5}, final) == {
        "startup": 2.0, "train": 2.0, "evaluate": 2.0}  # fmt: skip
    assert calibration.measured({"train": 2.0}, {**final, "steps_done": 3}) is None  # a pruned trial
