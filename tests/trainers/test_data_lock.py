"""The locked test set is a contract: what defines it is recorded, a config that disagrees is refused field by
field, and a change that only alters rendering (the prompt template) keeps every test row out of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sweeps.cli import main
from trainers import run_trial
from trainers.config import DataConfig
from trainers.data import DataError, LockConflictError, check, content_sha256, prepare, row_key

LABELS = ["billing", "bug", "feature", "refund"]
N = 200


def tickets(n: int = N, start: int = 0) -> list[dict[str, str]]:
    return [{"text": f"Ticket {i}: order {i * 7} arrived late", "subject": f"order {i}", "category": LABELS[i % 4]}
            for i in range(start, start + n)]  # fmt: skip


def csv_file(path: Path, rows: list[dict[str, str]]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def cfg_for(source: str, tmp_path: Path, **kw: Any) -> DataConfig:
    settings: dict[str, Any] = {"prompt_column": "text", "completion_column": "category", "test_size": 20,
                                "val_size": 10, "lock_dir": str(tmp_path / "lock"), **kw}  # fmt: skip
    return DataConfig(source=source, **settings)


def keys(rows: list[dict[str, Any]]) -> set[str]:
    return {row_key(r) for r in rows}


def test_template_change_after_lock_keeps_every_test_row_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user story: `sweepboard lock` on a CSV with its own columns, then a config that sets a template.
    Fails on the code before locks kept raw rows: every test row came back into training."""
    monkeypatch.setenv("SWEEPBOARD_CACHE", str(tmp_path / "cache"))
    data = csv_file(tmp_path / "train.csv", tickets())
    args = ["lock", "--data", data, "--prompt-column", "text", "--completion-column", "category",
            "--test-size", "20", "--val-size", "10"]  # fmt: skip
    assert main(args) == 0
    templated = DataConfig(source=data, prompt_column="text", completion_column="category", test_size=20,
                           val_size=10, prompt_template="Ticket: {prompt}\nCategory:", chat_template=True)  # fmt: skip
    splits = prepare(templated)  # the default lock folder: the one `lock` wrote
    assert splits.lock_dir.parent == tmp_path / "cache" / "locks" and not splits.created
    assert len(splits.test) == 20
    assert not keys(splits.test) & keys(splits.train + splits.val)
    assert len(splits.train) + len(splits.val) == N - 20
    manifest = json.loads((splits.lock_dir / "manifest.json").read_text())
    assert manifest["rendering"]["prompt_template"] == "{prompt}"  # recorded as locked, not refused


