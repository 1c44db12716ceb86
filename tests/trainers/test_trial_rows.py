"""A trial on bring-your-own rows, end to end on the tiny model: what it renders, which labels it scores with,
how many steps epochs mean, what it cut, and what it refuses before anything is spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainers import data as data_mod
from trainers import render, run_trial
from trainers.config import ConfigError, from_dict, planned_steps
from trainers.render import RenderError


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def parity_rows(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"Is {i} even?", "completion": "yes" if i % 2 == 0 else "no"} for i in range(n)]


def own(tiny_config: dict[str, Any], tmp_path: Path, rows: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    return {**tiny_config, "data": {**tiny_config["data"], "source": source, **data}}


def predictions(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    lines = (Path(cfg["out"]) / "test_predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_template_is_applied_at_eval_as_at_training_and_the_lock_stays_raw(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = own(tiny_config, tmp_path, parity_rows(120), prompt_template="Q: {prompt}\nA: ")
    metrics = run_trial({**cfg, "method": "lora", "steps": 2})
    locked = [json.loads(line) for line in (Path(cfg["data"]["lock_dir"]) / "test.jsonl").read_text().splitlines()]
    assert not any(r["prompt"].startswith("Q: ") for r in locked)  # the lock holds raw rows
    preds = predictions(cfg)
    assert [p["raw_prompt"] for p in preds] == [r["prompt"] for r in locked]  # one line per locked row, in order
    assert [p["prompt"] for p in preds] == [f"Q: {r['prompt']}\nA: " for r in locked]
    assert metrics["data_format"] == "plain"
    splits = data_mod.prepare(from_dict(cfg).data)
    assert metrics["train_set_sha256"] == data_mod.content_sha256(splits.train)
    assert metrics["val_set_sha256"] == data_mod.content_sha256(splits.val)
    assert metrics["train_set_sha256"] != metrics["val_set_sha256"]


def test_plain_rows_rendered_as_a_user_turn_end_to_end(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = own(tiny_config, tmp_path, parity_rows(120), chat_template=True)
    run_trial({**cfg, "method": "none"})
    preds = predictions(cfg)
    assert all(p["prompt"].endswith(f"<|im_start|>user\n{p['raw_prompt']}<|im_end|>\n<|im_start|>assistant\n")
               for p in preds)  # fmt: skip


def test_accuracy_labels_default_to_the_completions_and_explicit_labels_win(
    tiny_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = own(tiny_config, tmp_path, parity_rows(120), metric="accuracy")
    metrics = run_trial({**cfg, "method": "lora", "steps": 2})
    assert metrics["labels"] == ["no", "yes"]
    preds = predictions(cfg)
    whole = [float(p["predicted"].strip().lower() == p["expected"]) for p in preds]
    assert [p["score"] for p in preds] == whole
    assert metrics["test_quality"] == pytest.approx(sum(whole) / len(whole))
    cfg["data"]["labels"] = ["yes", "maybe"]
    cfg["out"] = str(tmp_path / "explicit")
    capsys.readouterr()
    explicit = run_trial({**cfg, "method": "none"})
    assert explicit["labels"] == ["yes", "maybe"]
    n_no = sum(p["expected"] == "no" for p in preds)
    assert f"warning: {n_no} of 40 test answers are not in data.labels" in capsys.readouterr().out
    # Only accuracy has a label set.
    em = {**tiny_config, "method": "none", "out": str(tmp_path / "em")}
    em["data"] = {**tiny_config["data"], "lock_dir": str(tmp_path / "em-lock")}
    assert "labels" not in run_trial(em)


def test_unique_completions_with_accuracy_say_it_is_exact_match(
    tiny_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": f"Double {i}", "completion": str(2 * i)} for i in range(100)]
    metrics = run_trial({**own(tiny_config, tmp_path, rows, metric="accuracy"), "method": "none"})
    assert len(metrics["labels"]) == 100
    assert "all 100 completions are distinct" in capsys.readouterr().out


def test_epochs_derive_the_steps(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    # 100 rows - 40 test - 20 validation = 40 training rows: 10 batches of 4 per pass.
    base = {**tiny_config, "data": {**tiny_config["data"], "n_examples": 100}}
    no_steps = {k: v for k, v in base.items() if k != "steps"}
    metrics = run_trial({**no_steps, "method": "lora", "epochs": 0.5, "eval_every": 5})
    assert metrics["n_train"] == 40
    assert (metrics["epochs"], metrics["steps"], metrics["steps_done"]) == (0.5, 5, 5)
    cfg = from_dict({**no_steps, "epochs": 1, "grad_accum": 3})
    assert planned_steps(cfg, 40) == 4  # ceil(10 batches / 3 per step)
    assert planned_steps(from_dict({**no_steps, "epochs": 2}), 43) == 20  # the partial last batch is dropped
    assert planned_steps(from_dict(base), 40) == 4  # `steps` when epochs is not given
    with pytest.raises(ConfigError, match=r"steps: 4 and epochs: 2: give one of them, not both"):
        from_dict({**base, "epochs": 2})


def test_truncation_is_counted_at_training_and_at_evaluation(
    tiny_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every fifth prompt is long: it cannot fit 40 tokens with its answer (or with 12 generated tokens).
    rows = [{"prompt": f"Is {i} even?" + (" Think it through carefully." * 10 if i % 5 == 0 else ""),
             "completion": "yes" if i % 2 == 0 else "no"} for i in range(120)]  # fmt: skip
    cfg = {**own(tiny_config, tmp_path, rows), "max_seq_len": 40, "max_new_tokens": 12}
    metrics = run_trial({**cfg, "method": "lora", "steps": 2})
    splits = data_mod.prepare(from_dict(cfg).data)
    long = {r["prompt"] for r in rows if "Think" in r["prompt"]}
    assert metrics["truncated_train"] == sum(r["prompt"] in long for r in splits.train) > 0
    assert metrics["truncated_val"] == sum(r["prompt"] in long for r in splits.val) > 0
    assert metrics["truncated_test"] == sum(r["prompt"] in long for r in splits.test) > 0
    assert [p["truncated"] for p in predictions(cfg)] == [r["prompt"] in long for r in splits.test]
    out = capsys.readouterr().out
    assert f"warning: {metrics['truncated_train']} of {metrics['n_train']} training examples did not fit" in out
    assert f"warning: {metrics['truncated_test']} of {metrics['n_test']} test examples did not fit" in out


def test_fewer_training_rows_than_a_batch_is_refused_before_the_model_loads(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    # 70 rows - 40 test - 20 validation = 10 training rows, a step needs 4 x 4. The model does not exist:
    # had the trial got as far as loading it, the error would be about the model.
    cfg = {**tiny_config, "model": str(tmp_path / "no-model"), "grad_accum": 4,
           "data": {**tiny_config["data"], "n_examples": 70}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"batch_size x grad_accum: 4 x 4 = 16 rows .* the training split has 10"):
        run_trial({**cfg, "method": "lora"})
    assert not (Path(cfg["out"]) / "checkpoint").exists()


def test_sweep_refuses_too_few_rows_and_a_missing_chat_template_before_spending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import yaml

    from sweeps.sweep import run
    from tests.trainers.conftest import MODEL_CACHE
    from trainers import model as model_mod

    tiny = Path(model_mod.resolve(from_dict({"model": "builtin:tiny", "cache_dir": str(MODEL_CACHE)})))
    base = tmp_path / "base-model"  # the tiny model without its chat template, as a base model comes
    shutil.copytree(tiny, base, ignore=shutil.ignore_patterns("chat_template.jinja"))
    raw = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "configs" / "smoke.yaml").read_text())
    raw["trial"].update(model=str(base), batch_size=16, grad_accum=2)
    raw["trial"]["data"].update(n_examples=80, chat_template=True, lock_dir=str(tmp_path / "lock"))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError) as refused:
        run(5, str(tmp_path / "sweep.yaml"), {})
    text = str(refused.value)
    assert "batch_size x grad_accum: 16 x 2 = 32 rows per optimizer step, but the training split has 20" in text
    assert "data.chat_template: true: the tokenizer of" in text and "has no chat template" in text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lock").exists()


def test_chat_rows_refused_for_a_model_without_a_chat_template(tiny_config: dict[str, Any]) -> None:
    # Chat rows by hand (the loader's chat parsing is the data module's): the check a trial makes first.
    row = {"messages": [{"role": "user", "content": "hi"}], "completion": "hello"}
    cfg = from_dict({**tiny_config, "model": "builtin:tiny"})
    render.check(cfg, [row])  # the built-in models have one
    cfg.data.prompt_template = "Q: {prompt}"
    with pytest.raises(RenderError, match="data.prompt_template"):
        render.check(cfg, [row])
