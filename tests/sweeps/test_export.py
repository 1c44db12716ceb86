"""`sweepboard export` on one real smoke sweep (real Ray Tune, MLflow in SQLite, PEFT, bitsandbytes; the tiny
model, copied into the test's folder so moving or changing it is a real move or change): each kind of export
loaded fresh and checked against the run's locked-test predictions, and every refusal before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from safetensors.torch import load_file, save_file
from test_sweep_e2e import REPO, SMOKE, smoke_config, sweepboard

from sweeps import cli, export_check
from sweeps.export import export_hint, prepare
from tracking import names
from trainers.config import from_dict
from trainers.model import resolve

pytestmark = pytest.mark.slow  # a whole sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("export")
    base = noisy_tiny_model(tmp / "base-model")
    # No pruning and no search rules: the smoke space's first points, LoRA, QLoRA and full, all finish. No stop
    # strings: the tiny model's answers run on for max_new_tokens, so a changed weight shows in them.
    data = {**yaml.safe_load(SMOKE.read_text())["trial"]["data"], "stop": []}
    cfg = smoke_config(tmp, "ship", max_trials=3, grace_period=5, rate_first=False,
                       trial={"model": str(base), "data": data, "cache_dir": str(tmp / "cache")})  # fmt: skip
    done = sweepboard(tmp, "sweep", "--budget", "5", "--config", str(cfg))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    board = json.loads((tmp / "runs" / "sweeps" / "ship" / "leaderboard" / "leaderboard.json").read_text())
    runs = {r["method"]: r for r in board["rows"] if r["status"] == "finished"}
    assert set(runs) == {"none", "lora", "qlora", "full"}, [(r["method"], r["status"]) for r in board["rows"]]
    for run in runs.values():  # answers that tell models apart, or "identical" would prove nothing
        work = tmp / "runs" / "sweeps" / "ship" / ("baseline" if run["method"] == "none" else
                                                   f"trial_{run['trial_id']}/work")  # fmt: skip
        answers = [json.loads(line)["predicted"] for line in (work / "test_predictions.jsonl").open()]
        assert len(set(answers)) > 10, answers[:5]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPBOARD_CACHE", str(REPO / ".cache"))  # where the sweep's lock is
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.chdir(tmp)
        yield {"tmp": tmp, "base": base, "board": board, "runs": runs, "stdout": done.stdout}


def noisy_tiny_model(out: Path) -> Path:
    """The tiny model with wide random weights: its own init answers every prompt with spaces (stripped to
    ""), which any model would reproduce; these weights answer each prompt with its own run of words."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny = resolve(from_dict({"model": "builtin:tiny", "cache_dir": str(REPO / ".cache" / "models")}))
    model = AutoModelForCausalLM.from_pretrained(tiny)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2:
                weight.normal_(0, 0.3 if "embed" in name else 0.15)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return out


def exported(sweep: dict[str, Any], method: str, folder: str, kind: str) -> tuple[dict[str, Any], Path]:
    """Export the sweep's run of `method` unmerged: it gives every one of the run's answers again and
    becomes the champion."""
    run, out = sweep["runs"][method], sweep["tmp"] / folder
    code, text = export("ship", "--run", run["run_id"], "--out", str(out))
    assert code == 0, text
    assert "40 of 40 answers as the run's (100.0%)" in text
    assert_champion(run, kind, text)
    return run, out


def assert_champion(run: dict[str, Any], kind: str, text: str) -> None:
    """The export is the registered model `ship`'s champion: a version logged from this run, tagged with the
    board's test set, the run's test quality and cost."""
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("ship", names.ALIAS_CHAMPION)
    assert f"MLflow registry: ship version {version.version}, alias champion" in text
    assert version.run_id == run["run_id"]
    assert version.tags[names.TAG_EXPORT_KIND] == kind
    assert version.tags[names.TAG_TEST_SHA] == run["test_set_sha256"]
    assert float(version.tags[names.TAG_TEST_QUALITY]) == pytest.approx(run["test_quality"])
    assert float(version.tags[names.TAG_COST]) == pytest.approx(run["cost_usd"])