def test_trial_after_a_template_change_trains_on_no_test_row(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    data = csv_file(tmp_path / "train.csv", tickets())
    prepare(cfg_for(data, tmp_path))
    new = {"source": data, "prompt_column": "text", "completion_column": "category", "test_size": 20,
           "val_size": 10, "lock_dir": str(tmp_path / "lock"), "prompt_template": "Ticket: {prompt}\nCategory:",
           "metric": "exact_match"}  # fmt: skip
    metrics = run_trial({**tiny_config, "method": "lora", "steps": 2, "data": new})
    assert metrics["n_test"] == 20 and metrics["n_train"] + metrics["n_val"] == N - 20


def test_locked_rows_are_rendered_with_the_new_template(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    data = csv_file(tmp_path / "train.csv", tickets())
    locked = prepare(cfg_for(data, tmp_path)).test
    new = {"source": data, "prompt_column": "text", "completion_column": "category", "test_size": 20,
           "val_size": 10, "lock_dir": str(tmp_path / "lock"), "prompt_template": "Ticket: {prompt}\nCategory:"}  # fmt: skip
    run_trial({**tiny_config, "method": "none", "data": new})
    lines = (Path(tiny_config["out"]) / "test_predictions.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    assert prompts == [f"Ticket: {r['prompt']}\nCategory:" for r in locked]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _both_formats(tmp_path: Path) -> str:
    """A file a user could read either way: prompt/completion columns and a messages column."""
    rows = [{"prompt": t["text"], "completion": t["category"],
             "messages": [{"role": "user", "content": t["text"]}, {"role": "assistant", "content": t["category"]}]}
            for t in tickets()]  # fmt: skip
    return _jsonl(tmp_path / "both.jsonl", rows)


# (what the lock was made with, what the config asks for now, the field named, both values as shown)
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "prompt_column": ({}, {"prompt_column": "subject"}, ("data.prompt_column: lock 'text', config 'subject'",)),
    "completion_column": ({}, {"completion_column": "subject"},
                          ("data.completion_column: lock 'category', config 'subject'",)),
    "test_size": ({}, {"test_size": 30}, ("data.test_size: lock 20, config 30",)),
    "seed": ({}, {"seed": 7}, ("data.seed: lock 1234, config 7",)),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_a_change_of_what_defines_the_test_set_is_refused(tmp_path: Path, field: str) -> None:
    before, after, says = CHANGES[field]
    data = csv_file(tmp_path / "train.csv", tickets())
    prepare(cfg_for(data, tmp_path, **before))
    manifest = (tmp_path / "lock" / "manifest.json").read_text()
    for step in (check, prepare):  # the sweep's pre-flight check refuses it too
        with pytest.raises(LockConflictError) as err:
            step(cfg_for(data, tmp_path, **after))
        text = str(err.value)
        assert "1 setting(s)" in text and "new data.lock_dir" in text and "use the lock's settings" in text.lower()
        for needle in says:
            assert needle in text
    assert (tmp_path / "lock" / "manifest.json").read_text() == manifest  # nothing re-carved or rewritten


def test_format_change_is_refused(tmp_path: Path) -> None:
    data = _both_formats(tmp_path)
    base = {"test_size": 20, "val_size": 10, "lock_dir": str(tmp_path / "lock")}
    prepare(DataConfig(source=data, format="plain", **base))  # type: ignore[arg-type]
    with pytest.raises(LockConflictError) as err:
        prepare(DataConfig(source=data, format="chat", **base))  # type: ignore[arg-type]
    assert "data.format: lock 'plain', config 'chat'" in str(err.value)


def test_changed_source_content_and_every_other_difference_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    csv_file(path, tickets())
    prepare(cfg_for(str(path), tmp_path))
    csv_file(path, tickets() + tickets(5, start=N))  # the same path, five more rows
    with pytest.raises(LockConflictError) as err:
        prepare(cfg_for(str(path), tmp_path, test_size=200, seed=1))
    text = str(err.value)
    assert "3 setting(s)" in text
    assert "data.source: lock a file with sha256" in text and str(path.resolve()) in text
    assert "data.test_size: lock 20, config 200" in text and "data.seed: lock 1234, config 1" in text


def test_builtin_task_n_examples_and_test_size_are_refused(tmp_path: Path) -> None:
    lock = str(tmp_path / "lock")
    prepare(DataConfig(n_examples=200, test_size=30, val_size=10, lock_dir=lock))
    with pytest.raises(LockConflictError, match=r"data.n_examples: lock 200, config 250"):
        prepare(DataConfig(n_examples=250, test_size=30, val_size=10, lock_dir=lock))
    with pytest.raises(LockConflictError, match=r"data.test_size: lock 30, config 100"):
        prepare(DataConfig(n_examples=200, test_size=100, val_size=10, lock_dir=lock))


def test_default_lock_folder_meets_a_changed_test_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default folder is named after the source only: asking a 20-row lock for 40 rows is refused instead
    of quietly giving 20 (or quietly making a second test set beside the first)."""
    monkeypatch.setenv("SWEEPBOARD_CACHE", str(tmp_path / "cache"))
    data = csv_file(tmp_path / "train.csv", tickets())
    prepare(cfg_for(data, tmp_path, lock_dir=None))
    with pytest.raises(LockConflictError, match="data.test_size: lock 20, config 40"):
        prepare(cfg_for(data, tmp_path, lock_dir=None, test_size=40))
    prepare(DataConfig(n_examples=200, test_size=30, val_size=10))
    with pytest.raises(LockConflictError, match="data.test_size: lock 30, config 31"):
        prepare(DataConfig(n_examples=200, test_size=31, val_size=10))
    assert len(list((tmp_path / "cache" / "locks").iterdir())) == 2


def _old_manifest(lock: Path, rows: list[dict[str, str]], source: str) -> None:
    """A lock as earlier versions wrote it: rows and a manifest without the fields that define them."""
    (lock / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"sha256": content_sha256(rows), "count": len(rows), "source": source, "seed": 1234,
                "created": "2026-05-01T00:00:00+00:00", "format": "jsonl rows {prompt, completion}"}  # fmt: skip
    (lock / "manifest.json").write_text(json.dumps(manifest))


def test_lock_from_before_defining_fields_is_trusted_only_when_its_rows_are_reproduced(tmp_path: Path) -> None:
    data = csv_file(tmp_path / "train.csv", tickets())
    cfg = cfg_for(data, tmp_path)
    test = prepare(cfg).test
    _old_manifest(tmp_path / "lock", test, data)  # exactly the rows this config carves: safe to use
    assert check(cfg).test == test and prepare(cfg).sha256 == content_sha256(test)
    # Earlier versions stored rows with the template applied: not what the config carves now, so refused.
    _old_manifest(tmp_path / "lock", [{**r, "prompt": f"Q: {r['prompt']}"} for r in test], data)
    with pytest.raises(LockConflictError, match="earlier sweepboard.*Lock anew on purpose.*data.lock_dir"):
        check(cfg)
    _old_manifest(tmp_path / "lock", test, data)
    with pytest.raises(LockConflictError, match="earlier sweepboard"):
        check(cfg_for(data, tmp_path, seed=5))  # another carve than the old lock's


def test_refusal_is_a_data_error_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = csv_file(tmp_path / "train.csv", tickets())
    common = ["lock", "--data", data, "--prompt-column", "text", "--completion-column", "category",
              "--val-size", "10", "--lock-dir", str(tmp_path / "lock")]  # fmt: skip
    assert main([*common, "--test-size", "20"]) == 0
    assert "created" in capsys.readouterr().out
    assert main([*common, "--test-size", "25"]) == 2
    assert "data.test_size: lock 20, config 25" in capsys.readouterr().err
    assert issubclass(LockConflictError, DataError)