def export(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", *args])
    return code, out.getvalue() + err.getvalue()


def test_the_sweep_ends_with_the_export_command(sweep: dict[str, Any]) -> None:
    recommended = sweep["board"]["decision"]["recommended"]
    text = " ".join(sweep["stdout"].split())
    if recommended["method"] == "none":
        assert "nothing to export: the recommended run is the base model" in text
    else:
        assert "make export NAME=ship OUT=exports/ship" in text and "sweepboard export ship" in text
    hint = export_hint("s", {"method": "qlora", "run_id": "r"}, "why", "elsewhere")
    assert hint == ("ship it: make export NAME=s OUT=exports/s [MERGE=1]  (sweepboard export s --storage elsewhere "
                    "[--merge] --out exports/s)")  # fmt: skip


def test_lora_adapter_reproduces_its_predictions_and_a_tampered_one_does_not(sweep: dict[str, Any]) -> None:
    run, out = exported(sweep, "lora", "lora-adapter", "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(sweep["base"].resolve())  # absolute, reachable
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    metrics = json.loads((sweep["tmp"] / "runs" / "sweeps" / "ship" / f"trial_{run['trial_id']}" / "work"
                          / "metrics.json").read_text())  # fmt: skip
    for needed in (metrics["test_set_sha256"], run["run_id"], "rank", "selected on validation",
                   f"vllm serve {sweep['base'].resolve()} --enable-lora --lora-modules ship={out}",
                   "PeftModel.from_pretrained", f"{metrics['test_quality']:.4f}", "device hours"):  # fmt: skip
        assert needed in card, needed

    # A tampered adapter (one lora_B weight scaled) no longer gives the run's answers: the check fails.
    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in sorted(weights) if "lora_B" in k)
    weights[key] = weights[key] * 0 + 0.5
    save_file(weights, out / "adapter_model.safetensors", metadata={"format": "pt"})
    plan = prepare("ship", run["run_id"], False, out, force=True)  # the same checks; the files stay as they are
    with pytest.raises(export_check.VerifyError, match=r"of 40 locked-test predictions differ .* e\.g\. example"):
        export_check.verify(plan)


def test_qlora_adapter_reproduces_its_predictions_on_its_4_bit_base(sweep: dict[str, Any]) -> None:
    # Loaded as the trial held it: NF4 base, computing in the trial's compute dtype (bf16 where native).
    exported(sweep, "qlora", "qlora-adapter", "adapter")


def test_qlora_merged_into_the_16_bit_base_scores_inside_the_runs_interval(sweep: dict[str, Any]) -> None:
    run = sweep["runs"]["qlora"]
    out = sweep["tmp"] / "qlora-merged"
    code, text = export("ship", "--run", run["trial_id"], "--merge", "--out", str(out))  # a trial id works too
    assert code == 0, text
    assert "answers as the run's" in text and "test score" in text
    assert not (out / "adapter_config.json").exists()
    weights = load_file(out / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.bfloat16"}
    assert not any("lora" in k for k in weights)
    assert f"vllm serve {out}" in (out / "README.md").read_text()


def test_full_model_reproduces_its_predictions(sweep: dict[str, Any]) -> None:
    run, out = exported(sweep, "full", "full-model", "model")  # exporting another run moved the alias
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert "AutoModelForCausalLM.from_pretrained" in (out / "README.md").read_text()
    code, text = export("ship", "--run", run["run_id"], "--merge", "--out", str(sweep["tmp"] / "x"))
    assert code == 2 and "drop --merge" in text


def refused(sweep: dict[str, Any], *args: str, out: Path | None = None) -> str:
    out = out or sweep["tmp"] / "refused"
    before = sorted(out.rglob("*")) if out.exists() else None
    code, text = export(*args, "--out", str(out))
    assert code == 2, text
    assert (sorted(out.rglob("*")) if out.exists() else None) == before  # nothing written
    return text


def test_unknown_sweep_run_and_the_baseline_are_refused(sweep: dict[str, Any]) -> None:
    assert "no such sweep" in (text := refused(sweep, "nope")) and "known sweeps: ship" in text
    assert "no such run on the leaderboard" in refused(sweep, "ship", "--run", "0" * 32)
    baseline = sweep["runs"]["none"]["run_id"]
    assert "is the baseline" in (text := refused(sweep, "ship", "--run", baseline)) and "--run RUN_ID" in text
    if sweep["board"]["decision"]["recommended"]["method"] == "none":
        assert "is the baseline" in refused(sweep, "ship")  # the default is the recommended run


def test_a_folder_in_the_way_is_refused_unless_forced(sweep: dict[str, Any]) -> None:
    out = sweep["tmp"] / "occupied"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = sweep["runs"]["lora"]["run_id"]
    assert "--force" in refused(sweep, "ship", "--run", run, out=out)
    code, text = export("ship", "--run", run, "--out", str(out), "--force")
    assert code == 0, text
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()


def test_a_base_model_that_moved_or_changed_is_refused(sweep: dict[str, Any]) -> None:
    base, run = sweep["base"], sweep["runs"]["lora"]["run_id"]
    moved = base.with_name("moved")
    base.rename(moved)
    try:
        assert "is gone" in (text := refused(sweep, "ship", "--run", run)) and str(base.resolve()) in text
    finally:
        moved.rename(base)
    config = (base / "config.json").read_text()
    (base / "config.json").write_text(config.replace('"rms_norm_eps"', '"rms_norm_eps_changed": 1, "rms_norm_eps"'))
    try:
        assert "changed since run" in refused(sweep, "ship", "--run", run)
    finally:
        (base / "config.json").write_text(config)


def test_no_model_and_another_test_set_are_refused(sweep: dict[str, Any], tmp_path: Path) -> None:
    # A copy of the sweep and its MLflow store, so the shared one stays as it was.
    shutil.copytree(sweep["tmp"] / "runs", tmp_path / "runs")
    shutil.copy2(sweep["tmp"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "runs" / "sweeps")
    lora, qlora = sweep["runs"]["lora"], sweep["runs"]["qlora"]
    shutil.rmtree(tmp_path / "runs" / "sweeps" / "ship" / f"trial_{qlora['trial_id']}" / "work" / "adapter")
    text = refused(sweep, "ship", "--run", qlora["run_id"], "--storage", storage, "--tracking-uri", uri)
    assert "has no model to export" in text and "--run RUN_ID" in text
    # The run's test-set tag says another set: the board, rebuilt from MLflow, leaves it out.
    mlflow.MlflowClient(uri).set_tag(lora["run_id"], names.TAG_TEST_SHA, "f" * 64)
    (tmp_path / "runs" / "sweeps" / "ship" / "leaderboard" / "leaderboard.json").unlink()
    text = refused(sweep, "ship", "--run", lora["run_id"], "--storage", storage, "--tracking-uri", uri)
    assert "scored on another locked test set (sha256 ffffffffffff" in text
